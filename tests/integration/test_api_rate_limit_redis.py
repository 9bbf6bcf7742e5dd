"""With Redis configured, the API's per-key limit is one limit for every API process."""

from __future__ import annotations

import uuid
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from sluice import apikeys
from sluice.api.app import create_app
from sluice.catalog import Catalog, ProviderInfo
from sluice.settings import Settings
from sluice.store import db
from sluice.store.keys import KeyStore
from sluice.store.repository import TaskRepository

CATALOG = Catalog({"sandbox": ProviderInfo(frozenset({"campaign"}), True)}, "sandbox")


def test_two_api_processes_share_one_limit_per_key(tmp_path: Path, redis_url: str) -> None:
    """At 1/min, a key's request to a second API process right after one to the first is
    429 with Retry-After near a minute; another key still passes."""
    namespace = f"sluice:test:api:{uuid.uuid4().hex[:12]}"
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'shared.db'}",
        auth="required",
        api_rate_limit="1/min",
        redis_url=redis_url,
        limiter_namespace=namespace,
    )
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    keys = KeyStore(engine)
    first = apikeys.create_key(keys, name="a", role="viewer", tenant="acme").token
    second = apikeys.create_key(keys, name="b", role="viewer", tenant="acme").token
    try:
        with (
            TestClient(create_app(settings, TaskRepository(engine), CATALOG)) as one,
            TestClient(create_app(settings, TaskRepository(engine), CATALOG)) as two,
        ):
            ok = one.get("/api/tasks", headers={"Authorization": f"Bearer {first}"})
            refused = two.get("/api/tasks", headers={"Authorization": f"Bearer {first}"})
            other = two.get("/api/tasks", headers={"Authorization": f"Bearer {second}"})

        assert ok.status_code == 200
        assert refused.status_code == 429
        assert 55 <= int(refused.headers["retry-after"]) <= 60
        assert other.status_code == 200
    finally:
        engine.dispose()
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{namespace}*"):
            client.delete(key)
