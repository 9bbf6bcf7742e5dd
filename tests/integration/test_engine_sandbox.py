"""The embedded driver against the real sandbox DSP over loopback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from sluice import submissions
from sluice.domain import Submission, Task, TaskStatus
from sluice.drivers.embedded import EmbeddedDriver, build_embedded_driver
from sluice.runtime import Runtime
from tests.integration.conftest import make_runtime, run_until_final, sandbox_stats

FAST_POLL = {"interval": "100ms"}


def provider(base_url: str, preset: str = "sandbox-standard", **overrides: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "preset": preset,
        "base_url": base_url,
        "rate_limit": "40/s",
        "poll": dict(FAST_POLL),
        "retry_base": "50ms",
        "retry_max": "500ms",
    }
    table.update(overrides)
    return {"sbx": table}


def hierarchy(groups: int = 2, ads: int = 3, budget: float = 1000.0) -> list[Submission]:
    items = [
        Submission(
            kind="campaign", payload={"advertiser_id": "adv-1", "name": "C", "budget": budget}
        )
    ]
    for g in range(groups):
        items.append(
            Submission(kind="ad_group", payload={"name": f"G{g}", "bid": 1.5}, parent_index=0)
        )
        group_index = len(items) - 1
        for a in range(ads):
            items.append(
                Submission(kind="ad", payload={"name": f"A{g}.{a}"}, parent_index=group_index)
            )
    return items


def test_chain_completes_with_parent_ids_and_no_refusals(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    """A campaign, its ad groups and their ads all complete, each child under its parent's id."""
    url = sandbox(profile="standard", limits=[{"name": "app", "limit": 40, "window_s": 1.0}])
    runtime = make_runtime(tmp_path, provider(url))
    ids = submissions.create_tasks(runtime.repo, runtime.catalog, hierarchy())
    run_until_final(runtime)
    done = [runtime.repo.get(i) for i in ids]
    assert {t.status for t in done} == {TaskStatus.COMPLETED}
    campaign, group = done[0], done[1]
    remote = httpx.get(f"{url}/v1/ad_groups/{group.external_id}").json()
    assert remote["campaign_id"] == campaign.external_id
    stats = sandbox_stats(url)
    assert stats["refused_total"] == 0
    assert stats["duplicate_count"] == 0
    assert all(v["max_seen"] <= v["limit"] for v in stats["max_in_window"].values())


