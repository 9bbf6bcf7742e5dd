"""Properties of the fair share's slot allocation (start-time fair queuing over virtual time).

:func:`sluice.store.fairshare.allocate` hands one claim's slots out between fairness keys.
Over any run of claims in which a set of keys stays backlogged, each key's slots per unit
of weight stay within one slot of every other's (the classic SFQ bound); no slot is left
unused while any key has work (work-conserving); a key coming back from idle gets no
credit for its idleness.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.store.fairshare import Allocation, KeyState, allocate

KEYS = ["a", "b", "c", "d"]
weights_st = st.sampled_from([0.5, 1.0, 2.0, 3.0, 4.0, 7.0])


def run_claims(
    weights: dict[str, float], claims: list[int], waiting: dict[str, int] | None = None
) -> tuple[dict[str, int], float, dict[str, float]]:
    """Claim ``claims`` slots in turn, carrying tags and clock as the table does."""
    vtime = dict.fromkeys(weights, 0.0)
    clock = 0.0
    got = dict.fromkeys(weights, 0)
    left = dict(waiting) if waiting is not None else dict.fromkeys(weights, 10**9)
    for slots in claims:
        states = [KeyState(k, vtime[k], weights[k], left[k]) for k in sorted(weights)]
        plan = allocate(clock, states, slots)
        for key, count in plan.counts.items():
            vtime[key] = plan.starts[key] + count / weights[key]
            got[key] += count
            left[key] -= count
        clock = plan.clock
    return got, clock, vtime


@settings(max_examples=200)
@given(
    weights=st.dictionaries(st.sampled_from(KEYS), weights_st, min_size=2, max_size=4),
    claims=st.lists(st.integers(1, 60), min_size=1, max_size=30),
)
def test_backlogged_keys_get_their_weighted_share_within_one_slot(
    weights: dict[str, float], claims: list[int]
) -> None:
    got, _, _ = run_claims(weights, claims)

    for a in weights:
        for b in weights:
            gap = got[a] / weights[a] - got[b] / weights[b]
            assert gap <= 1 / weights[a] + 1 / weights[b] + 1e-9, (got, weights)
    assert sum(got.values()) == sum(claims)


@settings(max_examples=200)
@given(
    weights=st.dictionaries(st.sampled_from(KEYS), weights_st, min_size=1, max_size=4),
    waiting=st.lists(st.integers(0, 40), min_size=4, max_size=4),
    slots=st.integers(0, 120),
    clock=st.floats(0, 1000, allow_nan=False),
)
def test_a_claim_is_work_conserving_and_never_over_hands(
    weights: dict[str, float], waiting: list[int], slots: int, clock: float
) -> None:
    """Every slot goes out while any key has work; no key gets more than it has waiting."""
    left = dict(zip(KEYS, waiting, strict=True))
    states = [KeyState(k, 0.0, w, left[k]) for k, w in sorted(weights.items())]

    plan: Allocation = allocate(clock, states, slots)

    assert sum(plan.counts.values()) == min(slots, sum(left[k] for k in weights))
    assert all(0 < plan.counts[k] <= left[k] for k in plan.counts)
    assert plan.clock >= clock


@settings(max_examples=100)
@given(
    weight=weights_st,
    busy_claims=st.lists(st.integers(1, 60), min_size=1, max_size=20),
    slots=st.integers(1, 60),
)
def test_an_idle_key_saves_up_no_credit(weight: float, busy_claims: list[int], slots: int) -> None:
    """Key b was idle while a worked alone; when b comes back it gets its share, not all."""
    weights = {"a": 1.0, "b": weight}
    _, clock, vtime = run_claims(weights, busy_claims, {"a": 10**9, "b": 0})
    states = [KeyState("a", vtime["a"], 1.0, 10**9), KeyState("b", vtime["b"], weight, 10**9)]

    plan = allocate(clock, states, slots)

    ideal_b = slots * weight / (1.0 + weight)
    assert plan.counts.get("b", 0) <= ideal_b + 1 + 1e-9
    assert plan.counts.get("a", 0) >= slots - ideal_b - 1 - 1e-9


costs_st = st.lists(st.sampled_from([1.0, 2.0, 5.0, 0.01]), min_size=1, max_size=12)


@settings(max_examples=200)
@given(
    weights=st.dictionaries(st.sampled_from(KEYS), weights_st, min_size=2, max_size=4),
    task_costs=st.fixed_dictionaries({k: costs_st for k in KEYS}),
    claims=st.lists(st.integers(1, 60), min_size=1, max_size=30),
)
def test_backlogged_keys_get_their_weighted_share_of_budget_units(
    weights: dict[str, float], task_costs: dict[str, list[float]], claims: list[int]
) -> None:
    """With tasks that cost the budget different amounts (each key's tasks cycle through
    their costs), backlogged keys' *units* per weight stay within one task of each other:
    SFQ's bound with variable packet sizes, |U_a/w_a - U_b/w_b| <= L_a/w_a + L_b/w_b."""
    vtime = dict.fromkeys(weights, 0.0)
    clock = 0.0
    done = dict.fromkeys(weights, 0)
    units = dict.fromkeys(weights, 0.0)

    def upcoming(key: str, n: int) -> list[float]:
        cycle = task_costs[key]
        return [cycle[(done[key] + i) % len(cycle)] for i in range(n)]

    for slots in claims:
        states = [KeyState(k, vtime[k], weights[k], 10**9) for k in sorted(weights)]
        plan = allocate(clock, states, slots, {k: upcoming(k, slots) for k in weights})
        for key, count in plan.counts.items():
            spent = sum(upcoming(key, count))
            assert plan.units[key] == pytest.approx(spent)
            vtime[key] = plan.starts[key] + spent / weights[key]
            units[key] += spent
            done[key] += count
        clock = plan.clock

    for a in weights:
        for b in weights:
            gap = units[a] / weights[a] - units[b] / weights[b]
            bound = max(task_costs[a]) / weights[a] + max(task_costs[b]) / weights[b]
            assert gap <= bound + 1e-6, (units, weights)
    assert sum(done.values()) == sum(claims)


def test_a_key_whose_tasks_cost_five_gets_a_fifth_of_the_tasks() -> None:
    """Equal weights, equal budget units: five light tasks for every heavy one."""
    states = [KeyState("heavy", 0.0, 1.0, 10**9), KeyState("light", 0.0, 1.0, 10**9)]

    plan = allocate(0.0, states, 60, {"heavy": [5.0] * 60, "light": [1.0] * 60})

    assert plan.counts == {"heavy": 10, "light": 50}
    assert plan.units == {"heavy": 50.0, "light": 50.0}
