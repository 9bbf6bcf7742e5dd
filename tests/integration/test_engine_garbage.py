"""The engine's dispatch path leaves no cyclic garbage behind.

Garbage in reference cycles waits for the cyclic collector, and a full collection walks all
of it with the interpreter lock held, stopping every thread of the process. On a loaded
two-core host such collections stopped the embedded engine for 120-390 ms, about once a
run, and a key at its limit lost those slots for good (``bench.limit_fidelity
--creates-only --cpu-hogs 7``; docs/ratelimit.md, "The collector"). The cycles came from
SQLAlchemy expressions built per statement: an ``in_`` list, a subquery, an upsert's ``excluded``
alias, a wrapper column compared. This runs a chain of campaigns, ad groups and ads
through the embedded driver against the real sandbox, on each database, and counts what
the collector finds of Sluice's and SQLAlchemy's objects.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sluice import submissions
from sluice.domain import Submission, TaskStatus
from sluice.drivers.embedded import build_embedded_driver
from tests.integration.conftest import make_runtime

GROUPS, ADS = 4, 10
"""A campaign, 4 ad groups, 40 ads: every parent's completion releases its children."""


def hierarchies(count: int) -> list[Submission]:
    items: list[Submission] = []
    for c in range(count):
        root = len(items)
        tenant = f"tenant-{c}"  # a fairness key each: claims read several keys at once
        items.append(
            Submission(
                tenant=tenant,
                kind="campaign",
                payload={"advertiser_id": "adv-1", "name": f"C{c}", "budget": 1000.0},
            )
        )
        for g in range(GROUPS):
            items.append(
                Submission(
                    tenant=tenant,
                    kind="ad_group",
                    payload={"name": f"G{g}", "bid": 1.5},
                    parent_index=root,
                )
            )
            group = len(items) - 1
            items.extend(
                Submission(
                    tenant=tenant, kind="ad", payload={"name": f"A{g}.{a}"}, parent_index=group
                )
                for a in range(ADS)
            )
    return items


def save_garbage_from_now() -> None:
    """From now on, what the collector finds unreachable is kept in ``gc.garbage`` instead
    of freed (``DEBUG_SAVEALL``); what it kept so far is freed first (cleared from the list
    with the flag still set, a cycle would only be found and kept again)."""
    gc.set_debug(0)
    gc.garbage.clear()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """``gc.garbage``, :func:`save_garbage_from_now` applied; freed again afterwards."""
    save_garbage_from_now()
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()


def ours(objects: list[object]) -> Counter[str]:
    """The objects of Sluice's engine and SQLAlchemy among ``objects``, by type (the sandbox
    DSP, which runs in this process, and the test's own are not counted)."""
    found: Counter[str] = Counter()
    for obj in objects:
        module = type(obj).__module__ or ""
        if module.startswith(("sqlalchemy", "sluice")) and not module.startswith("sluice.sandbox"):
            found[f"{module}.{type(obj).__qualname__}"] += 1
    return found


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_dispatching_chains_leaves_no_cyclic_garbage(
    backend: str,
    tmp_path: Path,
    sandbox: Callable[..., str],
    request: pytest.FixtureRequest,
    saved_garbage: list[object],
) -> None:
    """Two rounds under one running driver: the first warms every cache (compiled
    statements, clauses built once); in the second, 3 x 45 tasks of 3 tenants (creates,
    polls, fair claims over several keys, outcomes, released children) leave none of
    Sluice's or SQLAlchemy's objects to the cyclic collector (before the statements were
    built once, 60-75 per task)."""
    url = sandbox(profile="standard", limits=[{"name": "app", "limit": 400, "window_s": 1.0}])
    database_url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    provider = {
        "sbx": {
            "preset": "sandbox-standard",
            "base_url": url,
            "rate_limit": "400/s",
            "poll": {"interval": "50ms"},
        }
    }
    runtime = make_runtime(tmp_path, provider, database_url=database_url)
    driver = build_embedded_driver(runtime)
    driver.start()
    try:
        for _ in range(2):
            save_garbage_from_now()
            ids = submissions.create_tasks(runtime.repo, runtime.catalog, hierarchies(3))
            deadline = time.monotonic() + 60  # against a hang only
            while not driver.all_final():
                assert time.monotonic() < deadline, runtime.repo.counts()
                time.sleep(0.05)
            ended = [runtime.repo.get(i) for i in ids]
            assert {t.status for t in ended} == {TaskStatus.COMPLETED}
            gc.collect()
    finally:
        driver.stop()
    found = ours(saved_garbage)
    assert sum(found.values()) == 0, found.most_common(10)
