"""build_units keeps every claimed task exactly once and the claim's order (review of
pollfix 47b4b00)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sluice.domain import DueTask, Phase, TaskStatus
from sluice.engine.dispatcher import build_units
from sluice.providers.base import TaskRef

PHASES = (Phase.READY, Phase.POLLING, Phase.UNCERTAIN)


class Batching:
    """A provider that answers polls in batches of ``size``, in an order of its own."""

    name = "fake"

    def __init__(self, size: int, reverse: bool) -> None:
        self.size, self.reverse = size, reverse

    def poll_groups(self, refs: Sequence[TaskRef]) -> list[list[TaskRef]]:
        ordered = list(reversed(refs)) if self.reverse else list(refs)
        return [ordered[n : n + self.size] for n in range(0, len(ordered), self.size)]


def _due(task_id: int, phase: Phase) -> DueTask:
    return DueTask(
        task_id, "fake", "k", {}, "ext" if phase is Phase.POLLING else None, "ref", None,
        None, TaskStatus.IN_PROGRESS, phase, False, 0, 0, None, None,
    )  # fmt: skip


@given(
    phases=st.lists(st.sampled_from(PHASES), max_size=20),
    size=st.integers(1, 4),
    reverse=st.booleans(),
)
def test_build_units_keeps_each_task_once_in_the_claims_order(
    phases: list[Phase], size: int, reverse: bool
) -> None:
    due = [_due(n + 1, phase) for n, phase in enumerate(phases)]
    provider: Any = Batching(size, reverse)

    units = build_units(provider, due)

    ids = [t.id for u in units for t in u.tasks]
    assert sorted(ids) == [t.id for t in due]  # none lost, none twice
    firsts = [min(t.id for t in u.tasks) for u in units]
    assert firsts == sorted(firsts)  # each unit where its first task sits in the claim
