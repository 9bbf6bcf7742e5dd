"""The truth: what the sandbox saw, for tests and benchmarks to judge Sluice by."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sluice.sandbox.entities import EntityStore
from sluice.sandbox.limiter import SandboxLimiter


@dataclass
class RequestStats:
    """Counters updated on every request (O(1) each)."""

    requests: dict[str, Counter[str]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    refused_total: int = 0
    faults: Counter[str] = field(default_factory=Counter)

    def record(self, route: str, status: int | str) -> None:
        """Count one answer to ``route`` (``"<METHOD> <path template>"``)."""
        by_status = self.requests.get(route)
        if by_status is None:
            by_status = self.requests[route] = Counter()
        by_status[str(status)] += 1

    def record_refusal(self, limit_keys: list[str]) -> None:
        """Count one refused request against every limit that was full."""
        self.refused_total += 1
        self.refused.update(limit_keys)

    def record_fault(self, fault: str) -> None:
        """Count one injected fault."""
        self.faults[fault] += 1


def snapshot(
    stats: RequestStats, limiter: SandboxLimiter, store: EntityStore, now: float
) -> dict[str, Any]:
    """The ``GET /_sandbox/stats`` answer."""
    duplicates = store.duplicates()
    return {
        "requests": {route: dict(by_status) for route, by_status in stats.requests.items()},
        "total_requests": sum(sum(c.values()) for c in stats.requests.values()),
        "refused": dict(stats.refused),
        "refused_total": stats.refused_total,
        "max_in_window": limiter.report(now),
        "schedules": limiter.describe_schedules(now),
        "duplicates": duplicates,
        "duplicate_count": sum(len(d["ids"]) - 1 for d in duplicates),
        "objects": store.status_counts(now),
        "faults": dict(stats.faults),
    }
