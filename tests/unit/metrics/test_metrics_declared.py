"""A provider's counters are exported at 0 before anything happens.

Prometheus's ``increase()`` and ``rate()`` see nothing of a series' first sample: a counter
that first appears at 1 (its first 429) shows no increase, so an alert such as
``increase(sluice_ratelimit_signals_total[15m]) > 0`` (docs/operations.md) would miss the
first slow-down a provider ever sends, and every first one after the metrics directory is
emptied. Exported at 0 from the start, the first event is an increase like any other.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from sluice import metrics
from sluice.drivers.executor import ThreadExecutor
from sluice.providers.registry import build_http_client, load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.settings import Settings
from sluice.store import db
from sluice.store.queue import WorkQueue


def exported() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_a_providers_counters_are_exported_at_zero_before_any_request(tmp_path: Path) -> None:
    """Once a process can send (its executor is built), each provider's grants, refusals,
    expired grants, retries, validation errors and every rate-limit signal its
    configuration can read are series at 0."""
    table = {
        "preset": "sandbox-standard",
        "base_url": "http://127.0.0.1:9",
        "rate_limit": "20/s",
        "rate_limit_signal": {"statuses": [429, 503], "codes": ["613"]},
    }
    settings = Settings(providers={"zeroed": table}, default_provider="zeroed")
    providers = load_providers(settings)
    clients = {name: build_http_client(provider) for name, provider in providers.items()}
    engine = db.make_engine(f"sqlite:///{tmp_path / 's.db'}")
    db.ensure_schema(engine)
    executor = ThreadExecutor(WorkQueue(engine), providers, clients, MemoryLimiter(), threads=1)
    executor.close()
    for client in clients.values():
        client.close()

    samples = exported()

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted({"provider": "zeroed", **labels}.items()))))

    assert value("sluice_limiter_grants_total") == 0
    assert value("sluice_limiter_grants_expired_total") == 0
    assert value("sluice_limiter_grants_written_late_total") == 0
    assert value("sluice_validation_errors_total") == 0
    for reason in ("rate", "paused", "in_flight"):
        assert value("sluice_limiter_refusals_total", reason=reason) == 0
    for operation in ("submit", "poll", "lookup"):
        assert value("sluice_retries_total", operation=operation) == 0
    for signal in ("http_429", "http_503", "error_code_613"):
        assert value("sluice_ratelimit_signals_total", signal=signal) == 0
