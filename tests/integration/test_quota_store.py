"""Quota use in the database, on SQLite and PostgreSQL: never over the limit, whatever the
interleaving of workers; kept across restarts (a new store on the same database)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, update

from sluice.clock import FakeClock
from sluice.engine.quotas import SPENT_RECHECK_S, QuotaBook, quota_state, window_of
from sluice.ratelimit.quota import QuotaSpec, parse_quota
from sluice.store import db
from sluice.store.audit import AuditLog
from sluice.store.queue import WorkQueue
from sluice.store.quotas import QuotaStore, Window, usage
from tests.integration.conftest import while_uncommitted

START = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    limit=st.integers(1, 40),
    rolling=st.booleans(),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["reserve", "late", "give_back", "restart", "wait"]),
            st.integers(1, 15),
        ),
        max_size=30,
    ),
)
@example(limit=5, rolling=True, steps=[("reserve", 5), ("late", 3)])  # a bucket behind
def test_reservations_never_exceed_the_quota_and_survive_restarts(
    engine: Engine, limit: int, rolling: bool, steps: list[tuple[str, int]]
) -> None:
    """Against a model: each window hands out at most `limit` units however reservations,
    give-backs and restarts interleave, and hands out all of them when asked."""
    key = f"acme:{uuid.uuid4().hex}"  # examples share the database: a key of its own
    quota = parse_quota(f"{limit}/10min", "rolling" if rolling else "UTC")
    window_len = timedelta(minutes=10)
    store = QuotaStore(engine)
    now = START
    handed: list[tuple[datetime, int]] = []  # every reservation not given back: (when, units)
    held: list[int] = []  # indices into handed that a worker still holds
    for action, n in steps:
        # "late": a worker whose clock is n seconds behind (or that read it before waiting
        # for the key's lock) reserves after others reserved at the latest time.
        at = now - timedelta(seconds=n) if action == "late" else now
        window = window_of(key, quota, at)
        if action in ("reserve", "late"):
            got = store.reserve(window, n, at)
            if rolling:
                # Conservative: never more than what the last window leaves.
                recent = sum(u for when, u in handed if when > at - window_len)
                assert got <= max(0, limit - recent)
            else:
                spent = sum(u for when, u in handed if window.start <= when < window.end)
                assert got == min(n, limit - spent)
            if got:
                held.append(len(handed))
                handed.append((at, got))
        elif action == "give_back" and held:
            index = held.pop()
            when, units = handed[index]
            if window_of(key, quota, when).start == window.start:
                store.give_back(window.key, window.start, units, now)
                handed[index] = (when, 0)
        elif action == "restart":
            store = QuotaStore(engine)  # a new process: nothing but the database
        else:
            now += timedelta(seconds=n * 37)  # off the 10 s bucket grid
    # Brute force over every window that ends at a reservation.
    for end_at, _ in handed:
        if rolling:
            inside = sum(u for when, u in handed if end_at - window_len < when <= end_at)
        else:
            w = window_of(key, quota, end_at)
            inside = sum(u for when, u in handed if w.start <= when < w.end)
        assert inside <= limit


def race(store: QuotaStore, window: Window, got: list[int]) -> None:
    """Reserve blocks of 7 until the quota is spent (list.append is atomic)."""
    while taken := store.reserve(window, 7, START):
        got.append(taken)


@pytest.mark.postgres
def test_concurrent_workers_never_take_more_than_the_quota(postgres_url: str) -> None:
    """Eight threads on their own connections race for 500 units in blocks of 7: exactly
    500 are handed out, on a fixed and on a rolling quota."""
    engine = db.make_engine(postgres_url, pool_size=10)
    db.ensure_schema(engine)
    try:
        for reset in ("UTC", "rolling"):
            quota = parse_quota("500/d", reset)
            window = window_of(f"acme:{reset}", quota, START)
            store = QuotaStore(engine)
            got: list[int] = []
            threads = [threading.Thread(target=race, args=(store, window, got)) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sum(got) == 500
            assert store.used(window) == 500
    finally:
        engine.dispose()


def test_a_book_reserves_in_blocks_and_a_restart_does_not_hand_out_the_day_again(
    engine: Engine,
) -> None:
    """A book takes blocks from the database; a new book (restart) sees what was reserved,
    and flushing at shutdown gives the unspent part back."""
    clock = FakeClock(START)
    spec = QuotaSpec("acme:1d", parse_quota("30/d", "America/Los_Angeles"))
    store = QuotaStore(engine)
    book = QuotaBook(store, clock)
    for _ in range(12):
        assert book.take([spec], block=10).ok
    assert store.used(window_of(spec.key, spec.quota, START)) == 20
    restarted = QuotaBook(QuotaStore(engine), clock)  # the first one died: 8 units lost
    taken = [restarted.take([spec], block=10).ok for _ in range(12)]
    assert taken == [True] * 10 + [False] * 2
    refused = restarted.take([spec])
    assert refused.resets_at == datetime(2026, 12, 3, 8, 0, tzinfo=UTC)  # LA midnight
    book.flush()
    assert store.used(window_of(spec.key, spec.quota, START)) == 22
    state = quota_state(store, spec.key, spec.quota, START + timedelta(hours=1))
    assert (state.used, state.remaining, state.waiting) == (22, 8, False)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rolling=st.booleans(),
    uses=st.lists(
        st.tuples(st.sampled_from(["a1", "a2", "a3"]), st.integers(0, 25), st.integers(1, 9)),
        max_size=12,
    ),
)
def test_per_account_states_read_at_once_match_each_accounts_own_reading(
    engine: Engine, rolling: bool, uses: list[tuple[str, int, int]]
) -> None:
    """A per-account quota's states, read for every account in one query (as the console
    reads them), give each account the use its own key's reading gives, and the most used
    account's is what /metrics reads."""
    from sluice.engine.quotas import most_used, quota_states
    from sluice.providers.registry import load_providers
    from sluice.settings import Settings

    name = f"p{uuid.uuid4().hex[:10]}"  # examples share the database: keys of their own
    limit = {"per": "advertiser_id", "quota": "20/10min", "reset": "rolling" if rolling else "UTC"}
    table = {"preset": "sandbox-demo", "base_url": "http://127.0.0.1:9", "limits": [limit]}
    provider = load_providers(Settings(providers={name: table}, default_provider=name))[name]
    ((pattern, quota, _scope, _per),) = provider.quotas()
    store = QuotaStore(engine)
    for account, minute, units in sorted(uses, key=lambda use: use[1]):
        at = START + timedelta(minutes=minute)
        store.reserve(window_of(pattern.replace("*", account), quota, at), units, at)
    now = START + timedelta(minutes=25)

    states = quota_states(store, provider, now)

    assert [s.key for s in states] == sorted({s.key for s in states})
    # /metrics reads the most used account in one aggregate: the same as the states say.
    assert most_used(store, pattern, quota, now) == max((s.used for s in states), default=0)
    for state in states:
        alone = quota_state(store, state.key, quota, now)
        assert (state.used, state.remaining, state.waiting, state.resets_at) == (
            alone.used,
            alone.remaining,
            alone.waiting,
            alone.resets_at,
        )


