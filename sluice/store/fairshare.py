"""Weighted fair queuing of claims between the fairness keys of one provider.

Every task carries a fairness key (its tenant, or a payload field's value). When several
keys have work due for the same provider, a claim hands out its slots by start-time fair
queuing over *virtual time*: each key has a finish tag ``vtime`` that grows by
``cost/weight`` per task claimed for it, and each slot goes to the waiting key with the
smallest tag. A task's cost is what its next request uses of the provider's shared budget
(:data:`Charge`; 1 unless the provider's limits charge more), so shares are shares of the
budget's units, not of tasks: a key whose creates cost 5 gets a fifth as many as one
whose creates cost 1. A key with nothing due takes no slot (work-conserving), and a key coming
back from idle starts at the provider's virtual clock (the tag of the last slot handed
out), so idleness saves up no credit to starve the others with later.

The state lives in ``fair_shares`` and changes inside the claim's transaction, shared by
every worker on every host. A claim reads the tags without locking them and, when it
commits, *adds* its slots to each key's tag (``max(tag, clock) + slots/weight``) and moves
the clock forward, row by row, so concurrent claimers never queue for each other and
none of their grants is lost from the tags: two claims made at the same instant may both
favour the key that was behind, and the tags then hold the next claims back from it.
Workers claim about a second of their own grants at a time (docs/operations.md, Claim
size), so across all of them each key gets its weighted share to within about one claim
per worker. Tasks claimed but given back unsent are refunded (:func:`refund`). Rows are
always changed in key order, the clock row last, by claims and refunds alike (no deadlock).

Within a key, two streams take turns (:func:`take_turns`): the polls (status polls and
lookups by client reference, phases ``polling`` and ``uncertain``) by due time and id,
along ``ix_tasks_due_polls``; and the rest (``ready``: creates, children's creates) by
``priority`` (higher first), then children of parents that already exist at the provider
before new roots (trees finish first), then due time and id, along
``ix_tasks_fair_order``. When one stream has nothing due, the other takes every turn. The
turn runs on across claims: each key's row keeps whose turn comes first in its next claim
(``polls_next``, a poll's for a key never seen), and each claim stores the turn after what
it took (:func:`next_turn`), so a key given one slot a claim alternates between its
streams from claim to claim. Concurrent claimers may read the same turn and the last to
commit sets it: the alternation is approximate, as the tags are (to within a slot per
concurrent claimer). Tasks given back leave the turn as it is. So a poll never waits
behind a backlog of creates, and over consecutive claims each stream gets at least half
of a key's slots while it has work due (they share the provider's budget).
"""

from __future__ import annotations

import functools
import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    Table,
    bindparam,
    case,
    func,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from sluice.domain import Operation, Phase, operation_of
from sluice.store.rows import chunks, in_phases, is_in, tasks
from sluice.store.tables import POLL_PHASE_SQL, POLL_PHASES, READY_PHASE_SQL, FairShareRow

fair_shares: Table = FairShareRow.__table__  # type: ignore[assignment]

CLOCK_KEY = ""
"""The ``fair_shares`` row holding a provider's virtual clock (no fairness key is empty)."""
DEFAULT_WEIGHT = 1.0
SHARE_WINDOW = timedelta(seconds=60)
CANDIDATE_ROUNDS = 64
"""A bound on the rounds of a fair claim's reads (each ends a key or doubles a read)."""
KEYS_PER_READ = 50
"""Keys read in one statement (a union of two ordered, limited reads per key: its streams)."""

Due = Callable[[bool], Any]
"""The condition of a due task in one stream of a key (``True``: the polls), as each
stream's index wants it written (``store/queue.due_in_stream``)."""

Charge = Callable[[str, str | None, Operation], float]
"""What one task (provider, kind, the operation it goes to do) uses of its provider's
shared budget: the unit shares are counted in."""


