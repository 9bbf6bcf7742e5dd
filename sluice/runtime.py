"""The runtime builder: store, providers, HTTP clients and limiter from settings.

Both drivers and the API start from a :class:`Runtime`; this module imports no web framework.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import Engine

from sluice.catalog import Catalog, ProviderInfo
from sluice.clock import SystemClock
from sluice.controls import Controls, PinnedCeilings, adopt_stored_pins, stretches
from sluice.engine.adaptive import Learner
from sluice.engine.quotas import QuotaPace, adopt_stored_keys
from sluice.engine.rates import CeilingSource, RatesInForce
from sluice.providers.base import Provider
from sluice.providers.http import HttpProvider
from sluice.providers.registry import build_http_client, load_providers
from sluice.ratelimit import build_limiter
from sluice.ratelimit.base import Limiter
from sluice.settings import Settings
from sluice.store import db
from sluice.store.learned import LearnedRateStore
from sluice.store.pauses import PauseStore
from sluice.store.pins import PinStore
from sluice.store.queue import WorkQueue
from sluice.store.quotas import QuotaStore
from sluice.store.repository import TaskRepository
from sluice.store.usage import UsageStore

DEMO_SANDBOX_PORT = 9100
# With no [providers] configured, tasks go to the bundled sandbox (run it with
# `sluice sandbox --port 9100 --profile demo`, or let `sluice up --demo` start it).
DEFAULT_PROVIDERS: dict[str, dict[str, Any]] = {
    "sandbox": {
        "preset": "sandbox-demo",
        "base_url": f"http://127.0.0.1:{DEMO_SANDBOX_PORT}",
        "rate_limit": "20/s",
    }
}


@dataclass
class Runtime:
    """The long-lived objects of one Sluice process."""

    settings: Settings
    repo: TaskRepository
    queue: WorkQueue
    providers: dict[str, Provider]
    catalog: Catalog
    limiter: Limiter
    pauses: PauseStore
    clients: dict[str, httpx.Client] = field(default_factory=dict)
    rates: RatesInForce = field(default_factory=RatesInForce)
    """The rate in force on each limit key (configured, or a lower pinned/learned/quota one)."""
    learner: Learner | None = None
    """The adaptive limiter of the providers with ``adaptive`` on (None: none has it)."""
    quotas: QuotaStore | None = None
    """Quota use (``quota = "15000/d"``), kept in the database."""
    checkpoints: db.WalCheckpoints | None = None
    """SQLite: the WAL checkpointed in the background, off the committing requests."""

    @property
    def controls(self) -> Controls:
        """Pause, resume, pin and unpin, and the providers' overview, over this runtime."""
        return Controls(
            self.repo.engine,
            self.providers,
            self.limiter,
            self.rates,
            pauses=self.pauses,
            clock=self.repo.clock,
        )

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        if self.checkpoints is not None:
            self.checkpoints.close()
        self.repo.engine.dispose()


def with_default_providers(settings: Settings) -> Settings:
    """Settings whose providers include the bundled sandbox when none are configured.

    The sandbox's address follows the ``[sandbox]`` table's ``host`` and ``port`` when set,
    so moving the demo's sandbox to another port needs one setting, not two.
    """
    if settings.providers:
        return settings
    host = settings.sandbox.get("host", "127.0.0.1")
    port = settings.sandbox.get("port", DEMO_SANDBOX_PORT)
    sandbox = {**DEFAULT_PROVIDERS["sandbox"], "base_url": f"http://{host}:{port}"}
    return settings.model_copy(update={"providers": {"sandbox": sandbox}})


def build_catalog(providers: dict[str, Provider], default_provider: str) -> Catalog:
    """What the API accepts: each provider's kinds and whether it can track by id."""
    return Catalog(
        {
            name: ProviderInfo(
                p.kinds, p.can_track(), p.redact_fields, p.fairness_field, p.fairness_weights
            )
            for name, p in providers.items()
        },
        default_provider,
    )


def build_runtime(settings: Settings, *, migrate: bool = True) -> Runtime:
    """Open the store (migrated to head; with ``migrate`` False, an older schema is refused:
    :func:`db.require_schema`), pick the limiter, load providers."""
    settings = with_default_providers(settings)
    limiter = build_limiter(
        settings.redis_url,
        margin=settings.rate_margin,
        namespace=settings.limiter_namespace,
        catch_up_s=settings.rate_catch_up_s,
    )
    providers = load_providers(settings, limiter=limiter)
    engine = db.make_engine(settings.database_url)
    checkpoints = db.WalCheckpoints(engine)  # before the first connection
    if migrate:
        db.ensure_schema(engine)
    else:
        db.require_schema(engine)
    # Each store table that can lower a key's rate (pins, learned rates, quotas) adds its
    # source here; the dispatcher and the API read the rate in force through `rates`.
    quotas = QuotaStore(engine)
    if migrate:
        # Quota use stored under a key from before digest forms counts on under the new one.
        adopt_stored_keys(quotas, providers, SystemClock().now())
        adopt_stored_pins(PinStore(engine), providers)  # and each pin too
    ceiling_sources: list[CeilingSource] = [
        PinnedCeilings(PinStore(engine), stretches(providers)),
        QuotaPace(quotas, providers),
    ]
    learner = build_learner(providers, engine)
    if learner is not None:
        ceiling_sources.append(learner)
    rates = RatesInForce(ceiling_sources)
    if learner is not None:
        learner.on_change = rates.refresh
    return Runtime(
        settings=settings,
        repo=TaskRepository(engine),
        queue=WorkQueue(engine),
        providers=providers,
        catalog=build_catalog(providers, settings.default_provider),
        limiter=limiter,
        pauses=PauseStore(engine),
        clients={name: build_http_client(p) for name, p in providers.items()},
        rates=rates,
        learner=learner,
        quotas=quotas,
        checkpoints=checkpoints,
    )


def build_learner(providers: dict[str, Provider], engine: Engine) -> Learner | None:
    """The adaptive limiter, watching every provider with ``adaptive`` on; None if none has."""
    configs = {
        name: p.config.adaptive
        for name, p in providers.items()
        if isinstance(p, HttpProvider) and p.config.adaptive.enabled
    }
    if not configs:
        return None
    # The climb is capped at twice what every worker sent lately (the usage counters).
    learner = Learner(LearnedRateStore(engine), configs, delivered=UsageStore(engine))
    for name in configs:
        provider = providers[name]
        if isinstance(provider, HttpProvider):
            provider.watch_limits(learner)
    return learner