@pytest.mark.parametrize("per", [False, True])
def test_a_spent_rolling_quota_resets_when_its_oldest_use_stops_counting(
    engine: Engine, per: bool
) -> None:
    """10/2min rolling, spent at 09:00:00.5: nothing comes back until the bucket
    [09:00:00, 09:00:02) leaves the window, at 09:02:02. The quota's state (the API, the
    console, `sluice status`, explain) said the end of the *current* bucket, 1/60 of the
    window ahead: found on a 15/2min rolling quota per advertiser, spent at 04:06:37, whose
    `resets_at` read 04:06:46 at 04:06:45 and 04:06:56 at 04:06:55 while the provider saw
    nothing more until 04:08:36."""
    from sluice.engine.quotas import quota_states
    from sluice.providers.registry import load_providers
    from sluice.settings import Settings

    name = f"p{uuid.uuid4().hex[:10]}"
    limit = {"quota": "10/2min", "reset": "rolling"} | ({"per": "advertiser_id"} if per else {})
    table = {"preset": "sandbox-demo", "base_url": "http://127.0.0.1:9", "limits": [limit]}
    provider = load_providers(Settings(providers={name: table}, default_provider=name))[name]
    ((pattern, quota, _scope, _per),) = provider.quotas()
    spec = QuotaSpec(pattern.replace("*", "adv-1"), quota)
    clock = FakeClock(START + timedelta(milliseconds=500))
    store = QuotaStore(engine)
    book = QuotaBook(store, clock)
    assert [book.take([spec]).ok for _ in range(10)] == [True] * 10
    frees = START + timedelta(minutes=2, seconds=2)
    for later in (30.0, 60.0, 89.5):  # seconds after the quota was spent
        clock.advance(later - (clock.now() - START).total_seconds() + 0.5)
        assert not book.take([spec]).ok
        (state,) = quota_states(store, provider, clock.now())
        assert (state.key, state.waiting, state.resets_at) == (spec.key, True, frees)
        assert quota_state(store, spec.key, quota, clock.now()).resets_at == frees
    clock.advance((frees - clock.now()).total_seconds() - 0.25)
    assert not book.take([spec]).ok  # one bucket early: still counted
    clock.advance(0.25)
    assert book.take([spec]).ok


