"""The dispatcher's claims and clocks: expired grants, stale claims during pauses, a wall
clock stepped back, pauses restored from the database. Fake clock, in-memory limiter,
SQLite, a fake DSP behind httpx.MockTransport."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice import errors, submissions
from sluice.clock import FakeClock
from sluice.domain import Submission as DueSubmission
from sluice.domain import TaskStatus
from sluice.engine.dispatcher import Dispatcher
from sluice.providers.base import Provider
from sluice.providers.registry import build_http_client, load_providers
from sluice.ratelimit.memory import MemoryLimiter
from sluice.runtime import build_catalog
from sluice.settings import load_settings
from sluice.store import db
from sluice.store.pauses import PauseStore
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository
from sluice.submissions import Submission

from .test_dispatcher import InlineExecutor

ACME = {
    "base_url": "http://acme.test",
    "rate_limit": "5/s",
    "poll": {
        "request": "GET /statuses?ids={ids}",
        "interval": "1s",
        "status_map": {"done": "Completed"},
    },
    "kinds": {
        "campaign": {
            "submit": "POST /campaigns",
            "external_id_field": "id",
            "client_ref_field": "client_ref",
            "lookup": "GET /campaigns?client_ref={client_ref}",
        },
    },
}


class LookupDsp:
    """Creates campaigns, finds them by client reference, completes them on first poll."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.arrivals: list[tuple[float, str]] = []
        self.objects: dict[str, dict[str, Any]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.arrivals.append((self.clock.monotonic(), f"{request.method} {request.url.path}"))
        if request.method == "POST":
            body = json.loads(request.content)
            object_id = f"o{len(self.objects) + 1}"
            self.objects[object_id] = body
            return httpx.Response(201, json={"id": object_id})
        if request.url.path == "/campaigns":
            ref = request.url.params["client_ref"]
            found = [{"id": i, **o} for i, o in self.objects.items() if o["client_ref"] == ref]
            return httpx.Response(200, json=found)
        ids = request.url.params["ids"].split(",")
        return httpx.Response(
            200, json=[{"id": i, "status": "done"} for i in ids if i in self.objects]
        )

    def creates_per_ref(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for obj in self.objects.values():
            counts[obj["client_ref"]] = counts.get(obj["client_ref"], 0) + 1
        return counts


@dataclass
class World:
    clock: FakeClock
    dsp: LookupDsp
    queue: WorkQueue
    repo: TaskRepository
    providers: dict[str, Provider]
    limiter: MemoryLimiter
    pauses: PauseStore
    runtime: dict[str, Any]

    def dispatcher(self, worker: str, **options: Any) -> tuple[Dispatcher, InlineExecutor]:
        executor = InlineExecutor(self.queue, self.runtime, self.clock)
        dispatcher = Dispatcher(
            self.queue,
            self.providers,
            self.limiter,
            executor,
            worker_id=worker,
            clock=self.clock,
            idle_s=0.05,
            pauses=self.pauses,
            **options,
        )
        return dispatcher, executor

    def create(self, count: int) -> list[int]:
        items = [Submission(kind="campaign", payload={"name": f"c{i}"}) for i in range(count)]
        return submissions.create_tasks(self.repo, build_catalog(self.providers, "acme"), items)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with make_world(tmp_path, ACME) as made:
        yield made


@contextmanager
def make_world(tmp_path: Path, table: dict[str, Any]) -> Iterator[World]:
    clock = FakeClock()
    dsp = LookupDsp(clock)
    settings = load_settings(
        database_url=f"sqlite:///{tmp_path / 'w.db'}",
        default_provider="acme",
        providers={"acme": table},
    )
    providers = load_providers(settings, clock=clock)
    engine = db.make_engine(settings.database_url)
    db.ensure_schema(engine)
    limiter = MemoryLimiter(clock=clock, margin=0.015, catch_up_s=0.002, cold_start=False)
    client = build_http_client(providers["acme"], transport=httpx.MockTransport(dsp))
    queue = WorkQueue(engine)
    runtime = {"providers": providers, "client": client, "limiter": limiter}
    try:
        yield World(
            clock,
            dsp,
            queue,
            TaskRepository(engine, clock=clock),
            providers,
            limiter,
            PauseStore(engine),
            runtime,
        )
    finally:
        client.close()
        engine.dispose()


def step_for(clock: FakeClock, seconds: float, *dispatchers: Dispatcher) -> None:
    """Step each dispatcher in turn, advancing the fake clock by at most 50 ms at a time."""
    end = clock.monotonic() + seconds
    while clock.monotonic() < end:
        wait = min(d.step() for d in dispatchers)
        clock.advance(min(max(wait, 0.001), 0.05))


def test_an_expired_grant_sends_nothing_and_the_unit_goes_later(world: World) -> None:
    """A sender that reaches the send check after its grant's window sends nothing; the
    unit waits at the head of its lane, is sent once later, and no attempt is counted."""
    dispatcher, executor = world.dispatcher("a")
    (task_id,) = world.create(1)
    executor.late_s = [0.5]  # the first sender stalls for half a second
    step_for(world.clock, 3, dispatcher)
    task = world.repo.get(task_id)
    assert task.status is TaskStatus.COMPLETED
    assert task.attempts == 0
    posts = [t for t, path in world.dsp.arrivals if path == "POST /campaigns"]
    assert len(posts) == 1
    assert dispatcher.stats.expired == 1
    assert dispatcher.stats.stale == 0  # the unit came back with its claim's time
    assert len(executor.granted) == 3  # the expired create, the create, the poll


def test_a_long_pause_never_sends_a_claim_another_worker_recovered(world: World) -> None:
    """While other workers' 429s keep the provider paused for longer than the claim lease,
    this worker's buffered creates are given back before the lease runs out: when the
    pauses stop, every task is created exactly once, although a second worker recovers
    whatever leases expired and looks those tasks up first."""
    options = {"lease_s": 10.0, "reconcile_every_s": 1.0}
    first, _ = world.dispatcher("first", **options)
    second, _ = world.dispatcher("second", **options)
    ids = world.create(3)
    # 14 s of pauses of 1.5 s each, as 429s seen by other workers would cause.
    end = world.clock.monotonic() + 14
    while world.clock.monotonic() < end:
        world.limiter.pause("acme", 1.5)
        step_for(world.clock, 1.0, first)
    assert not world.dsp.arrivals
    step_for(world.clock, 10, second, first)
    assert {world.repo.get(i).status for i in ids} == {TaskStatus.COMPLETED}
    assert set(world.dsp.creates_per_ref().values()) == {1}, world.dsp.objects
    assert first.stats.stale >= 3


def test_a_paused_lane_claims_nothing_more(world: World) -> None:
    """A lane waiting out a long pause does not claim (and give back) tasks again and again
    meanwhile; it claims once more only as the pause ends."""
    dispatcher, _ = world.dispatcher("a")
    world.create(30)
    world.limiter.pause("acme", 30)
    step_for(world.clock, 29, dispatcher)
    assert dispatcher.stats.claimed == 5  # the one claim that met the pause
    step_for(world.clock, 2, dispatcher)
    assert dispatcher.stats.claimed > 5
    assert world.dsp.arrivals


def test_a_wall_clock_stepped_back_does_not_stall_dispatch(world: World) -> None:
    """After the host's clock steps back an hour, the work already claimed still goes out at
    the limit's pace instead of waiting for the wall clock to catch up."""
    dispatcher, _ = world.dispatcher("a")
    world.create(5)
    dispatcher.step()
    world.clock.step_wall(-3600)
    step_for(world.clock, 1.2, dispatcher)
    posts = [t for t, path in world.dsp.arrivals if path == "POST /campaigns"]
    assert len(posts) == 5
    assert dispatcher.step() < 1.0


def test_pauses_kept_in_the_database_survive_a_lost_limiter(world: World) -> None:
    """A pause the provider asked for is copied back into a limiter that lost its state (a
    flushed Redis, a restarted process): nothing is sent into it."""
    world.pauses.record("acme", world.clock.now() + timedelta(seconds=30))
    world.runtime["limiter"] = world.limiter = MemoryLimiter(
        clock=world.clock, margin=0.015, catch_up_s=0.002
    )
    dispatcher, _ = world.dispatcher("a")
    world.create(2)
    step_for(world.clock, 29, dispatcher)
    assert not world.dsp.arrivals
    until = world.limiter.paused_until("acme")
    assert until is not None
    step_for(world.clock, 3, dispatcher)
    assert len([p for _, p in world.dsp.arrivals if p == "POST /campaigns"]) == 2


def test_a_pause_resumed_elsewhere_is_cleared_here_and_the_work_goes_at_once(
    world: World,
) -> None:
    """An operator pauses the provider from another process (only the database is shared),
    then resumes it: this dispatcher holds while the pause runs, then clears the pause from
    its own limiter at the next sync and sends the tasks it had given back at once."""
    from sluice.controls import Controls
    from sluice.domain import LOCAL_ACTOR
    from sluice.engine.rates import RatesInForce

    elsewhere = Controls(
        world.queue.engine,
        world.providers,
        MemoryLimiter(clock=world.clock, cold_start=False),
        RatesInForce(),
        clock=world.clock,
    )
    dispatcher, _ = world.dispatcher("a")
    world.create(3)
    elsewhere.pause("acme", reason="vendor maintenance", until=None, actor=LOCAL_ACTOR)

    step_for(world.clock, 5, dispatcher)

    assert world.dsp.arrivals == []
    assert world.limiter.paused_until("acme") is not None

    elsewhere.resume("acme", actor=LOCAL_ACTOR)
    step_for(world.clock, 1.0, dispatcher)

    assert world.limiter.paused_until("acme") is None
    posts = [path for _, path in world.dsp.arrivals if path == "POST /campaigns"]
    assert len(posts) == 3


def test_a_saturated_fair_lane_claims_by_its_own_grants_not_the_whole_rate(
    world: World,
) -> None:
    """Refused on the rate, a fair lane claims about a lookahead of its own grant rate
    (every worker claiming the whole rate kept a late key's share back); not saturated,
    or in arrival order, it claims a lookahead at the provider's rate."""
    dispatcher, _ = world.dispatcher("a", lookahead_s=4.0)
    lane = dispatcher.lanes["acme"]
    provider = world.providers["acme"]
    assert dispatcher._claim_size(provider, lane) == 20  # 5/s x 4 s
    now = world.clock.monotonic()
    lane.rate_refused_at = now
    lane.granted_at.extend([now - 0.5, now - 0.1])  # 1/s over the last 2 s
    assert dispatcher._claim_size(provider, lane) == 6  # 1/s x 4 s x 1.5
    world.clock.advance(3.0)  # no refusal for longer than the window: not saturated
    assert dispatcher._claim_size(provider, lane) == 20
    arrival, _ = world.dispatcher("b", lookahead_s=4.0, fair_share=False)
    arrival.lanes["acme"].rate_refused_at = world.clock.monotonic()
    assert arrival._claim_size(provider, arrival.lanes["acme"]) == 20


def test_top_ups_on_the_claimer_thread_send_every_task_once(world: World) -> None:
    """With claims off the dispatcher's thread, top-ups land at later steps and a lane that
    ran dry waits for the one under way: every task is created once, in several claims."""
    dispatcher, _ = world.dispatcher("a", background_claims=True, lookahead_s=1.0)
    ids = world.create(20)
    step_for(world.clock, 8, dispatcher)
    assert {world.repo.get(i).status for i in ids} == {TaskStatus.COMPLETED}
    assert set(world.dsp.creates_per_ref().values()) == {1}
    assert len(world.dsp.creates_per_ref()) == 20
    assert dispatcher.stats.claimed >= 20  # creates and polls, in more than one claim
    dispatcher.release_all()


def test_a_top_up_under_way_at_shutdown_is_given_back(world: World) -> None:
    """A top-up still running when the dispatcher stops is waited for and its tasks given
    back unsent, so no claim outlives the worker until its lease runs out."""
    import threading

    dispatcher, _ = world.dispatcher("a", background_claims=True, lookahead_s=1.0)
    ids = world.create(12)
    real_claim = world.queue.claim_fair
    started, finish = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:  # the top-up, not the first claim of the empty lane
            started.set()
            finish.wait(5)
        return real_claim(*args, **kwargs)

    world.queue.claim_fair = slow_claim  # type: ignore[method-assign]
    while not started.is_set():
        world.clock.advance(max(dispatcher.step(), 0.001))
    threading.Timer(0.2, finish.set).start()
    dispatcher.release_all()
    assert dispatcher.lanes["acme"].claiming is None
    with world.queue.engine.connect() as conn:
        from sqlalchemy import select

        from sluice.store.rows import tasks

        held = conn.execute(
            select(tasks.c.id).where(tasks.c.id.in_(ids), tasks.c.claimed_by.is_not(None))
        ).all()
    assert held == []


def test_a_failed_top_up_fails_the_next_step_and_dispatch_goes_on(world: World) -> None:
    """A top-up whose SQL fails raises on the dispatcher's thread at the next step (as a
    claim made there would, so the loop's outage handling applies); later steps claim
    again and every task is still created once."""
    dispatcher, _ = world.dispatcher("a", background_claims=True, lookahead_s=1.0)
    ids = world.create(12)
    real_claim = world.queue.claim_fair
    calls: list[int] = []

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real_claim(*args, **kwargs)

    world.queue.claim_fair = failing_once  # type: ignore[method-assign]
    failures = 0
    end = world.clock.monotonic() + 10
    while world.clock.monotonic() < end:
        try:
            wait = dispatcher.step()
        except RuntimeError:
            failures += 1
            dispatcher.release_all_quietly()
            wait = 0.05
        world.clock.advance(min(max(wait, 0.001), 0.05))
    assert failures == 1
    assert {world.repo.get(i).status for i in ids} == {TaskStatus.COMPLETED}
    assert set(world.dsp.creates_per_ref().values()) == {1}


def test_a_failing_step_backs_off_even_when_woken(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While every step fails (Redis down), the loop waits its backoff between steps even
    when woken meanwhile, and stops at once when asked. (With Redis stopped under
    'sluice up', wakes cut the backoff short: 63 failed steps in about 10 s, each logged
    with its traceback, 6,000 log lines.) A backoff of a minute: woken every 5 ms for half
    a second, the loop steps once, however slow the host; asked to stop, it does not wait
    the minute out."""
    monkeypatch.setattr("sluice.engine.dispatcher.STEP_FAILURE_BACKOFF_S", 60.0)
    dispatcher, _ = world.dispatcher("a")
    steps: list[float] = []

    def failing_step() -> float:
        steps.append(time.monotonic())
        raise RuntimeError("limiter unreachable")

    monkeypatch.setattr(dispatcher, "step", failing_step)
    stop = threading.Event()
    loop = threading.Thread(target=dispatcher.run, args=(stop,), daemon=True)
    loop.start()
    deadline = time.monotonic() + 30
    while not steps:
        assert time.monotonic() < deadline, "the loop never stepped"
        time.sleep(0.005)
    woken_until = time.monotonic() + 0.5
    while time.monotonic() < woken_until:
        dispatcher.wake()
        time.sleep(0.005)
    stopped_at = time.monotonic()
    stop.set()
    dispatcher.wake()
    loop.join(timeout=30)

    assert not loop.is_alive()
    assert time.monotonic() - stopped_at < 30  # not the minute's backoff
    assert len(steps) == 1, len(steps)


def test_a_failing_step_logs_its_traceback_once_then_one_line_each(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage's first failed step logs its traceback; the next ones one line each, with
    the count and the error on one line; the first step that works again says so."""
    monkeypatch.setattr("sluice.engine.dispatcher.STEP_FAILURE_BACKOFF_S", 0.001)
    dispatcher, _ = world.dispatcher("a")
    calls: list[int] = []

    def step() -> float:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("limiter\n  unreachable")
        return 0.001

    monkeypatch.setattr(dispatcher, "step", step)
    with caplog.at_level(logging.INFO, logger="sluice.dispatcher"):
        dispatcher.run(threading.Event(), until=lambda: len(calls) >= 5)

    failed = [r for r in caplog.records if r.getMessage() == "dispatcher.step_failed"]
    assert [r.exc_info is not None for r in failed] == [True, False, False]
    assert [r.__dict__.get("failures") for r in failed[1:]] == [2, 3]
    assert failed[2].__dict__["error"] == "RuntimeError: limiter unreachable"
    recovered = [r for r in caplog.records if r.getMessage() == "dispatcher.step_recovered"]
    assert [r.__dict__["failures"] for r in recovered] == [3]


def test_an_outage_across_pump_rounds_logs_one_traceback(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker runs the dispatcher in rounds (one run per pump). An outage that spans
    rounds is one streak: its first failed step logs the traceback, the next ones one line
    each, whichever round they fall in. (With PostgreSQL stopped for 20 s under three
    'sluice worker' processes, every round's first failure logged its traceback: 22
    tracebacks of ~60 lines per worker log.)"""
    monkeypatch.setattr("sluice.engine.dispatcher.STEP_FAILURE_BACKOFF_S", 0.001)
    dispatcher, _ = world.dispatcher("a")
    calls: list[int] = []

    def step() -> float:
        calls.append(1)
        if len(calls) <= 4:
            raise RuntimeError("database unavailable")
        return 0.001

    monkeypatch.setattr(dispatcher, "step", step)
    with caplog.at_level(logging.INFO, logger="sluice.dispatcher"):
        for rounds in (2, 4, 6):  # three pumps: two failures, two more, then recovery
            dispatcher.run(threading.Event(), until=lambda n=rounds: len(calls) >= n)

    failed = [r for r in caplog.records if r.getMessage() == "dispatcher.step_failed"]
    assert [r.exc_info is not None for r in failed] == [True, False, False, False]
    assert [r.__dict__.get("failures") for r in failed[1:]] == [2, 3, 4]
    recovered = [r for r in caplog.records if r.getMessage() == "dispatcher.step_recovered"]
    assert [r.__dict__["failures"] for r in recovered] == [4]


def test_a_round_that_cannot_give_its_claims_back_ends_without_raising(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A pump round that ends while the database is down cannot give back the claims it
    holds: its tasks wait for their lease (docs/deployment.md), and the failure joins the
    outage's streak. Before, it raised out of the pump: Celery logged 'Task sluice.pump
    raised unexpected: StoreError' with ~150 lines of traceback, and the pump skipped
    waiting for its outcomes to be written."""
    world.create(20)
    dispatcher, _ = world.dispatcher("a")
    dispatcher.step()
    assert any(lane.units for lane in dispatcher.lanes.values()), "nothing left claimed"

    def database_down(*_: Any, **__: Any) -> None:
        raise errors.StoreUnavailable("connection refused", "postgresql://db/sluice")

    monkeypatch.setattr(world.queue, "release", database_down)
    with caplog.at_level(logging.INFO, logger="sluice.dispatcher"):
        dispatcher.run(threading.Event(), until=lambda: True)

    failed = [r for r in caplog.records if r.getMessage() == "dispatcher.step_failed"]
    assert [r.exc_info is not None for r in failed] == [True]
    assert not any(lane.units for lane in dispatcher.lanes.values())


def test_fair_shares_go_by_budget_units_through_the_dispatcher(tmp_path: Path) -> None:
    """Audiences cost 5 of the limit's units, campaigns 1: with both tenants backlogged,
    the dispatcher's claims give each the same units of the limit, so the light tenant
    gets about five creates for each of the heavy one's."""
    table = {
        **ACME,
        "rate_limit": "20/s",
        "cost": {"audience.submit": 5},
        "kinds": {**ACME["kinds"], "audience": {**ACME["kinds"]["campaign"]}},
    }
    with make_world(tmp_path, table) as world:
        catalog = build_catalog(world.providers, "acme")
        for tenant, kind in (("heavy", "audience"), ("light", "campaign")):
            items = [
                Submission(kind=kind, payload={"name": f"{tenant}{i}"}, tenant=tenant)
                for i in range(300)
            ]
            submissions.create_tasks(world.repo, catalog, items)
        dispatcher, _ = world.dispatcher("a")

        step_for(world.clock, 20, dispatcher)

    heavy = sum(1 for o in world.dsp.objects.values() if o["name"].startswith("heavy"))
    light = sum(1 for o in world.dsp.objects.values() if o["name"].startswith("light"))
    assert heavy > 0
    assert 4.0 <= light / heavy <= 6.0, (heavy, light)


class ClockAhead(FakeClock):
    """``clock``'s time, its wall clock ``seconds`` ahead (another host's)."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock, self.ahead = clock, timedelta(seconds=seconds)

    def now(self) -> datetime:
        return self.clock.now() + self.ahead

    def time(self) -> float:
        return self.clock.time() + self.ahead.total_seconds()

    def monotonic(self) -> float:
        return self.clock.monotonic()


def test_a_host_whose_clock_runs_ahead_does_not_end_a_running_pause(world: World) -> None:
    """A 429 paused the provider for 4 s. A worker on a host 3 s ahead starts 1.2 s later
    and tidies the pauses table: it used to delete the pause (ended, on its clock), and the
    other workers' next sync took the missing row for an operator's resume and lifted it."""
    world.create(2)
    world.limiter.pause("acme", 4.0)
    world.pauses.record("acme", world.clock.now() + timedelta(seconds=4), signal="rate_limited")
    here, _ = world.dispatcher("a")
    step_for(world.clock, 1.2, here)
    ahead = Dispatcher(
        world.queue,
        world.providers,
        world.limiter,
        InlineExecutor(world.queue, world.runtime, world.clock),
        worker_id="b",
        clock=ClockAhead(world.clock, 3.0),
        idle_s=0.05,
        pauses=world.pauses,
    )
    step_for(world.clock, 2.0, ahead, here)
    assert world.dsp.arrivals == []  # 3.2 s in, the pause has 0.8 s to run
    assert world.limiter.paused_until("acme") is not None


def _track(world: World) -> int:
    """A tracked task (an object in flight at the provider, polled by id)."""
    task_id = world.repo.max_id() + 1
    task, _ = world.repo.create(DueSubmission(provider="acme", id=task_id))
    return task.id


def _requests(world: World) -> list[str]:
    return [what for _, what in world.dsp.arrivals]


def test_a_poll_a_fair_claim_takes_first_is_sent_before_the_creates_claimed_with_it(
    world: World,
) -> None:
    """Behind a backlog of creates, a poll that falls due is the first of the next fair
    claim (polls and creates take turns, a poll first); the dispatcher must send it in that
    place, not after every create of its claim (build_units puts each claim's poll batches
    after its submits and lookups)."""
    world.create(40)
    world.clock.advance(1)
    _track(world)
    world.clock.advance(1)
    dispatcher, _ = world.dispatcher("a", lookahead_s=1.0)

    step_for(world.clock, 2, dispatcher)

    sent = _requests(world)
    assert "GET /statuses" in sent, sent
    assert sent.index("GET /statuses") == 0, sent
    dispatcher.release_all()
