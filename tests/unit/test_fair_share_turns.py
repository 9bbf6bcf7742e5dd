"""Within a fairness key, polls and creates take turns (:mod:`sluice.store.fairshare`).

:func:`take_turns` reads a key's two streams for a claim and :func:`turn_place` is where
explain says a task stands: both must agree with :func:`merge_turns`, the order itself
(a poll first, then one of each in turn, the longer stream's rest at the end).
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from sluice.store.fairshare import merge_turns, take_turns, turn_place

streams = st.tuples(st.integers(0, 30), st.integers(0, 30))


def _streams(polls: int, ready: int) -> tuple[list[str], list[str]]:
    return [f"p{n}" for n in range(polls)], [f"r{n}" for n in range(ready)]


@given(sizes=streams)
def test_turns_start_with_a_poll_and_alternate_until_one_stream_runs_out(
    sizes: tuple[int, int],
) -> None:
    polls, ready = _streams(*sizes)
    merged = merge_turns(polls, ready)
    both = 2 * min(len(polls), len(ready))
    assert merged[:both] == [x for pair in zip(polls, ready, strict=False) for x in pair]
    assert merged[both:] == polls[both // 2 :] + ready[both // 2 :]


@given(sizes=streams, limit=st.integers(0, 70))
def test_take_turns_reads_no_task_it_does_not_take(sizes: tuple[int, int], limit: int) -> None:
    """The first ``limit`` of the turns, and every task read is taken (a locked read locks
    only what the claim takes)."""
    polls, ready = _streams(*sizes)
    read: list[str] = []

    def read_polls(count: int, got: Sequence[str]) -> list[str]:
        rest = [p for p in polls if p not in got][:count]
        read.extend(rest)
        return rest

    def read_ready(count: int) -> list[str]:
        read.extend(ready[:count])
        return ready[:count]

    taken = take_turns(read_polls, read_ready, limit)

    assert taken == merge_turns(polls, ready)[:limit]
    assert sorted(read) == sorted(taken)


@given(sizes=streams)
def test_a_tasks_place_is_its_index_in_the_turns(sizes: tuple[int, int]) -> None:
    polls, ready = _streams(*sizes)
    merged = merge_turns(polls, ready)
    for n, poll in enumerate(polls):
        assert turn_place(n, True, len(ready)) == merged.index(poll)
    for n, task in enumerate(ready):
        assert turn_place(n, False, len(polls)) == merged.index(task)