def unit_charge(provider: str, kind: str | None, operation: Operation) -> float:
    """Every task costs 1: shares of tasks (no costs configured, and the tests' default)."""
    return 1.0


@dataclass(frozen=True)
class KeyState:
    """One fairness key as a claim sees it: its finish tag, weight and waiting tasks."""

    key: str
    vtime: float
    weight: float
    waiting: int
    polls_next: bool = True
    """Whose turn comes first in the key's next claim: its polls' (true) or its creates'."""


@dataclass(frozen=True)
class Allocation:
    """What a claim hands out: slots per key, each key's first start tag, the new clock,
    and the budget units each key's slots cost."""

    counts: dict[str, int]
    starts: dict[str, float]
    clock: float
    units: dict[str, float]


def nth_cost(costs: Sequence[float], n: int) -> float:
    """The cost of a key's ``n``-th task (from 0) when ``costs`` are those read so far:
    beyond them, the last one read (1 when none was)."""
    if n < len(costs):
        return costs[n]
    return costs[-1] if costs else 1.0


def allocate(
    clock: float,
    keys: Sequence[KeyState],
    slots: int,
    costs: Mapping[str, Sequence[float]] | None = None,
) -> Allocation:
    """Hand ``slots`` out between ``keys`` by start-time fair queuing.

    Each key starts at ``max(vtime, clock)``; each slot goes to the key whose next start
    tag is smallest (ties by key), which then moves on by the slot's task's
    ``cost/weight`` (``costs[key]``: its waiting tasks' costs in claim order; 1 each
    when not given). A key gets no more slots than it has tasks waiting. The new clock is
    the last slot's start tag.
    """
    costs = costs or {}
    starts = {k.key: max(k.vtime, clock) for k in keys if k.waiting > 0 and k.weight > 0}
    heap = [(starts[k.key], k.key) for k in keys if k.key in starts]
    heapq.heapify(heap)
    left = {k.key: k.waiting for k in keys}
    weight = {k.key: k.weight for k in keys if k.key in starts}
    counts: dict[str, int] = defaultdict(int)
    units: dict[str, float] = defaultdict(float)
    new_clock = clock
    while slots > 0 and heap:
        tag, key = heapq.heappop(heap)
        cost = nth_cost(costs.get(key, ()), counts[key])
        counts[key] += 1
        units[key] += cost
        new_clock = max(new_clock, tag)
        slots -= 1
        left[key] -= 1
        if left[key] > 0:
            heapq.heappush(heap, (tag + cost / weight[key], key))
    return Allocation(dict(counts), {k: starts[k] for k in counts}, new_clock, dict(units))


def within_key_order() -> list[Any]:
    """How the ready stream of one key is ordered: priority, trees first, due time, id."""
    # As ix_tasks_fair_order has it, so a key's tasks are read in order and the read stops
    # at its share: (parent_id IS NULL) is false for a child, which sorts first.
    return [
        tasks.c.priority.desc(),
        tasks.c.parent_id.is_(None),
        tasks.c.next_attempt_at,
        tasks.c.id,
    ]


def poll_order() -> list[Any]:
    """How the poll stream of one key is ordered: due time, then id (ix_tasks_due_polls)."""
    return [tasks.c.next_attempt_at, tasks.c.id]


def is_poll(phase: str | Phase) -> bool:
    """Whether a task in ``phase`` goes in its key's poll stream (a poll or a lookup)."""
    return str(phase) in POLL_PHASES


def in_poll_stream() -> Any:
    """A key's polls and lookups, with the literal predicate of ``ix_tasks_due_polls``."""
    return in_phases(POLL_PHASES)


def in_ready_stream() -> Any:
    """A key's other active work: ``ready`` (a create), with the literal predicate of
    ``ix_tasks_fair_order``."""
    return in_phases([Phase.READY.value])


T = TypeVar("T")


