"""Controls and explanations against the real sandbox DSP over loopback, the embedded driver
running: a pin keeps Sluice under a lower real limit, a pause by hand holds every request
until resumed, and a real 429's pause is explained with its signal."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sluice import submissions
from sluice.domain import LOCAL_ACTOR, Submission, TaskStatus
from sluice.drivers.embedded import build_embedded_driver
from sluice.explain import Explainer
from sluice.ratelimit.rate import parse_rate
from tests.integration.conftest import make_runtime, run_until_final, sandbox_stats


def provider(base_url: str, rate: str = "40/s") -> dict[str, Any]:
    return {
        "sbx": {
            "preset": "sandbox-standard",
            "base_url": base_url,
            "rate_limit": rate,
            "poll": {"interval": "100ms"},
            "retry_base": "50ms",
            "retry_max": "500ms",
        }
    }


def campaigns(count: int) -> list[Submission]:
    return [
        Submission(
            kind="campaign", payload={"advertiser_id": "adv-1", "name": f"C{i}", "budget": 100.0}
        )
        for i in range(count)
    ]


def test_a_pin_keeps_sluice_under_a_lower_real_limit(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    """Configured at 40/s against a sandbox that allows 3/s, pinned at 2/s: no refusals."""
    url = sandbox(profile="standard", limits=[{"name": "app", "limit": 3, "window_s": 1.0}])
    runtime = make_runtime(tmp_path, provider(url))
    runtime.controls.pin("sbx", parse_rate("2/s"), reason="the DSP allows 3/s", actor=LOCAL_ACTOR)
    ids = submissions.create_tasks(runtime.repo, runtime.catalog, campaigns(6))

    waiting = Explainer(runtime.repo, runtime.controls).explain(ids[-1])

    assert waiting.state == "waiting_slot"
    assert waiting.slot is not None
    assert waiting.slot.ahead == 5
    assert [(r.key, r.configured, r.in_force, r.source) for r in waiting.rates] == [
        ("sbx", "40/s", "2/s", "pinned")
    ]
    run_until_final(runtime)
    assert {runtime.repo.get(i).status for i in ids} == {TaskStatus.COMPLETED}
    stats = sandbox_stats(url)
    assert stats["refused_total"] == 0
    final = Explainer(runtime.repo, runtime.controls).explain(ids[0])
    assert final.state == "final"
    assert final.final is not None
    assert final.final.why.startswith("completed (external id ")
    runtime.close()


def test_a_pause_by_hand_holds_every_request_until_resumed(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    url = sandbox(profile="standard")
    runtime = make_runtime(tmp_path, provider(url))
    runtime.controls.pause("sbx", reason="vendor maintenance", until=None, actor=LOCAL_ACTOR)
    ids = submissions.create_tasks(runtime.repo, runtime.catalog, campaigns(3))
    driver = build_embedded_driver(runtime)
    driver.start()
    try:
        time.sleep(1.5)
        assert sandbox_stats(url)["total_requests"] == 0
        explained = Explainer(runtime.repo, runtime.controls).explain(ids[0])
        assert explained.state == "paused"
        assert explained.pause is not None
        assert (explained.pause.signal, explained.pause.reason) == ("manual", "vendor maintenance")
        runtime.controls.resume("sbx", actor=LOCAL_ACTOR)
    finally:
        driver.stop()
    run_until_final(runtime, timeout_s=30)
    assert {runtime.repo.get(i).status for i in ids} == {TaskStatus.COMPLETED}
    runtime.close()


def test_a_real_429_pause_is_explained_with_its_signal(
    tmp_path: Path, sandbox: Callable[..., str]
) -> None:
    """Sluice at 40/s against a sandbox allowing 1/s: its 429s pause the provider, and a
    waiting task's explanation names that pause, its signal and the provider's answer."""
    url = sandbox(profile="standard", limits=[{"name": "app", "limit": 1, "window_s": 1.0}])
    runtime = make_runtime(tmp_path, provider(url))
    ids = submissions.create_tasks(runtime.repo, runtime.catalog, campaigns(4))
    explainer = Explainer(runtime.repo, runtime.controls)
    driver = build_embedded_driver(runtime)
    driver.start()
    seen: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while not driver.all_final() and time.monotonic() < deadline:
            for task_id in ids:
                explained = explainer.explain(task_id)
                if explained.state == "paused":
                    seen.append(explained.pause)
            time.sleep(0.02)
    finally:
        driver.stop()
    assert sandbox_stats(url)["refused_total"] >= 1
    signals = {(p.key, p.signal) for p in seen}
    assert ("sbx", "rate_limited") in signals, signals
    reasons = [p.reason for p in seen if p.signal == "rate_limited"]
    assert all(reason and "paused" in reason for reason in reasons), reasons
    runtime.close()
