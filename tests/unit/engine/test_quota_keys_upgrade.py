"""Quota use stored before digest forms (8e23312) under an account whose value is not plain
(``urn:li:sponsoredAccount:123``) still counts after the upgrade: it moves to the digest key.

Before, such an account "started afresh under its digest key": a daily quota 900 of 1000
spent in the morning let 1000 more through after an upgrade at noon, 1900 in one day, past
the provider's quota.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sluice.clock import FakeClock
from sluice.controls import adopt_stored_pins
from sluice.domain import Operation
from sluice.engine.quotas import QuotaBook, adopt_stored_keys, window_of
from sluice.store import db
from sluice.store.pins import Pin, PinStore
from sluice.store.quotas import QuotaStore
from tests.unit.providers.fakes import ACME, make_provider, with_changes

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
PROVIDER = make_provider(
    with_changes(ACME, limits=[{"quota": "3/1d", "scope": "write", "per": "advertiser_id"}])
)
URN = "urn:li:sponsoredAccount:123"


def store_at(tmp_path: Path) -> QuotaStore:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    db.ensure_schema(engine)
    return QuotaStore(engine)


def legacy_key(value: str) -> str:
    """The key written before digest forms: the value as it is."""
    pattern = PROVIDER.quotas()[0][0]
    head, tail = pattern.split("=*", 1)
    return f"{head}={value}{tail}"


def test_quota_use_stored_under_the_old_key_still_counts_after_the_upgrade(
    tmp_path: Path,
) -> None:
    store = store_at(tmp_path)
    spec = PROVIDER.quotas_for(Operation.SUBMIT, {"advertiser_id": URN})[0]
    assert spec.key != legacy_key(URN)  # the digest form
    old = window_of(legacy_key(URN), spec.quota, NOW)
    assert store.reserve(old, 2, NOW) == 2  # this morning, before the upgrade
    # A plain account's key is the same before and after: left as it is.
    plain = window_of(legacy_key("adv-1"), spec.quota, NOW)
    assert store.reserve(plain, 1, NOW) == 1

    assert adopt_stored_keys(store, {"acme": PROVIDER}, NOW) == 1
    assert adopt_stored_keys(store, {"acme": PROVIDER}, NOW) == 0  # once

    book = QuotaBook(store, FakeClock(NOW))
    assert book.take([spec]).ok  # the third of 3 today
    assert not book.take([spec]).ok  # before: 3 more, 5 of 3 sent today
    assert store.used(window_of(spec.key, spec.quota, NOW)) == 3
    assert store.used(old) == 0
    assert store.used(plain) == 1


PINNED = make_provider(
    with_changes(ACME, limits=[{"rate": "10/s", "scope": "write", "per": "advertiser_id"}])
)


def test_a_pin_stored_under_the_old_key_still_applies_after_the_upgrade(tmp_path: Path) -> None:
    """Before, a pin on ``advertiser_id=a b`` (a value that is no longer plain) stayed on a key
    nothing spends from: the operator's lower rate stopped applying at the upgrade."""
    store = PinStore(store_at(tmp_path).engine)
    old = {v: f"acme:write:advertiser_id={v}" for v in ("a b", "x" * 70, "c d", "adv-1")}
    current = {v: PINNED.limits_for("write", {"advertiser_id": v})[-1].key for v in old}
    with store.engine.begin() as conn:
        for key in old.values():
            store.put(conn, Pin(key, 2, 1.0, "their limit is lower", "op", NOW))
        # An upgraded worker already pinned c d's digest key lower: the lower rate stays.
        store.put(conn, Pin(current["c d"], 1, 1.0, "lower still", "op", NOW))

    assert adopt_stored_pins(store, {"acme": PINNED}) == 3
    assert adopt_stored_pins(store, {"acme": PINNED}) == 0  # once
    rates = {pin.key: pin.rate_limit for pin in store.all()}
    assert rates == {current["a b"]: 2, current["x" * 70]: 2, current["c d"]: 1, old["adv-1"]: 2}
    assert current["adv-1"] == old["adv-1"]  # a plain value keeps its key