def merge_turns(polls: Iterable[T], ready: Iterable[T], polls_first: bool = True) -> list[T]:
    """The two streams of a key in turns, from ``polls_first`` (a poll's turn first, else
    a ready task's): p0 r0 p1 r1 ... (or r0 p0 r1 p1 ...); once one stream runs out, the
    rest of the other."""
    first, second = (polls, ready) if polls_first else (ready, polls)
    merged: list[T] = []
    first_iter, second_iter = iter(first), iter(second)
    for item in first_iter:
        merged.append(item)
        nxt = next(second_iter, None)
        if nxt is None:
            merged.extend(first_iter)
            return merged
        merged.append(nxt)
    merged.extend(second_iter)
    return merged


def take_turns(
    read_polls: Callable[[int, Sequence[T]], list[T]],
    read_ready: Callable[[int, Sequence[T]], list[T]],
    limit: int,
    polls_first: bool = True,
) -> list[T]:
    """The first ``limit`` of a key's tasks in turns from ``polls_first``, read with no
    task read but not taken.

    ``read_polls(n, got)``: up to ``n`` due polls after those in ``got``, in poll order;
    ``read_ready(n, got)``: likewise of the due ready tasks in within-key order. A locked
    read (``FOR UPDATE SKIP LOCKED``) locks only what the claim takes: the half of the
    stream whose turn is first, the other half of the other stream, and more of the first
    only when the other ran short (at most three reads; two when both have their half).
    """
    if limit <= 0:
        return []
    read_first, read_second = (read_polls, read_ready) if polls_first else (read_ready, read_polls)
    half = (limit + 1) // 2  # the first turn is the first stream's
    first = read_first(half, [])
    if len(first) < half:
        second = read_second(limit - len(first), [])
    else:
        second = read_second(limit - half, [])
        if len(second) < limit - half:
            first = first + read_first(limit - half - len(second), first)
    polls, ready = (first, second) if polls_first else (second, first)
    return merge_turns(polls, ready, polls_first)


def next_turn(polls: int, ready: int, polls_first: bool) -> bool:
    """Whose turn comes first after a claim took ``polls`` polls and ``ready`` ready tasks
    of a key in turns from ``polls_first`` (true: a poll's): the stream behind, or, when
    both took as many, the one that went first. After an alternation the next step of it;
    after one stream ran out, that stream (it has the next turn when it has work)."""
    return polls < ready or (polls == ready and polls_first)


def turn_place(index: int, poll: bool, others: int, polls_first: bool = True) -> int:
    """The place a fair claim gives a key's task at ``index`` in its own stream when the
    other stream has ``others`` due and the turns start from ``polls_first``: a task of
    the stream that goes first at i goes after i of its own and min(i, others) of the
    other, one of the other stream at j after j of its own and min(j + 1, others)."""
    return index + min(index + (0 if poll == polls_first else 1), others)


def _least(conn: Connection, *values: Any) -> Any:
    return (func.least if conn.dialect.name == "postgresql" else func.min)(*values)


_KEYS_ALONG = """
    WITH RECURSIVE keys(fk) AS (
        SELECT min(fairness_key) FROM tasks WHERE provider = :provider AND {phases}
        UNION ALL
        SELECT (
            SELECT min(fairness_key) FROM tasks
            WHERE provider = :provider AND {phases} AND fairness_key > keys.fk
        )
        FROM keys WHERE keys.fk IS NOT NULL
    )
    SELECT fk FROM keys WHERE fk IS NOT NULL
"""


def waiting_keys(conn: Connection, provider: str) -> list[str]:
    """The fairness keys with work left for ``provider``, in key order.

    A loose index scan over each stream's index (``ix_tasks_fair_order``, then
    ``ix_tasks_due_polls``): one index seek per key, however many tasks each key has
    (``SELECT DISTINCT`` would read every active task).
    """
    keys: set[str] = set()
    for phases in (READY_PHASE_SQL, POLL_PHASE_SQL):
        found = conn.execute(text(_KEYS_ALONG.format(phases=phases)), {"provider": provider})
        keys.update(found.scalars())
    return sorted(keys)


