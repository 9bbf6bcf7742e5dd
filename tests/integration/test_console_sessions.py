"""Console sessions on SQLite and real PostgreSQL: tied to their key, ended by revoking it,
by age and by idleness, and stored only as digests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, update

from sluice.clock import FakeClock
from sluice.domain import ApiKey, Role
from sluice.store import db
from sluice.store.audit import AuditLog
from sluice.store.sessions import SessionStore, api_keys, sessions

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Sessions:
    store: SessionStore
    clock: FakeClock

    def add_key(self, key_id: str = "0123456789ab", **fields: object) -> ApiKey:
        """A stored API key (its digest is irrelevant here: sessions never read it)."""
        row = {
            "id": key_id,
            "name": f"key {key_id}",
            "role": "viewer",
            "tenant": "acme",
            "secret_hash": "0" * 64,
            "created_at": self.clock.now(),
            "expires_at": None,
            "revoked_at": None,
            "last_used_at": None,
        }
        row.update(fields)
        with self.store.engine.begin() as conn:
            conn.execute(insert(api_keys), [row])
        return ApiKey(
            key_id,
            str(row["name"]),
            Role(str(row["role"])),
            row["tenant"],  # type: ignore[arg-type]
            self.clock.now(),
            row["expires_at"],  # type: ignore[arg-type]
            None,
            None,
        )

    def revoke(self, key_id: str) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=self.clock.now())
            )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sessions]:
    """A migrated store of each backend with a fake clock."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'sessions.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    clock = FakeClock(START)
    store = SessionStore(engine, clock, lifetime=timedelta(hours=8), idle=timedelta(hours=1))
    yield Sessions(store, clock)
    engine.dispose()


def test_a_session_speaks_for_its_key_and_is_stored_as_a_digest(box: Sessions) -> None:
    """The token finds the session and its key; the table holds no copy of the token."""
    key = box.add_key()
    token = box.store.open(key)
    found = box.store.find(token)
    assert found is not None
    assert found.key.id == key.id
    assert found.key.role is Role.VIEWER
    assert found.key.tenant == "acme"
    with box.store.engine.connect() as conn:
        stored = [tuple(row) for row in conn.execute(select(sessions))]
    assert stored
    assert all(token not in str(value) for row in stored for value in row)
    assert box.store.find(token + "x") is None


def test_revoking_the_key_ends_its_sessions(box: Sessions) -> None:
    """A revoked key's session is refused at its next use and removed."""
    key = box.add_key()
    token = box.store.open(key)
    box.revoke(key.id)
    assert box.store.find(token) is None
    assert box.store.count(key.id) == 0


def test_deleting_the_key_deletes_its_sessions(box: Sessions) -> None:
    """Sessions cannot outlive their key's row (foreign key, cascade)."""
    key = box.add_key()
    box.store.open(key)
    with box.store.engine.begin() as conn:
        conn.execute(delete(api_keys).where(api_keys.c.id == key.id))
    assert box.store.count(key.id) == 0


def test_an_expired_key_ends_its_sessions(box: Sessions) -> None:
    """A session never outlives its key's expiry."""
    key = box.add_key(expires_at=START + timedelta(minutes=30))
    token = box.store.open(key)
    box.clock.advance(29 * 60)
    assert box.store.find(token) is not None
    box.clock.advance(61)
    assert box.store.find(token) is None


def test_sessions_end_after_their_lifetime_even_when_busy(box: Sessions) -> None:
    """Used every 30 minutes, a session still ends 8 hours after sign-in."""
    token = box.store.open(box.add_key())
    for _ in range(15):
        box.clock.advance(30 * 60)
        assert box.store.find(token) is not None
    box.clock.advance(30 * 60)
    assert box.store.find(token) is None


def test_an_idle_session_ends(box: Sessions) -> None:
    """A session unused for the idle limit ends; used within it, it goes on."""
    token = box.store.open(box.add_key())
    box.clock.advance(59 * 60)
    assert box.store.find(token) is not None
    box.clock.advance(59 * 60)
    assert box.store.find(token) is not None
    box.clock.advance(60 * 60)
    assert box.store.find(token) is None


def test_closing_ends_one_session_and_close_all_every_one(box: Sessions) -> None:
    """Sign-out ends that browser's session only; close_all ends all of a key's."""
    key = box.add_key()
    first, second, third = (box.store.open(key) for _ in range(3))
    box.store.close(first)
    assert box.store.find(first) is None
    assert box.store.find(second) is not None
    assert box.store.close_all(key.id) == 2
    assert box.store.find(third) is None


def test_signing_in_and_out_is_audited_and_an_ending_session_is_not(box: Sessions) -> None:
    """Sign-in and sign-out each leave one record as the key; a session that ends by
    itself, or a sign-out of a session already gone, leaves none."""
    key = box.add_key()
    token = box.store.open(key)
    box.store.close(token, signed_out=key)
    box.store.close(token, signed_out=key)  # already ended: nothing more
    idle = box.store.open(key)
    box.clock.advance(2 * 3600)
    assert box.store.find(idle) is None

    records = AuditLog(box.store.engine).list(key_id=key.id).items
    assert [(r.action, r.target, r.actor, r.tenant) for r in reversed(records)] == [
        ("console.sign_in", f"key:{key.id}", "key", "acme"),
        ("console.sign_out", f"key:{key.id}", "key", "acme"),
        ("console.sign_in", f"key:{key.id}", "key", "acme"),
    ]
    assert records[-1].detail == {"session_ends_at": (START + timedelta(hours=8)).isoformat()}


def test_a_session_in_use_stays_open_under_an_idle_time_below_a_minute(box: Sessions) -> None:
    """With SLUICE_CONSOLE_IDLE_S=3 a user clicking every second was signed out after 3 s:
    the last use was written at most once a minute. It is now written at least twice per
    idle time; left alone, the session still ends."""
    store = SessionStore(box.store.engine, box.clock, idle=timedelta(seconds=3))
    token = store.open(box.add_key())
    for _ in range(10):
        box.clock.advance(1)
        assert store.find(token) is not None
    box.clock.advance(3)
    assert store.find(token) is None