@pytest.mark.postgres
def test_a_window_spent_while_the_next_one_begins_has_its_reset_audited(
    postgres_url: str,
) -> None:
    """A worker whose clock had not turned takes the last unit of a window, uncommitted,
    while another begins the next window: the audit reads the spent window after that
    commit. Before, it read 9 of 10 and the spent window's reset went unrecorded."""
    engine = db.make_engine(postgres_url)
    db.ensure_schema(engine)
    store = QuotaStore(engine)
    quota = parse_quota("10/min", "UTC")
    last_moment, next_minute = START + timedelta(seconds=59.999), START + timedelta(minutes=1)
    ending = window_of("acme:quota", quota, last_moment)
    assert store.reserve(ending, 9, START) == 9

    def take_the_last_unit(conn: Connection) -> None:  # reserve's UPDATE, left uncommitted
        taken = conn.execute(
            update(usage)
            .where(usage.c.key == ending.key, usage.c.window_start == ending.start)
            .values(used=usage.c.used + 1)
        )
        assert taken.rowcount == 1

    try:
        got = while_uncommitted(
            engine,
            take_the_last_unit,
            lambda: store.reserve(window_of("acme:quota", quota, next_minute), 1, next_minute),
        )
        assert got == [1]
        records = AuditLog(engine).list(action="quota.reset").items
        assert [(r.target, r.detail["spent_used"]) for r in records] == [("key:acme:quota", 10)]
    finally:
        engine.dispose()


def test_the_reset_of_a_spent_window_is_audited_once(engine: Engine) -> None:
    """The first reservation after a spent window writes one ``quota.reset`` record (as
    ``system:limiter``) however many workers reserve; a window not spent, or a rolling
    quota's next bucket, resets without one."""
    run = uuid.uuid4().hex[:8]
    spent_key, unspent_key, rolling_key = (f"{name}-{run}:quota" for name in ("a", "b", "c"))
    fixed = parse_quota("5/h", "UTC")
    rolling = parse_quota("5/h", "rolling")
    store = QuotaStore(engine)
    for key, quota in ((spent_key, fixed), (unspent_key, fixed), (rolling_key, rolling)):
        wanted = 5 if key != unspent_key else 4
        assert store.reserve(window_of(key, quota, START), wanted, START) == wanted
    later = START + timedelta(hours=1, minutes=5)
    for _ in range(3):  # three workers, or one worker three times: one record
        for key, quota in ((spent_key, fixed), (unspent_key, fixed), (rolling_key, rolling)):
            QuotaStore(engine).reserve(window_of(key, quota, later), 1, later)

    records = AuditLog(engine).list(action="quota.reset").items
    mine = [r for r in records if run in r.target]
    assert [(r.target, r.actor, r.tenant) for r in mine] == [
        (f"key:{spent_key}", "system:limiter", None)
    ]
    assert mine[0].detail == {
        "window_start": "2026-12-02T10:00:00+00:00",
        "window_end": "2026-12-02T11:00:00+00:00",
        "limit": 5,
        "spent_window_start": "2026-12-02T09:00:00+00:00",
        "spent_used": 5,
    }
    assert mine[0].at == later


def test_a_rolling_allowance_left_at_a_bucket_turn_goes_back(engine: Engine) -> None:
    """One unit a second under 100/min rolling, reserved 10 at a time: all 60 go. Units
    left in a bucket when the next began used to stay counted, never sent (10 of 60 went)."""
    clock = FakeClock(START)
    spec = QuotaSpec(f"acme:{uuid.uuid4().hex[:8]}", parse_quota("100/min", "rolling"))
    store = QuotaStore(engine)
    book = QuotaBook(store, clock)
    sent = 0
    for _ in range(60):
        sent += book.take([spec], block=10).ok
        clock.advance(1.0)
    assert sent == 60
    book.flush()
    assert store.used(window_of(spec.key, spec.quota, clock.now())) == 60