class Candidate(NamedTuple):
    """A due task a claim may take, with what it costs the provider's budget."""

    id: int
    cost: float


def candidates(
    conn: Connection,
    due: Due,
    provider: str,
    slots: int,
    weights: Mapping[str, float],
    per_slot: int,
    charge: Charge = unit_charge,
    keys: Sequence[str] | None = None,
    due_params: Mapping[str, Any] | None = None,
) -> dict[str, list[Candidate]]:
    """Per fairness key, due tasks in turns (polls and creates): enough for a claim of
    ``slots``, ``per_slot`` candidates for each slot a key may get, each with its
    ``charge``. ``due`` is built once with parameters (a stable object: its reads are
    built once per number of keys, :func:`_union_of_streams`) given as ``due_params``.

    Only the keys the fair allocation would serve are read, each up to its share: the cost
    of a claim grows with its size, not with the backlog or the number of keys. Tags are
    read without locks (the claim reads them again in its transaction). Each key is
    assumed to have plenty due until a read comes back short; the slots of keys with less
    are then handed out again, and a key given more than was read is read again, further,
    until the plan holds (each round ends a key or doubles a read). So what is found
    covers the claim: every key given slots has a read of ``per_slot`` per slot, or all
    it has due.
    """
    if keys is None:
        keys = waiting_keys(conn, provider)
    if not keys:
        return {}
    clock, states = read_state(conn, provider, dict.fromkeys(keys, slots), weights)
    polls_first = {s.key: s.polls_next for s in states}
    found: dict[str, list[Candidate]] = {}
    asked: dict[str, int] = {}
    room = dict.fromkeys(keys, slots)  # a key read in full keeps only what it has
    for _ in range(CANDIDATE_ROUNDS):
        costs = {key: [c.cost for c in read] for key, read in found.items()}
        plan = allocate(clock, [replace(s, waiting=room[s.key]) for s in states], slots, costs)
        wanted = {
            key: max(n * per_slot, 2 * asked.get(key, 0))
            for key, n in plan.counts.items()
            if room[key] == slots and n * per_slot > asked.get(key, 0)
        }
        if not wanted:
            break
        read = _read_keys(conn, due, provider, wanted, charge, polls_first, due_params or {})
        for key, count in wanted.items():
            found[key] = read.get(key, [])
            asked[key] = count
            if len(found[key]) < count:
                room[key] = len(found[key])
    return {key: ids for key, ids in found.items() if ids}


def has_due(conn: Connection, due: Due, provider: str, key: str) -> bool:
    """Whether fairness key ``key`` of ``provider`` has a task ``due``: a seek in each
    stream's index, the polls' first."""
    return any(
        conn.execute(read.limit(1)).first() is not None
        for read in (
            stream(select(tasks.c.id), due, provider, key, poll=True),
            stream(select(tasks.c.id), due, provider, key, poll=False),
        )
    )


def stream(query: Any, due: Due, provider: Any, key: Any, *, poll: bool) -> Any:
    """``query`` over one stream of a key's ``due`` tasks, in its order (add the limit): the
    polls along ``ix_tasks_due_polls``, the ready tasks along ``ix_tasks_fair_order``."""
    return query.where(
        tasks.c.provider == provider,
        tasks.c.fairness_key == key,
        due(poll),
        in_poll_stream() if poll else in_ready_stream(),
    ).order_by(*(poll_order() if poll else within_key_order()))


