"""API keys in the store, on SQLite and real PostgreSQL: only a digest of the secret is kept,
revocation and expiry end a key, last use is written at most once a minute, and creating
and revoking are audited in the same transaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from sluice import apikeys, errors
from sluice.clock import FakeClock
from sluice.domain import Actor, Role
from sluice.store import db
from sluice.store.audit import AuditLog
from sluice.store.keys import KeyStore, api_keys

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ADMIN = Actor("key", "a1b2c3d4e5f6", "root")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KeyStore]:
    """A key store on a fresh, migrated database of each backend, with a fake clock."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'keys.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    yield KeyStore(engine, FakeClock(START))
    engine.dispose()


def dump(keys: KeyStore) -> str:
    """Every value of every row of every table, as text."""
    out: list[str] = []
    with keys.engine.connect() as conn:
        for table in ("tasks", "task_events", "api_keys", "audit"):
            out.extend(repr(tuple(row)) for row in conn.execute(text(f"SELECT * FROM {table}")))
    return "\n".join(out)


def test_only_a_digest_of_the_secret_is_stored(keys: KeyStore) -> None:
    """The key text appears nowhere in the database, its secret neither; the stored digest
    is the secret's SHA-256."""
    made = apikeys.create_key(keys, name="ci", role="submitter", tenant="acme", actor=ADMIN)
    secret = made.token.split("_", 2)[2]

    stored = dump(keys)

    assert made.token not in stored
    assert secret not in stored
    with keys.engine.connect() as conn:
        digest = conn.execute(select(api_keys.c.secret_hash)).scalar_one()
    assert digest == apikeys.digest(secret)


def test_a_key_authenticates_until_revoked(keys: KeyStore) -> None:
    """The full key text finds the key; after revocation it finds nothing."""
    made = apikeys.create_key(keys, name="ci", role="viewer", tenant="acme")

    assert apikeys.authenticate(keys, made.token) == made.key
    key, revoked = keys.revoke(made.key.id, actor=ADMIN)
    again, revoked_again = keys.revoke(made.key.id, actor=ADMIN)

    assert (revoked, revoked_again) == (True, False)
    assert again.revoked_at == key.revoked_at == START
    assert apikeys.authenticate(keys, made.token) is None
    assert keys.count_usable() == 0


def test_a_key_ends_when_it_expires(keys: KeyStore) -> None:
    """A key made to last 90 days works on its last second and not a second later."""
    made = apikeys.create_key(keys, name="ci", role="operator", expires="90d")
    assert made.key.expires_at == START + timedelta(days=90)

    keys.clock.advance(90 * 86400 - 1)  # type: ignore[attr-defined]
    assert apikeys.authenticate(keys, made.token) is not None
    keys.clock.advance(1)  # type: ignore[attr-defined]

    assert apikeys.authenticate(keys, made.token) is None
    assert [k.id for k in keys.list(include_unusable=False)] == []
    assert [k.id for k in keys.list()] == [made.key.id]


def test_a_wrong_secret_or_unknown_id_finds_nothing(keys: KeyStore) -> None:
    """A key with its secret altered, another id, or a malformed text finds no key."""
    made = apikeys.create_key(keys, name="ci", role="admin")
    prefix, key_id, secret = made.token.split("_", 2)

    for token in (
        f"{prefix}_{key_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}",
        f"{prefix}_{'0' * 12}_{secret}",
        f"{prefix}_{key_id}",
        made.token + "x",
        "",
    ):
        assert apikeys.authenticate(keys, token) is None


def test_last_use_is_written_at_most_once_a_minute(keys: KeyStore) -> None:
    """touch writes the first use, skips uses within a minute, writes the next after it."""
    made = apikeys.create_key(keys, name="ci", role="viewer", tenant="acme")
    keys.touch(made.key, START)
    first = keys.get(made.key.id)
    keys.touch(first, START + timedelta(seconds=59))
    keys.touch(made.key, START + timedelta(seconds=30))  # a stale copy: the row is fresh

    assert keys.get(made.key.id).last_used_at == START
    keys.touch(first, START + timedelta(seconds=60))
    assert keys.get(made.key.id).last_used_at == START + timedelta(seconds=60)


def test_creating_and_revoking_are_audited(keys: KeyStore) -> None:
    """key.create and key.revoke records name the actor, the key and its tenant."""
    made = apikeys.create_key(keys, name="ci", role="submitter", tenant="acme", actor=ADMIN)
    keys.revoke(made.key.id, actor=ADMIN)
    keys.revoke(made.key.id, actor=ADMIN)

    records = AuditLog(keys.engine).list().items

    assert [(r.action, r.target, r.tenant, r.key_name) for r in records] == [
        ("key.revoke", f"key:{made.key.id}", "acme", "root"),
        ("key.create", f"key:{made.key.id}", "acme", "root"),
    ]
    assert records[1].detail == {"name": "ci", "role": "submitter", "expires_at": None}


def test_a_key_that_cannot_be_made_writes_nothing(keys: KeyStore) -> None:
    """Bad role, tenant or expiry raise InvalidKeyRequest naming the problem; no row."""
    for kwargs, message in (
        ({"role": "root"}, "unknown role 'root'; known: viewer, submitter, operator, admin"),
        ({"role": "viewer"}, "belongs to one tenant"),
        ({"role": "admin", "tenant": "acme"}, "spans every tenant"),
        ({"role": "viewer", "tenant": "ac me"}, "not a tenant name"),
        ({"role": "viewer", "tenant": "acme", "expires": "-1d"}, "duration"),
    ):
        with pytest.raises(errors.InvalidKeyRequest, match=message):
            apikeys.create_key(keys, name="ci", **kwargs)  # type: ignore[arg-type]

    assert dump(keys) == ""
    with pytest.raises(errors.KeyNotFound, match="'0123456789ab'"):
        keys.revoke("0123456789ab")


def test_roles_rank_and_span_tenants() -> None:
    """Each role allows what the roles before it allow; operators and admins span tenants."""
    assert [r.value for r in Role] == ["viewer", "submitter", "operator", "admin"]
    assert all(
        a.allows(b) == (list(Role).index(a) >= list(Role).index(b)) for a in Role for b in Role
    )
    assert [r.spans_tenants for r in Role] == [False, False, True, True]