def test_validation_error_is_recorded_and_ends_children(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    """A rejected campaign is Error with the DSP's message and its descendants end naming it."""
    url = sandbox(profile="standard")
    runtime = make_runtime(tmp_path, provider(url))
    bad_audience = Submission(
        kind="audience",
        payload={
            "advertiser_id": "adv-1",
            "name": "venues",
            "type": "ip_range",
            "include": ["192.0.2.0/25", "192.168.1.256"],
            "exclude": [],
        },
    )
    ids = submissions.create_tasks(
        runtime.repo, runtime.catalog, [*hierarchy(budget=-5), bad_audience]
    )
    run_until_final(runtime)
    campaign = runtime.repo.get(ids[0])
    assert campaign.status is TaskStatus.ERROR
    assert campaign.validation_error
    child = runtime.repo.get(ids[1])
    assert child.status is TaskStatus.ERROR
    assert f"parent task {ids[0]} failed" in (child.validation_error or "")
    audience = runtime.repo.get(ids[-1])
    assert audience.status is TaskStatus.ERROR
    assert "Invalid IP range: 192.168.1.256" in (audience.validation_error or "")


def test_prototype_walkthrough_tracks_ids_by_batch_status(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    """Tasks 1, 2, 3 created the prototype's way become In Progress, Completed and Error."""
    url = sandbox(profile="demo", faults={})
    runtime = make_runtime(tmp_path, provider(url, preset="sandbox-demo"))
    submissions.create_tasks(
        runtime.repo,
        runtime.catalog,
        [
            Submission(id=1, status=TaskStatus.NOT_STARTED),
            Submission(id=2, status=TaskStatus.IN_PROGRESS),
            Submission(id=3, status=TaskStatus.IN_PROGRESS),
        ],
    )
    from sluice.drivers.embedded import build_embedded_driver

    driver = build_embedded_driver(runtime)
    driver.start()
    try:
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            statuses = [runtime.repo.get(i).status for i in (1, 2, 3)]
            if statuses == [TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.ERROR]:
                break
            time.sleep(0.05)
    finally:
        driver.stop()
    assert [runtime.repo.get(i).status for i in (1, 2, 3)] == [
        TaskStatus.IN_PROGRESS,
        TaskStatus.COMPLETED,
        TaskStatus.ERROR,
    ]
    assert runtime.repo.get(3).validation_error == "Invalid IP range: 192.168.1.256"


def test_rate_limit_signals_pause_without_counting_attempts(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    """Configured above the DSP's real limit, Sluice is refused, pauses, and still finishes."""
    url = sandbox(profile="standard", limits=[{"name": "app", "limit": 10, "window_s": 1.0}])
    runtime = make_runtime(tmp_path, provider(url, rate_limit="200/s", max_in_flight=16))
    ids = submissions.create_tasks(runtime.repo, runtime.catalog, hierarchy(groups=3, ads=4))
    run_until_final(runtime, timeout_s=90)
    assert {runtime.repo.get(i).status for i in ids} == {TaskStatus.COMPLETED}
    stats = sandbox_stats(url)
    assert stats["refused_total"] > 0
    assert all(runtime.repo.get(i).attempts == 0 for i in ids)
    events = [e.event for i in ids for e in runtime.repo.events(i)]
    assert "rate_limited" in events


def test_wide_tree_completes_in_order(tmp_path: Path, sandbox: Callable[..., str]) -> None:
    """A campaign with 10 ad groups of 50 ads each completes, every child after its parent."""
    url = sandbox(
        profile="standard",
        limits=[{"name": "app", "limit": 400, "window_s": 1.0}],
        accept_delay_s=[0, 0.01],
        process_delay_s=[0, 0.02],
    )
    runtime = make_runtime(tmp_path, provider(url, rate_limit="400/s", max_in_flight=16))
    ids = submissions.create_tasks(runtime.repo, runtime.catalog, hierarchy(groups=10, ads=50))
    run_until_final(runtime, timeout_s=120)
    done = {i: runtime.repo.get(i) for i in ids}
    assert {t.status for t in done.values()} == {TaskStatus.COMPLETED}
    for task in done.values():
        if task.parent_id is not None:
            parent = done[task.parent_id]
            submitted = [e for e in runtime.repo.events(task.id) if e.event == "submitted"]
            completed = [
                e for e in runtime.repo.events(parent.id) if e.to_status == TaskStatus.COMPLETED
            ]
            assert submitted[0].at >= completed[0].at
    stats = sandbox_stats(url)
    assert stats["duplicate_count"] == 0
    assert stats["refused_total"] == 0


PROCESSING_S = 600.0
"""How long the DSP takes to process a campaign: longer than any test waits, so it is still
processing when the test acts, until the test moves the sandbox's clock past it."""


@dataclass
class Processing:
    """One campaign the DSP processes until the test finishes it, under a running driver."""

    url: str
    runtime: Runtime
    driver: EmbeddedDriver
    task_id: int

    def wait(self, done: Callable[[], bool], what: str, pause_s: float = 0.05) -> None:
        deadline = time.monotonic() + 60  # against a hang only
        while not done():
            assert time.monotonic() < deadline, f"{what}: {self.runtime.repo.get(self.task_id)}"
            time.sleep(pause_s)

    def finish(self) -> None:
        """Move the DSP's clock past the processing of every object it holds."""
        moved = httpx.post(f"{self.url}/_sandbox/clock", json={"advance_s": PROCESSING_S})
        moved.raise_for_status()

    def submitted(self) -> int:
        """How many times the campaign was created at the DSP."""
        return [e.event for e in self.runtime.repo.events(self.task_id)].count("submitted")

    def settle(self) -> Task:
        """Wait until every task is final; the campaign's task."""
        self.wait(self.driver.all_final, "every task final")
        return self.runtime.repo.get(self.task_id)


@contextmanager
def campaign_in_progress(tmp_path: Path, sandbox: Callable[..., str]) -> Iterator[Processing]:
    """A campaign created and In Progress at the DSP; the driver stops on leaving.

    The DSP used to take 1.5 s: a test that acted later than that (a loaded host) found
    the campaign Completed, and cancelling it raised. Now it is processing until
    :meth:`Processing.finish`, however late the test acts."""
    url = sandbox(profile="standard", process_delay_s=[PROCESSING_S, PROCESSING_S])
    runtime = make_runtime(tmp_path, provider(url))
    (task_id,) = submissions.create_tasks(runtime.repo, runtime.catalog, hierarchy(0, 0))
    driver = build_embedded_driver(runtime)
    driver.start()
    try:
        processing = Processing(url, runtime, driver, task_id)
        processing.wait(
            lambda: runtime.repo.get(task_id).status is TaskStatus.IN_PROGRESS,
            "the campaign In Progress",
            pause_s=0.02,
        )
        yield processing
    finally:
        driver.stop()


def test_retry_after_cancel_while_in_progress_polls_the_same_object(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    """A campaign cancelled while the DSP processes it, then retried, completes as the one
    object the DSP already has: no second create."""
    with campaign_in_progress(tmp_path, sandbox) as run:
        first = run.runtime.repo.get(run.task_id).external_id
        run.runtime.repo.cancel(run.task_id)
        run.runtime.repo.retry(run.task_id)
        run.finish()
        done = run.settle()
    assert (done.status, done.external_id) == (TaskStatus.COMPLETED, first)
    stats = sandbox_stats(run.url)
    assert stats["duplicate_count"] == 0
    assert stats["objects"]["campaigns"] == {"active": 1}, stats["objects"]


def test_retry_creates_again_a_campaign_the_dsp_forgot(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    """The DSP forgets a campaign it is processing (a sandbox reset): status reads stop
    finding it, Sluice gives up (``object_gone``), and a retry looks it up by client
    reference, finds nothing, and creates it again, rather than polling the missing id."""
    with campaign_in_progress(tmp_path, sandbox) as run:
        first = run.runtime.repo.get(run.task_id).external_id
        httpx.post(f"{run.url}/_sandbox/reset").raise_for_status()
        gone = run.settle()
        assert gone.status is TaskStatus.ERROR
        assert f"has no object {first}" in (gone.validation_error or "")
        assert [e.event for e in run.runtime.repo.events(run.task_id)][-1] == "object_gone"
        run.runtime.repo.retry(run.task_id)
        run.wait(lambda: run.submitted() == 2, "the campaign created again")
        run.finish()
        done = run.settle()
    assert done.status is TaskStatus.COMPLETED
    assert done.external_id is not None
    assert "lookup" in [e.event for e in run.runtime.repo.events(run.task_id)]
    stats = sandbox_stats(run.url)
    assert stats["duplicate_count"] == 0
    assert stats["objects"]["campaigns"] == {"active": 1}, stats["objects"]


def test_a_sole_engine_recovers_a_killed_engines_claims_as_it_starts(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    """`sluice up` restarted after a SIGKILL holds the engine lock, so the claims left in
    the file are a dead engine's: they come back as it starts, not a lease (120 s) later,
    and the campaign the killed engine was sending (it did reach the sandbox) is looked up,
    not created twice."""
    url = sandbox(profile="standard")
    runtime = make_runtime(tmp_path, provider(url))
    ids = submissions.create_tasks(runtime.repo, runtime.catalog, hierarchy(groups=1, ads=1))
    (due,) = runtime.queue.claim_due(runtime.repo.clock.now(), 10, "vm:1/killed", 3600.0)
    ref = due.client_ref
    assert ref is not None
    created = httpx.post(
        f"{url}/v1/campaigns", json={"advertiser_id": "adv-1", "name": "C", "client_ref": ref}
    )
    assert created.status_code == 202

    driver = build_embedded_driver(runtime)
    driver.start(sole=True)
    try:
        # Recovered as it started, whatever the loop has done since.
        assert "recovered" in [e.event for e in runtime.repo.events(ids[0])]
        deadline = time.monotonic() + 60
        while not driver.all_final():
            assert time.monotonic() < deadline, runtime.repo.counts()
            time.sleep(0.05)
    finally:
        driver.stop()
    assert [runtime.repo.get(i).status for i in ids] == [TaskStatus.COMPLETED] * len(ids)
    assert runtime.repo.get(ids[0]).external_id == created.json()["id"]
    assert sandbox_stats(url)["duplicate_count"] == 0