def _read_keys(
    conn: Connection,
    due: Due,
    provider: str,
    wanted: Mapping[str, int],
    charge: Charge,
    polls_first: Mapping[str, bool],
    due_params: Mapping[str, Any],
) -> dict[str, list[Candidate]]:
    """Up to ``wanted[key]`` due tasks of each key, in turns from its stored turn
    (``polls_first``): each stream read up to its count (one ordered, limited read along
    its index), then merged."""
    rows: list[Any] = []
    for chunk in chunks(sorted(wanted), KEYS_PER_READ):
        params = {**due_params, "read_provider": provider}
        for n, key in enumerate(chunk):
            params[f"read_key_{n}"] = key
            params[f"read_limit_{n}"] = wanted[key]
        rows.extend(conn.execute(_union_of_streams(due, len(chunk)), params))
    # A union keeps no order: sort each key's streams again as their reads did.
    polls: dict[str, list[Any]] = defaultdict(list)
    ready: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        (polls if is_poll(row.phase) else ready)[row.fairness_key].append(row)
    found: dict[str, list[Candidate]] = {}
    for key in sorted(set(polls) | set(ready)):
        key_polls = sorted(polls[key], key=lambda r: (r.next_attempt_at, r.id))
        key_ready = sorted(
            ready[key], key=lambda r: (-r.priority, bool(r.is_root), r.next_attempt_at, r.id)
        )
        found[key] = [
            Candidate(row.id, charge(provider, row.kind, operation_of(Phase(row.phase))))
            for row in merge_turns(key_polls, key_ready, polls_first.get(key, True))[: wanted[key]]
        ]
    return found


_STREAM_COLUMNS = (
    tasks.c.id,
    tasks.c.fairness_key,
    tasks.c.priority,
    tasks.c.parent_id.is_(None).label("is_root"),
    tasks.c.next_attempt_at,
    tasks.c.kind,
    tasks.c.phase,
)


@functools.lru_cache(maxsize=2 * KEYS_PER_READ)
def _union_of_streams(due: Due, keys: int) -> Any:
    """The read of :func:`_read_keys` for ``keys`` keys: both streams of each, up to its
    count, in one union; the provider, each key and its count are parameters
    (``read_provider``, ``read_key_<n>``, ``read_limit_<n>``). Built once per number of
    keys: the subqueries of a union built per claim left their columns' reference cycles to
    the collector, 60-75 objects per task with three keys waiting (docs/ratelimit.md,
    "The collector")."""
    provider = bindparam("read_provider", type_=tasks.c.provider.type)
    parts = [
        stream(
            select(*_STREAM_COLUMNS),
            due,
            provider,
            bindparam(f"read_key_{n}", type_=tasks.c.fairness_key.type),
            poll=poll,
        )
        .limit(bindparam(f"read_limit_{n}", type_=Integer()))
        .subquery()
        for n in range(keys)
        for poll in (True, False)
    ]
    return union_all(*(select(*part.c) for part in parts))


def read_state(
    conn: Connection,
    provider: str,
    waiting: Mapping[str, int],
    weights: Mapping[str, float],
) -> tuple[float, list[KeyState]]:
    """The provider's clock and the stored tag and turn of each waiting key (0 and a
    poll's turn for one never seen).

    Read without locks: concurrent claimers may both start from the same tags, and
    :func:`record` then adds each one's slots to whatever the row holds by then (and
    stores the turn of whichever commits last).
    """
    stored: dict[str, float] = {}
    turns: dict[str, bool] = {}
    for chunk in chunks([CLOCK_KEY, *sorted(waiting)]):
        for key, vtime, polls_next in conn.execute(
            select(fair_shares.c.fairness_key, fair_shares.c.vtime, fair_shares.c.polls_next).where(
                fair_shares.c.provider == provider, is_in(fair_shares.c.fairness_key, "keys")
            ),
            {"keys": chunk},
        ):
            stored[key] = float(vtime)
            turns[key] = bool(polls_next)
    clock = stored.pop(CLOCK_KEY, 0.0)
    return clock, [
        KeyState(
            key,
            stored.get(key, 0.0),
            weights.get(key, DEFAULT_WEIGHT),
            count,
            turns.get(key, True),
        )
        for key, count in sorted(waiting.items())
    ]


