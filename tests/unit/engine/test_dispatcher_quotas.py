"""Quotas and costs through the dispatcher, on a fake clock: a quota is spent in bursts at
the short rate, a spent one holds work until its reset without an attempt, a restart does not
hand the window out again, and costs keep units within the limit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice import submissions
from sluice.clock import FakeClock
from sluice.domain import Operation, Submission, TaskStatus, WorkUnit
from sluice.engine.dispatcher import Dispatcher
from sluice.engine.quotas import QuotaBook, quota_states, window_of
from sluice.providers.registry import build_http_client, load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.runtime import build_catalog
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.queue import WorkQueue
from sluice.store.quotas import QuotaStore
from sluice.store.repository import TaskRepository
from tests.unit.engine.test_dispatcher import FakeDsp, InlineExecutor

START = datetime(2026, 12, 2, 9, 0, 0, tzinfo=UTC)


def make_world(tmp_path: Path, provider: dict[str, Any]) -> dict[str, Any]:
    clock = FakeClock(START)
    dsp = FakeDsp(clock)
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'd.db'}",
        default_provider="acme",
        providers={
            "acme": {
                "base_url": "http://acme.test",
                "kinds": {
                    "campaign": {"submit": "POST /campaigns", "external_id_field": "id"},
                    "audience": {"submit": "POST /audiences", "external_id_field": "id"},
                },
                **provider,
            }
        },
    )
    providers = load_providers(settings, clock=clock)
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    limiter = MemoryLimiter(clock=clock, margin=0.0, cold_start=False)
    client = build_http_client(providers["acme"], transport=httpx.MockTransport(dsp))
    queue = WorkQueue(engine)
    runtime = {"providers": providers, "client": client, "limiter": limiter}
    world: dict[str, Any] = {
        "clock": clock,
        "dsp": dsp,
        "queue": queue,
        "engine": engine,
        "providers": providers,
        "limiter": limiter,
        "client": client,
        "repo": TaskRepository(engine, clock=clock),
        "catalog": build_catalog(providers, "acme"),
        "runtime": runtime,
    }
    restart(world)
    return world


def restart(world: dict[str, Any]) -> None:
    """A new dispatcher and quota book on the same database (a restarted process)."""
    world["executor"] = InlineExecutor(world["queue"], world["runtime"], world["clock"])
    world["book"] = QuotaBook(QuotaStore(world["engine"]), world["clock"])
    world["dispatcher"] = Dispatcher(
        world["queue"],
        world["providers"],
        world["limiter"],
        world["executor"],
        worker_id="t",
        clock=world["clock"],
        idle_s=0.05,
        quotas=world["book"],
    )


@pytest.fixture
def quota_world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    world = make_world(tmp_path, {"rate_limit": "10/s", "quota": "25/min"})
    yield world
    world["client"].close()
    world["engine"].dispose()


def run(world: dict[str, Any], seconds: float) -> None:
    clock: FakeClock = world["clock"]
    end = clock.time() + seconds
    while clock.time() < end:
        wait = world["dispatcher"].step()
        clock.advance(min(max(wait, 0.01), 0.5))


def create(world: dict[str, Any], kind: str, count: int) -> list[int]:
    items = [Submission(kind=kind, payload={"name": f"x{i}"}) for i in range(count)]
    return submissions.create_tasks(world["repo"], world["catalog"], items)


def test_a_quota_goes_out_in_a_burst_then_waits_for_its_reset(
    quota_world: dict[str, Any],
) -> None:
    """25/min at 10/s: 25 creates in ~2.5 s, then nothing until the minute turns; the rest
    wait Ready with no attempt counted, and go after the reset."""
    world = quota_world
    ids = create(world, "campaign", 40)
    run(world, 20)
    sent = [t for t, _ in world["dsp"].arrivals]
    assert len(sent) == 25
    assert sent[-1] - sent[0] < 2.6  # a burst at the short rate, not paced over the minute
    waiting = [world["repo"].get(i) for i in ids[25:]]
    assert {t.status for t in waiting} == {TaskStatus.NOT_STARTED}
    assert {t.attempts for t in waiting} == {0}
    (state,) = quota_states(
        QuotaStore(world["engine"]), world["providers"]["acme"], world["clock"].now()
    )
    assert (state.used, state.remaining, state.waiting) == (25, 0, True)
    assert state.resets_at == START + timedelta(minutes=1)
    restart(world)  # a restart must not hand the minute out again
    run(world, 30)
    assert len(world["dsp"].arrivals) == 25
    run(world, 15)  # past 09:01:00
    assert len(world["dsp"].arrivals) == 40
    assert (
        min(t for t, _ in world["dsp"].arrivals[25:]) >= (START + timedelta(minutes=1)).timestamp()
    )


def test_costs_keep_units_within_the_limit(tmp_path: Path) -> None:
    """Audiences cost 5 writes of 20/s: in no sliding second do more than 20 units arrive,
    and the write budget is used at its paced rate (20 - 4 units a second)."""
    world = make_world(
        tmp_path,
        {"limits": [{"rate": "20/s", "scope": "write", "cost": {"audience.submit": 5}}]},
    )
    try:
        create(world, "audience", 30)
        create(world, "campaign", 30)
        run(world, 20)
        arrivals = [(t, 5 if path == "POST /audiences" else 1) for t, path in world["dsp"].arrivals]
        assert len(arrivals) == 60
        for start, _ in arrivals:
            assert sum(u for t, u in arrivals if start <= t < start + 1.0) <= 20
        span = arrivals[-1][0] - arrivals[0][0]
        assert 180 / span >= 15  # 180 units; paced at 16 units/s (burst room of 4)
    finally:
        world["client"].close()
        world["engine"].dispose()


def test_a_paced_quota_is_a_ceiling_on_the_rate_in_force(tmp_path: Path) -> None:
    """quota_pace = true: 25/min with 10 used and 30 s to the reset spreads the other 15 over
    those 30 s (0.5/s), below the configured 10/s; without it the quota gives no ceiling."""
    from sluice.engine.quotas import QuotaPace
    from sluice.engine.rates import RatesInForce
    from sluice.ratelimit.rate import LimitSpec, parse_rate

    world = make_world(tmp_path, {"rate_limit": "10/s", "quota": "25/min", "quota_pace": True})
    try:
        store = QuotaStore(world["engine"])
        clock: FakeClock = world["clock"]
        clock.advance(30)
        (spec,) = world["providers"]["acme"].quotas_for(Operation.SUBMIT, None)
        store.reserve(window_of(spec.key, spec.quota, clock.now()), 10, clock.now())
        rates = RatesInForce([QuotaPace(store, world["providers"], clock)], clock=clock)
        in_force = rates.in_force(LimitSpec("acme", parse_rate("10/s")))
        assert in_force.source == "quota"
        assert in_force.rate.limit / in_force.rate.window_s == pytest.approx(0.5)
    finally:
        world["client"].close()
        world["engine"].dispose()
    (tmp_path / "b").mkdir()
    unpaced = make_world(tmp_path / "b", {"rate_limit": "10/s", "quota": "25/min"})
    try:
        rates = RatesInForce([QuotaPace(QuotaStore(unpaced["engine"]), unpaced["providers"])])
        assert rates.in_force(LimitSpec("acme", parse_rate("10/s"))).source == "configured"
    finally:
        unpaced["client"].close()
        unpaced["engine"].dispose()


def test_an_expired_unit_gets_back_only_the_units_it_took(quota_world: dict[str, Any]) -> None:
    """The units a granted unit took are kept by the unit's id, and a sent unit leaves its
    entry behind. Once that unit is freed, CPython may give its id to a new unit: if that
    one's grant expires, it must not give the sent unit's units back to be sent again."""
    world = quota_world
    dispatcher: Dispatcher = world["dispatcher"]
    book: QuotaBook = world["book"]
    (spec,) = world["providers"]["acme"].quotas_for(Operation.SUBMIT, {}, ["campaign"])
    sent = WorkUnit("acme", Operation.SUBMIT, ())
    taken = book.take([spec], block=1).taken
    dispatcher._remember_taken(sent, taken)
    entry = dispatcher._quota_taken.pop(id(sent))
    del sent  # sent and freed
    expired = WorkUnit("acme", Operation.SUBMIT, ())
    dispatcher._quota_taken[id(expired)] = entry  # its id is the sent unit's old one
    world["executor"].unsent.append(expired)
    dispatcher._requeue_unsent()
    assert book._allowances[spec.key].units == 0  # the sent unit's unit stays spent


@pytest.mark.parametrize(("quota", "held"), [("25/min", 0), ("100000/d", 99)])
def test_a_process_holds_at_most_a_thousandth_of_a_quota(
    tmp_path: Path, quota: str, held: int
) -> None:
    """A process that dies keeps what it reserved counted: with a small quota it reserves
    one request's units at a time, so the database counts exactly what was sent and a
    crash wastes nothing; a large one is reserved in blocks of at most 1/1,000 of it."""
    world = make_world(tmp_path, {"rate_limit": "50/s", "quota": quota})
    try:
        create(world, "campaign", 7)
        run(world, 2)
        assert len(world["dsp"].arrivals) == 7
        (state,) = quota_states(
            QuotaStore(world["engine"]), world["providers"]["acme"], world["clock"].now()
        )
        # Not flushed (the process "died" here): what the database counts beyond the 7
        # sent is what a crash would waste.
        assert state.used - 7 <= held
    finally:
        world["client"].close()
        world["engine"].dispose()


def test_a_task_settled_without_a_request_takes_no_quota(quota_world: dict[str, Any]) -> None:
    """A task to look up whose kind has no lookup (a worker was lost mid-submission) ends
    "outcome unknown" with no request: it takes nothing from the quota. Found by SIGKILLing
    `sluice up` under a 50/2min quota: the 25 tasks it had claimed were recovered, and the
    8 of them still waiting at a reset took 8 of that window's 50 units (the provider saw
    42, every unit counted, 145 tasks waiting)."""
    from sqlalchemy import update

    from sluice.store.rows import tasks

    world = quota_world
    ids = create(world, "campaign", 30)
    lost = ids[:10]
    with world["engine"].begin() as conn:  # as the reconciler leaves a lost worker's tasks
        conn.execute(
            update(tasks).where(tasks.c.id.in_(lost)).values(phase="uncertain", maybe_created=True)
        )
    run(world, 20)
    assert {world["repo"].get(i).status for i in lost} == {TaskStatus.ERROR}
    assert len(world["dsp"].arrivals) == 20  # every other task: 20 of the 25 units
    (state,) = quota_states(
        QuotaStore(world["engine"]), world["providers"]["acme"], world["clock"].now()
    )
    assert state.used == 20


def test_units_given_back_wake_the_work_of_their_own_quota_only(tmp_path: Path) -> None:
    """A quota kept per advertiser: every advertiser's window ends at the same reset. Worker
    A holds the rest of advertiser X's minute; worker B finds X spent and gives X's task
    back until the reset, beside advertiser Y's tasks, which wait there for Y's own. A's
    round ends and X's units go back: they must wake X's task. They used to wake the
    oldest tasks of the provider waiting for that reset, Y's (whose quota is still spent,
    so they went straight back), and X's task waited for the reset with its units there
    (the features soak: an advertiser's spent hourly quota woken every pump round)."""
    world = make_world(
        tmp_path,
        {
            "rate_limit": "10/s",
            "limits": [{"quota": "3/min", "scope": "write", "per": "advertiser_id"}],
        },
    )
    try:
        items = [
            Submission(kind="campaign", payload={"name": f"y{i}", "advertiser_id": "Y"})
            for i in range(6)
        ] + [Submission(kind="campaign", payload={"name": "x", "advertiser_id": "X"})]
        ids = submissions.create_tasks(world["repo"], world["catalog"], items)
        provider = world["providers"]["acme"]
        [x_spec] = provider.quotas_for(Operation.SUBMIT, {"advertiser_id": "X"}, ["campaign"])
        book_a = QuotaBook(QuotaStore(world["engine"]), world["clock"])
        Dispatcher(  # worker A: its book serves a dispatcher of the same providers
            world["queue"],
            world["providers"],
            world["limiter"],
            world["executor"],
            worker_id="a",
            clock=world["clock"],
            quotas=book_a,
        )
        assert book_a.take([x_spec], block=3).ok  # A sends one of X and holds two

        run(world, 5)  # worker B: Y sends 3 and waits; X is spent in the database
        assert len(world["dsp"].arrivals) == 3
        waiting = [world["repo"].get(i) for i in ids[3:]]
        assert {t.status for t in waiting} == {TaskStatus.NOT_STARTED}

        book_a.flush()  # the end of A's pump round: X's two units go back
        run(world, 5)
        assert len(world["dsp"].arrivals) == 4
        assert world["repo"].get(ids[-1]).status is not TaskStatus.NOT_STARTED
        assert {world["repo"].get(i).status for i in ids[3:6]} == {TaskStatus.NOT_STARTED}
    finally:
        world["client"].close()
        world["engine"].dispose()
