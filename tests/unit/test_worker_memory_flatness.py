"""The worker-memory benchmark's flatness verdict (bench/worker_memory.py)."""

from __future__ import annotations

from typing import Any

from bench.worker_memory import PSS_LIMIT_KIB, flatness, least_squares_growth


def _series(uss_growth_kib: int, pss_growth_kib: int, *, pss_kib: int = 60_000) -> list[Any]:
    """Samples every 30 s over 600 s whose USS and PSS grow linearly by the given totals."""
    samples = []
    for n in range(21):
        t = n * 30
        one = {"rss": 110_000, "pss": pss_kib + pss_growth_kib * n // 20, "uss": 37_000}
        child = dict(one, uss=37_000 + uss_growth_kib * n // 20)
        processes = {"main": one, "children": [child, dict(one)]}
        total = sum(p["pss"] for p in [one, child, one])
        samples.append({"t_s": float(t), **processes, "total_pss": total})
    return samples


def test_least_squares_growth_of_a_line_is_its_rise() -> None:
    """A straight line's fitted growth is its rise from first to last x."""
    assert least_squares_growth([(0, 10.0), (1, 12.0), (2, 14.0)]) == 4.0


def test_growing_private_memory_is_not_flat() -> None:
    """USS growing 4 MiB over the run (2 MiB in its last half) fails the flatness check."""
    verdict = flatness(_series(4 * 1024, 0), PSS_LIMIT_KIB)
    assert not verdict["flat"]
    assert verdict["last_half_uss_growth_ends_mib"] == 2.0


def test_pss_moved_by_other_processes_alone_stays_flat() -> None:
    """PSS that grows while USS does not (others unmapped shared pages) is still flat."""
    verdict = flatness(_series(0, 3 * 1024), PSS_LIMIT_KIB)
    assert verdict["flat"]
    assert verdict["last_half_pss_growth_ends_mib"] > 1.0


def test_a_tree_over_200_mib_pss_is_over_the_limit() -> None:
    """A sample whose total PSS passes 200 MiB fails the limit even if flat."""
    verdict = flatness(_series(0, 0, pss_kib=70 * 1024), PSS_LIMIT_KIB)
    assert verdict["flat"]
    assert not verdict["under_limit"]
