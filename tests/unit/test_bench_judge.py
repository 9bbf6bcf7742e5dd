"""The limit benchmarks' judge (bench/_engine_harness.py, bench/limit_fidelity.py).

On a loaded two-core host the sandbox process, at normal priority, waited for a core while
requests sent 20 ms apart queued in its socket, then stamped them within a millisecond of
each other: the leaky bucket refused requests whose send instants kept to the spacing. The
benchmarks now run it as a real-time task, and re-judge Sluice's own send instants.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench._engine_harness import JUDGE_RT_PRIORITY, judge_realtime
from bench.limit_fidelity import leaky_refusals, span_parts

# A child with a second thread started before the call, as a server's event loop may have.
TWO_THREADS = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); "
TWO_THREADS += "print('up', flush=True); time.sleep(60)"


def test_judge_realtime_schedules_every_thread_fifo() -> None:
    """Every thread of the process, including one already running, becomes SCHED_FIFO."""
    child = subprocess.Popen([sys.executable, "-c", TWO_THREADS], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "up"
        priority = judge_realtime(child.pid)
        if priority.startswith("normal"):
            pytest.skip(f"this host does not allow real-time scheduling: {priority}")
        assert priority == f"SCHED_FIFO {JUDGE_RT_PRIORITY}"
        tids = [int(tid) for tid in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) == 2
        for tid in tids:
            assert os.sched_getscheduler(tid) == os.SCHED_FIFO
            assert os.sched_getparam(tid).sched_priority == JUDGE_RT_PRIORITY
    finally:
        child.kill()
        child.wait(timeout=10)


def test_judge_realtime_of_a_gone_process_says_normal() -> None:
    """A pid that no longer exists is reported, not raised."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    assert judge_realtime(child.pid).startswith("normal")


def test_leaky_refusals_of_spaced_sends_is_zero() -> None:
    """Sends 20 ms apart (and one 20 ms early, the burst of one) are all admitted."""
    base = 1_000_000.0
    times = [base + 0.020 * n for n in range(100)]
    times.insert(50, times[49] + 0.001)  # one early: the burst the profile tolerates
    times[51:] = [t + 0.020 for t in times[51:]]
    assert leaky_refusals(sorted(times)) == 0


def test_leaky_refusals_of_bunched_sends_counts_the_third() -> None:
    """Three sends inside one interval: the bucket refuses the third, as the sandbox did."""
    base = 1_000_000.0
    times = [base, base + 0.020, base + 0.1004, base + 0.1009, base + 0.1011]
    assert leaky_refusals(times) == 1


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(
        st.floats(min_value=0.0, max_value=0.2, allow_nan=False), min_size=51, max_size=400
    )
)
def test_span_parts_telescope_the_span(gaps: list[float]) -> None:
    """The first window, ``k`` windows and the chain's lateness add up to the whole span."""
    times = [1_000.0]
    for gap in gaps:
        times.append(times[-1] + gap)
    span = span_parts(times)
    assert span is not None
    total = span["head_s"] + span["windows"] * 1.0 + span["late_ms"] / 1000
    assert abs(total - (times[-1] - times[0])) < 0.002
    assert span["windows"] == (len(times) - 1) // 50


def test_span_parts_names_the_late_window() -> None:
    """Arrivals every 20 ms but one stall of 300 ms: the chain's lateness is the stall's,
    found where it happened."""
    times = [0.02 * n for n in range(500)]
    times[300:] = [t + 0.3 for t in times[300:]]
    span = span_parts(times)
    assert span is not None
    assert span["head_s"] == 0.98
    assert span["late_ms"] == 300.0
    assert span["largest"][0] == [round(times[349], 3), 300.0]