@pytest.mark.parametrize("reset", ["UTC", "rolling"])
def test_units_given_back_after_a_flush_reach_the_database(engine: Engine, reset: str) -> None:
    """A pump round ends with a flush; a grant that expires after it gives its units back
    to the database (they used to be dropped, counted and never sent)."""
    clock = FakeClock(START)
    spec = QuotaSpec(f"acme:{uuid.uuid4().hex[:8]}", parse_quota("5/min", reset))
    store = QuotaStore(engine)
    book = QuotaBook(store, clock)
    verdict = book.take([spec], block=5)
    assert verdict.ok
    book.flush()
    window = window_of(spec.key, spec.quota, clock.now())
    assert store.used(window) == 1
    book.give(verdict.taken)
    assert store.used(window) == 0


def test_units_fewer_than_the_cost_go_back_for_other_workers(engine: Engine) -> None:
    """Two workers, 10/min, a request costing 3, blocks of 8: three requests fit. Each
    worker used to keep the 2 units it could not use, counted: two requests went."""
    clock = FakeClock(START)
    spec = QuotaSpec(f"acme:{uuid.uuid4().hex[:8]}", parse_quota("10/min", "UTC"), cost=3)
    store = QuotaStore(engine)
    books = [QuotaBook(store, clock), QuotaBook(store, clock)]
    sent = 0
    for _ in range(4):
        for book in books:
            sent += book.take([spec], block=8).ok
        clock.advance(SPENT_RECHECK_S)
    assert sent == 3


def test_units_a_worker_gives_back_wake_the_work_waiting_for_the_reset(engine: Engine) -> None:
    """Worker A holds a block of the day; worker B finds the database spent and gives its
    task back until the reset; A's round ends and its block goes back. The task waited
    for midnight with the units there: 4 processes, 150/d, 400 campaigns sent 146 and
    left 254 tasks due the next day while the quota said 4 remaining."""
    clock, provider, spec, queue, (worker_a, worker_b), _ = _two_workers(engine, 1)
    [task] = queue.claim_due(clock.now(), 10, "b", 60.0, providers=[provider])

    assert worker_a.take([spec], block=10).ok  # A sends 1 and holds 9
    refused = worker_b.take([spec])
    assert not refused.ok
    queue.release([task], next_attempt_at=refused.resets_at)  # as the dispatcher does
    assert queue.claim_due(clock.now(), 10, "b", 60.0, providers=[provider]) == []
    worker_a.flush()  # the end of A's pump round

    # Due once B's memory of the quota as spent has lapsed: a claim before that would
    # have sent it back to wait for the reset again.
    assert queue.claim_due(clock.now(), 10, "b", 60.0, providers=[provider]) == []
    clock.advance(SPENT_RECHECK_S)
    [again] = queue.claim_due(clock.now(), 10, "b", 60.0, providers=[provider])
    assert again.id == task.id
    assert worker_b.take([spec]).ok


def test_units_given_back_wake_at_most_as_many_tasks(engine: Engine) -> None:
    """Two units back wake two of the ten tasks waiting for the reset, the oldest: a
    backlog waiting for midnight is not woken whole (and claimed in vain) by a few units."""
    clock, provider, spec, queue, (worker_a, worker_b), ids = _two_workers(engine, 10)
    claimed = queue.claim_due(clock.now(), 10, "b", 60.0, providers=[provider])
    assert sorted(t.id for t in claimed) == ids

    assert worker_a.take([spec], block=10).ok  # A holds the whole day
    for _ in range(7):  # and sends 7 of it
        assert worker_a.take([spec]).ok
    refused = worker_b.take([spec])
    assert not refused.ok
    queue.release(claimed, next_attempt_at=refused.resets_at)
    worker_a.flush()  # 2 unsent units go back (A sent 8 of its 10)

    clock.advance(SPENT_RECHECK_S)
    woken = queue.claim_due(clock.now(), 10, "b", 60.0, providers=[provider])
    assert sorted(t.id for t in woken) == ids[:2]


def _two_workers(
    engine: Engine, waiting: int
) -> tuple[FakeClock, str, QuotaSpec, WorkQueue, tuple[QuotaBook, QuotaBook], list[int]]:
    """A provider with a 10/d quota, two workers' quota books on one store, its queue,
    and the ids of ``waiting`` new campaigns."""
    from sluice.domain import Submission
    from sluice.store.repository import TaskRepository

    clock = FakeClock(START)
    provider = f"p{uuid.uuid4().hex[:8]}"
    spec = QuotaSpec(f"{provider}:1d", parse_quota("10/d", "UTC"))
    store = QuotaStore(engine)
    repo = TaskRepository(engine, clock)
    ids = [
        repo.create(Submission(provider=provider, kind="campaign"))[0].id for _ in range(waiting)
    ]
    books = (QuotaBook(store, clock), QuotaBook(store, clock))
    return clock, provider, spec, WorkQueue(engine), books, ids