def stored_turn(conn: Connection, provider: str, key: str) -> bool:
    """Whose turn comes first in fairness key ``key``'s next claim (true: a poll's; so for
    a key never seen)."""
    found = conn.execute(
        select(fair_shares.c.polls_next).where(
            fair_shares.c.provider == provider, fair_shares.c.fairness_key == key
        )
    ).scalar()
    return True if found is None else bool(found)


def _minute(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


def record(
    conn: Connection,
    provider: str,
    clock: float,
    new_clock: float,
    taken: Mapping[str, float],
    weights: Mapping[str, float],
    now: datetime,
    turns: Mapping[str, bool] | None = None,
) -> None:
    """Add a claim's units (``taken``: each key's tasks' costs) to each key's tag, store
    each key's next turn (``turns``: :func:`next_turn`; a poll's when not given) and move
    the provider's clock, in one upsert.

    Each key's tag becomes ``max(its tag now, clock) + taken/weight``, where ``clock`` is
    the clock the claim read: the addition applies to whatever a concurrent claim left
    (nothing is lost), and the clock only moves forward here. The turn is the last
    committer's (approximate alternation under concurrent claims, as the tags are). Rows
    go in key order with the clock row last, the order refunds take them too.
    """
    turns = turns or {}
    minute = _minute(now)
    rows: list[dict[str, Any]] = []
    for key, units in sorted(taken.items()):
        weight = weights.get(key, DEFAULT_WEIGHT)
        rows.append(
            {
                "provider": provider,
                "fairness_key": key,
                "vtime": max(clock, 0.0) + units / weight,
                "weight": weight,
                "minute": minute,
                "granted": units,
                "prev_granted": 0,
                "polls_next": turns.get(key, True),
            }
        )
    rows.append(
        {
            "provider": provider,
            "fairness_key": CLOCK_KEY,
            "vtime": new_clock,
            "weight": DEFAULT_WEIGHT,
            "minute": None,
            "granted": 0,
            "prev_granted": 0,
            "polls_next": True,
        }
    )
    conn.execute(
        _record_upsert(conn.dialect.name).values(rows),
        {"r_clock": clock, "r_minute": minute, "r_previous": minute - timedelta(minutes=1)},
    )


@functools.cache
def _record_upsert(dialect: str) -> Any:
    """:func:`record`'s upsert for ``dialect``, without its rows (``.values(rows)``): built
    once, for its ``excluded`` alias is a reference cycle that a statement built per claim
    left to the collector (docs/ratelimit.md, "The collector"). Its parameters: the clock
    the claim read (``r_clock``), this minute and the one before (``r_minute``,
    ``r_previous``)."""
    statement = (postgresql if dialect == "postgresql" else sqlite).insert(fair_shares)
    greatest = func.greatest if dialect == "postgresql" else func.max
    new = statement.excluded
    clock = bindparam("r_clock", type_=fair_shares.c.vtime.type)
    minute = bindparam("r_minute", type_=fair_shares.c.minute.type)
    is_clock = fair_shares.c.fairness_key == CLOCK_KEY
    # The grant counters roll over to this minute when the row's minute is older. A claim
    # whose clock read is older than the row's minute (it committed after a later claim)
    # counts in the row's minute: the counters never go back a minute, which would drop
    # both minutes' grants.
    same = fair_shares.c.minute >= minute
    previous = fair_shares.c.minute == bindparam("r_previous", type_=fair_shares.c.minute.type)
    return statement.on_conflict_do_update(
        index_elements=[fair_shares.c.provider, fair_shares.c.fairness_key],
        set_={
            "vtime": case(
                (is_clock, greatest(fair_shares.c.vtime, new.vtime)),
                else_=greatest(fair_shares.c.vtime, clock) + new.granted / new.weight,
            ),
            "weight": new.weight,
            "minute": case((same, fair_shares.c.minute), else_=new.minute),
            "granted": case((same, fair_shares.c.granted + new.granted), else_=new.granted),
            "prev_granted": case(
                (same, fair_shares.c.prev_granted),
                (previous, fair_shares.c.granted),
                else_=0,
            ),
            "polls_next": new.polls_next,
        },
    )


def refund(conn: Connection, given_back: Sequence[tuple[str, str, float]]) -> None:
    """Give back the virtual time of tasks claimed but released unsent.

    ``given_back`` holds one (provider, fairness key, cost) per released task. Each key's
    tag moves back by ``cost/weight`` per task, and the provider's clock back to the lowest
    tag refunded, so that the next claim does not lift the key over its own credit: the
    refunded slots count as never handed out.
    """
    counts: dict[tuple[str, str], float] = defaultdict(float)
    for provider, key, cost in given_back:
        counts[(provider, key)] += cost
    for provider in sorted({p for p, _ in counts}):
        lowest: float | None = None
        for (owner, key), count in sorted(counts.items()):
            if owner != provider:
                continue
            refunded = conn.execute(
                update(fair_shares)
                .where(fair_shares.c.provider == provider, fair_shares.c.fairness_key == key)
                .values(
                    vtime=fair_shares.c.vtime - count / fair_shares.c.weight,
                    granted=case(
                        (fair_shares.c.granted > count, fair_shares.c.granted - count), else_=0
                    ),
                )
                .returning(fair_shares.c.vtime)
            ).scalar()
            if refunded is not None:
                lowest = float(refunded) if lowest is None else min(lowest, float(refunded))
        if lowest is None:
            continue
        conn.execute(
            update(fair_shares)
            .where(fair_shares.c.provider == provider, fair_shares.c.fairness_key == CLOCK_KEY)
            .values(vtime=_least(conn, fair_shares.c.vtime, lowest))
        )


@dataclass(frozen=True)
class Share:
    """One fairness key's standing on a provider's budget."""

    key: str
    weight: float
    waiting: int
    granted_last_minute: float
    """Budget units (tasks, each counted at its cost) claimed for it over the last 60 s."""
    share: float
    """Its part of everything claimed for the provider over the last minute (0..1)."""


def shares(
    engine: Engine,
    provider: str,
    weights: Mapping[str, float],
    due: Any,
    now: datetime,
) -> list[Share]:
    """Every fairness key of ``provider`` with work waiting or grants in the last minute.

    Grants over the last minute are estimated from two one-minute counters: the previous
    minute's weighted by how much of it lies within the last 60 s, plus this minute's.
    """
    minute = _minute(now)
    elapsed = (now - minute).total_seconds() / 60.0
    with engine.connect() as conn:
        waiting = {
            key: int(count)
            for key, count in conn.execute(
                select(tasks.c.fairness_key, func.count())
                .where(tasks.c.provider == provider, due)
                .group_by(tasks.c.fairness_key)
            )
        }
        granted: dict[str, float] = {}
        stored_weights: dict[str, float] = {}
        for key, row_minute, count, previous, weight in conn.execute(
            select(
                fair_shares.c.fairness_key,
                fair_shares.c.minute,
                fair_shares.c.granted,
                fair_shares.c.prev_granted,
                fair_shares.c.weight,
            ).where(
                fair_shares.c.provider == provider,
                fair_shares.c.fairness_key != CLOCK_KEY,
                fair_shares.c.minute >= minute - timedelta(minutes=1),
            )
        ):
            stored_weights[key] = float(weight)
            if row_minute == minute:
                granted[key] = count + previous * (1.0 - elapsed)
            elif row_minute == minute - timedelta(minutes=1):
                granted[key] = count * (1.0 - elapsed)
    total = sum(granted.values())
    keys = sorted(set(waiting) | {k for k, v in granted.items() if v > 0})
    return [
        Share(
            key=key,
            weight=weights.get(key, DEFAULT_WEIGHT),
            waiting=waiting.get(key, 0),
            granted_last_minute=round(granted.get(key, 0.0), 1),
            share=round(granted.get(key, 0.0) / total, 4) if total else 0.0,
        )
        for key in keys
    ]
