"""An API on a fresh SQLite file per test, built the way production builds it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, func, inspect, select, text

from sluice import apikeys
from sluice.api.app import create_app
from sluice.api.routes.quotas import QuotaView
from sluice.catalog import Catalog, ProviderInfo
from sluice.clock import FakeClock
from sluice.controls import Controls, PinnedCeilings, stretches
from sluice.domain import TaskStatus
from sluice.engine.rates import RatesInForce
from sluice.providers.registry import load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.settings import Settings
from sluice.store import db
from sluice.store.keys import KeyStore
from sluice.store.pins import PinStore
from sluice.store.quotas import QuotaStore
from sluice.store.repository import TaskRepository
from sluice.store.rows import change_status, events, tasks

CATALOG = Catalog(
    providers={
        "sandbox": ProviderInfo(kinds=frozenset({"campaign", "creative"}), can_track=True),
        "acme": ProviderInfo(kinds=frozenset({"campaign"}), can_track=False),
    },
    default_provider="sandbox",
)


# The providers behind the control and explain routes: one with a write limit, a limit per
# advertiser and an in-flight cap; one with a single rate.
PROVIDERS: dict[str, dict[str, Any]] = {
    "sandbox": {
        "preset": "sandbox-demo",
        "base_url": "http://127.0.0.1:9",
        "rate_limit": "20/s",
        "max_in_flight": 4,
        "limits": [
            {"scope": "write", "rate": "10/s"},
            {"scope": "write", "per": "advertiser_id", "rate": "2/s"},
        ],
    },
    "acme": {
        "preset": "sandbox-demo",
        "base_url": "http://127.0.0.1:9",
        "rate_limit": "40/min",
        "quota": "500/d",
    },
}


def make_controls(engine: Any, clock: FakeClock, limiter: Any = None) -> Controls:
    """Controls over :data:`PROVIDERS`, a limiter on ``clock`` and the pinned ceilings."""
    providers = load_providers(Settings(providers=PROVIDERS), clock=clock)
    rates = RatesInForce([PinnedCeilings(PinStore(engine), stretches(providers))], clock=clock)
    limiter = limiter or MemoryLimiter(clock=clock, cold_start=False)
    return Controls(engine, providers, limiter, rates, clock=clock)


def make_quotas(engine: Any, clock: FakeClock) -> QuotaView:
    """The quota route's view over :data:`PROVIDERS` and this database."""
    providers = load_providers(Settings(providers=PROVIDERS), clock=clock)
    return QuotaView(providers, QuotaStore(engine))


