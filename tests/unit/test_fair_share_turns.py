"""Within a fairness key, polls and creates take turns (:mod:`sluice.store.fairshare`).

:func:`take_turns` reads a key's two streams for a claim and :func:`turn_place` is where
explain says a task stands: both must agree with :func:`merge_turns`, the order itself
(from the stored turn, a poll's or a ready task's, then one of each in turn, the longer
stream's rest at the end), and :func:`next_turn` continues the turns in the next claim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hypothesis import given
from hypothesis import strategies as st

from sluice.store.fairshare import merge_turns, next_turn, take_turns, turn_place

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


@given(sizes=streams)
def test_turns_from_a_ready_task_alternate_the_other_way(sizes: tuple[int, int]) -> None:
    polls, ready = _streams(*sizes)
    merged = merge_turns(polls, ready, polls_first=False)
    both = 2 * min(len(polls), len(ready))
    assert merged[:both] == [x for pair in zip(ready, polls, strict=False) for x in pair]
    assert merged[both:] == ready[both // 2 :] + polls[both // 2 :]


@given(sizes=streams, limit=st.integers(0, 70), polls_first=st.booleans())
def test_take_turns_reads_no_task_it_does_not_take(
    sizes: tuple[int, int], limit: int, polls_first: bool
) -> None:
    """The first ``limit`` of the turns, and every task read is taken (a locked read locks
    only what the claim takes)."""
    polls, ready = _streams(*sizes)
    read: list[str] = []

    def reader(stream: list[str]) -> Callable[[int, Sequence[str]], list[str]]:
        def read_stream(count: int, got: Sequence[str]) -> list[str]:
            rest = [t for t in stream if t not in got][:count]
            read.extend(rest)
            return rest

        return read_stream

    taken = take_turns(reader(polls), reader(ready), limit, polls_first)

    assert taken == merge_turns(polls, ready, polls_first)[:limit]
    assert sorted(read) == sorted(taken)


@given(sizes=streams, polls_first=st.booleans())
def test_a_tasks_place_is_its_index_in_the_turns(sizes: tuple[int, int], polls_first: bool) -> None:
    polls, ready = _streams(*sizes)
    merged = merge_turns(polls, ready, polls_first)
    for n, poll in enumerate(polls):
        assert turn_place(n, True, len(ready), polls_first) == merged.index(poll)
    for n, task in enumerate(ready):
        assert turn_place(n, False, len(polls), polls_first) == merged.index(task)


@given(
    sizes=streams,
    claims=st.lists(st.integers(0, 12), min_size=1, max_size=12),
    polls_first=st.booleans(),
)
def test_the_turns_run_on_across_claims(
    sizes: tuple[int, int], claims: list[int], polls_first: bool
) -> None:
    """Claims of any sizes, each starting from the turn the one before stored
    (:func:`next_turn`), take the key's tasks in one run of turns: as one claim of them
    all would (so a claim of one slot alternates between the streams claim by claim)."""
    polls, ready = _streams(*sizes)
    start = polls_first
    taken: list[str] = []
    for size in claims:
        left_polls = [t for t in polls if t not in taken]
        left_ready = [t for t in ready if t not in taken]
        took = merge_turns(left_polls, left_ready, start)[:size]
        taken += took
        start = next_turn(
            sum(1 for t in took if t.startswith("p")),
            sum(1 for t in took if t.startswith("r")),
            start,
        )

    assert taken == merge_turns(polls, ready, polls_first)[: len(taken)]
