"""Quota use stored under a key from before digest forms moves to the digest key, on each
backend, merged with use the digest key already has for the same window (the SQL upsert)."""

from __future__ import annotations

from sqlalchemy import Engine

from sluice.clock import FakeClock
from sluice.domain import Operation
from sluice.engine.quotas import QuotaBook, adopt_stored_keys, window_of
from sluice.store.quotas import QuotaStore
from tests.unit.engine.test_quota_keys_upgrade import NOW, PROVIDER, URN, legacy_key


def test_old_quota_use_is_merged_into_the_digest_key(engine: Engine) -> None:
    store = QuotaStore(engine)
    spec = PROVIDER.quotas_for(Operation.SUBMIT, {"advertiser_id": URN})[0]
    old = window_of(legacy_key(URN), spec.quota, NOW)
    new = window_of(spec.key, spec.quota, NOW)
    assert store.reserve(old, 1, NOW) == 1  # before the upgrade
    assert store.reserve(new, 1, NOW) == 1  # a worker already upgraded
    assert adopt_stored_keys(store, {"acme": PROVIDER}, NOW) == 1
    assert store.used(new) == 2
    assert store.used(old) == 0
    book = QuotaBook(store, FakeClock(NOW))
    assert book.take([spec]).ok
    assert not book.take([spec]).ok  # 3 of 3 today