@dataclass
class Api:
    """A test client and the store behind it."""

    client: TestClient
    repo: TaskRepository
    clock: FakeClock

    def written(self) -> tuple[int, int]:
        """(tasks, events) currently stored: compared before/after to prove nothing changed."""
        with self.repo.engine.connect() as conn:
            task_count = conn.execute(select(func.count()).select_from(tasks)).scalar_one()
            event_count = conn.execute(select(func.count()).select_from(events)).scalar_one()
        return task_count, event_count

    def force_status(self, task_id: int, status: TaskStatus, **fields: Any) -> None:
        """Move a task as the engine would (the API has no route for it)."""
        task = self.repo.get(task_id)
        with self.repo.engine.begin() as conn:
            assert change_status(
                conn, task, status, now=self.clock.now(), event="test", **fields
            ), "the task changed meanwhile"

    def campaign(self, **fields: object) -> dict[str, object]:
        """A realistic submission body, with ``fields`` added or overridden."""
        body: dict[str, object] = {
            "kind": "campaign",
            "payload": {"name": "Spring sale", "budget_cents": 250_000, "currency": "EUR"},
        }
        body.update(fields)
        return body


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """A fresh API over its own SQLite database and a fake clock."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sluice.db'}")
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    clock = FakeClock()
    repo = TaskRepository(engine, clock)
    # The open loopback mode of `make run`: a loopback Host, no key.
    app = create_app(
        settings,
        repo,
        CATALOG,
        controls=make_controls(engine, clock),
        quotas=make_quotas(engine, clock),
    )
    with TestClient(app, base_url="http://localhost") as client:
        yield Api(client, repo, clock)
    engine.dispose()


LABELS = {
    # label: (role, tenant)
    "viewer": ("viewer", "acme"),
    "submitter": ("submitter", "acme"),
    "viewer-globex": ("viewer", "globex"),
    "submitter-globex": ("submitter", "globex"),
    "operator": ("operator", None),
    "admin": ("admin", None),
}


@dataclass
class SecuredApi(Api):
    """An API that requires keys, with one key per label of :data:`LABELS`, plus a
    revoked and an expired submitter key of tenant acme."""

    keys: KeyStore
    tokens: dict[str, str]
    ids: dict[str, str]

    def auth(self, label: str) -> dict[str, str]:
        """The Authorization header of the key with ``label``."""
        return {"Authorization": f"Bearer {self.tokens[label]}"}

    def written(self) -> tuple[int, ...]:  # type: ignore[override]
        """A digest of every row of every table (keys' last use, pauses, sessions, bulk
        jobs... included): compared before and after a refusal to prove it wrote nothing
        at all, neither a new row nor a changed one."""
        with self.repo.engine.connect() as conn:
            names = sorted(inspect(conn).get_table_names())
            return tuple(hash(_rows(conn, name)) for name in names)


def secured_api(
    tmp_path: Path, *, api_limiter: Any = None, **settings_fields: Any
) -> Iterator[SecuredApi]:
    """An API with ``SLUICE_AUTH=required`` (unless told otherwise) and its keys."""
    settings_fields.setdefault("auth", "required")
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sluice.db'}", **settings_fields)
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    clock = FakeClock()
    repo = TaskRepository(engine, clock)
    keys = KeyStore(engine, clock)
    tokens: dict[str, str] = {}
    ids: dict[str, str] = {}
    for label, (role, tenant) in {
        **LABELS,
        "revoked": ("submitter", "acme"),
        "expired": ("submitter", "acme"),
    }.items():
        made = apikeys.create_key(
            keys, name=label, role=role, tenant=tenant, expires="1h" if label == "expired" else None
        )
        tokens[label], ids[label] = made.token, made.key.id
    keys.revoke(ids["revoked"])
    clock.advance(2 * 3600)
    app = create_app(
        settings,
        repo,
        CATALOG,
        api_limiter=api_limiter,
        controls=make_controls(engine, clock),
        quotas=make_quotas(engine, clock),
    )
    with TestClient(app, base_url="http://localhost") as client:
        yield SecuredApi(client, repo, clock, keys, tokens, ids)
    engine.dispose()


@pytest.fixture
def secured(make_secured: Callable[..., SecuredApi]) -> SecuredApi:
    """An API that requires a key for everything but health checks."""
    return make_secured()


@pytest.fixture
def make_secured(tmp_path: Path) -> Iterator[Callable[..., SecuredApi]]:
    """Build APIs like :func:`secured` with other settings (``auth``, ``host``...)."""
    running: list[Iterator[SecuredApi]] = []

    def make(**fields: Any) -> SecuredApi:
        folder = tmp_path / f"api{len(running)}"
        folder.mkdir()
        started = secured_api(folder, **fields)
        running.append(started)
        return next(started)

    yield make
    for started in reversed(running):
        for _ in started:  # runs the generator's clean-up
            pass


@pytest.fixture(scope="module")
def shared_secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredApi]:
    """One keyed API for a whole module whose tests each make their own tasks and keys."""
    yield from secured_api(tmp_path_factory.mktemp("shared"))


def _rows(conn: Connection, table: str) -> tuple[str, ...]:
    """Every row of ``table``, as text, in a stable order."""
    return tuple(sorted(repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"'))))
