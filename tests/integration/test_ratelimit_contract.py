"""The limiter contract, run on MemoryLimiter and on RedisLimiter against a real Redis and
against a real 3-master Redis Cluster (``redis_cluster_url``, started from the same binary).

All get an injected FakeClock so the same assertions hold to the microsecond. The tests
at the end use the Redis server's own clock (``TIME``) with real threads and several
limiter instances, the way workers on separate hosts would.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.clock import FakeClock
from sluice.ratelimit import (
    Grant,
    InFlight,
    Limiter,
    LimitSpec,
    MemoryLimiter,
    Rate,
    RedisLimiter,
    gcra,
    holds,
    parse_rate,
    sendgate,
)
from sluice.ratelimit.base import clock_us, monotonic_us
from sluice.ratelimit.redis import BORN_TTL_MS, KEY_GRACE_MS, connect

# One Redis server, and a Redis Cluster: the two ways to run the shared limiter.
REDIS_KINDS = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("cluster", marks=pytest.mark.redis_cluster),
]


def server_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The URL of the real server (or cluster) of ``kind``."""
    url: str = request.getfixturevalue("redis_cluster_url" if kind == "cluster" else "redis_url")
    return url


TEN_PER_S = LimitSpec("dsp", parse_rate("10/s"))

# Builds a limiter on the given clock (None: the backend's own clock) sharing one state.
Factory = Callable[[FakeClock | None], Limiter]


@pytest.fixture(params=["memory", *REDIS_KINDS])
def make_limiter(request: pytest.FixtureRequest) -> Iterator[Factory]:
    """Limiters of one backend that share state, like workers sharing one deployment."""
    if request.param == "memory":
        shared: dict[str, MemoryLimiter] = {}

        def make_memory(clock: FakeClock | None) -> Limiter:
            # One in-process limiter is the whole shared state in embedded mode. Warm: the
            # cold start has tests of its own.
            return shared.setdefault("limiter", MemoryLimiter(clock=clock, cold_start=False))

        yield make_memory
        return

    redis_url = server_url(request, request.param)
    namespace = f"sluice:test:rl:{uuid.uuid4().hex[:12]}"
    made: list[RedisLimiter] = []

    def make_redis(clock: FakeClock | None) -> Limiter:
        limiter = RedisLimiter.from_url(
            redis_url, namespace=namespace, clock=clock, cold_start=False
        )
        made.append(limiter)
        return limiter

    yield make_redis
    for limiter in made:
        limiter.reset()
        limiter.close()
    leftovers = connect(redis_url)
    assert not list(leftovers.scan_iter(match=f"{namespace}:*"))
    leftovers.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(make_limiter: Factory, clock: FakeClock) -> Limiter:
    return make_limiter(clock)


def test_grants_are_spaced_by_interval_plus_margin(limiter: Limiter, clock: FakeClock) -> None:
    """At 10/s with a 1% margin the next grant comes exactly 101 ms after the last one."""
    first = limiter.acquire([TEN_PER_S])
    assert first.granted
    assert first.granted_at == clock.time()
    clock.advance(0.100999)
    assert not limiter.acquire([TEN_PER_S]).granted
    clock.advance(0.000001)
    assert limiter.acquire([TEN_PER_S]).granted


def test_refusal_says_exactly_how_long_to_wait(limiter: Limiter, clock: FakeClock) -> None:
    """A refused caller is told the remaining time to its slot, and that wait suffices."""
    limiter.acquire([TEN_PER_S])
    clock.advance(0.03)
    refused = limiter.acquire([TEN_PER_S])
    assert (refused.granted, refused.reason, refused.lease_id) == (False, "rate", None)
    assert refused.retry_after_s == pytest.approx(0.071, abs=1e-9)
    clock.advance(refused.retry_after_s)
    assert limiter.acquire([TEN_PER_S]).granted


def test_multi_limit_is_all_or_nothing(limiter: Limiter, clock: FakeClock) -> None:
    """A request refused by one of its limits consumes none of the others."""
    provider = LimitSpec("dsp", parse_rate("10/s"))
    advertiser = LimitSpec("dsp:adv=1", parse_rate("1/s"))
    assert limiter.acquire([provider, advertiser]).granted
    clock.advance(0.2)
    refused = limiter.acquire([provider, advertiser])
    assert (refused.granted, refused.reason) == (False, "rate")
    assert refused.retry_after_s == pytest.approx(0.81)
    assert limiter.acquire([provider, LimitSpec("dsp:adv=2", parse_rate("1/s"))]).granted


def test_pause_is_seen_by_sub_keys_only(limiter: Limiter, clock: FakeClock) -> None:
    """Pausing 'dsp' stops 'dsp' and 'dsp:write' until it ends, but not 'dsp2'."""
    limiter.pause("dsp", 30.0)
    for key in ["dsp", "dsp:write", "dsp:write:adv=1"]:
        grant = limiter.acquire([LimitSpec(key, parse_rate("10/s"))])
        assert (grant.granted, grant.reason, grant.retry_after_s) == (False, "paused", 30.0)
    assert limiter.acquire([LimitSpec("dsp2", parse_rate("10/s"))]).granted
    assert limiter.acquire([], in_flight=InFlight("dsp:write", 5, 10.0)).reason == "paused"
    clock.advance(30.0)
    assert limiter.acquire([TEN_PER_S]).granted


def test_pause_only_extends(limiter: Limiter, clock: FakeClock) -> None:
    """A shorter pause never cuts an existing one short; a longer one extends it."""
    start = clock.time()
    limiter.pause("dsp", 60.0)
    limiter.pause("dsp", 5.0)
    assert limiter.paused_until("dsp") == start + 60.0
    limiter.pause("dsp", 90.0)
    assert limiter.paused_until("dsp:write") == start + 90.0
    assert limiter.paused_until("dsp2") is None
    clock.advance(90.0)
    assert limiter.paused_until("dsp") is None


def test_unpause_ends_exactly_that_keys_pause(limiter: Limiter, clock: FakeClock) -> None:
    """An operator's resume clears the key's pause at once; its ancestors' pauses stay."""
    start = clock.time()
    limiter.pause("dsp:write", 600.0)
    limiter.pause("dsp", 30.0)
    limiter.unpause("dsp:write")
    assert limiter.paused_until("dsp:write") == start + 30.0
    limiter.unpause("dsp")
    assert limiter.paused_until("dsp:write") is None
    assert limiter.acquire([LimitSpec("dsp:write", parse_rate("10/s"))]).granted
    limiter.unpause("never-paused")


def test_in_flight_count_reads_live_leases(limiter: Limiter, clock: FakeClock) -> None:
    """The count of live leases moves with grants, releases and expiry, and takes nothing."""
    cap = InFlight("dsp:in_flight", max_in_flight=3, ttl_s=5.0)
    assert limiter.in_flight_count("dsp:in_flight") == 0
    first = limiter.acquire([], in_flight=cap)
    clock.advance(1.0)
    limiter.acquire([], in_flight=cap)
    assert limiter.in_flight_count("dsp:in_flight") == 2
    assert first.lease_id is not None
    limiter.release(first.lease_id, "dsp:in_flight")
    assert limiter.in_flight_count("dsp:in_flight") == 1
    clock.advance(5.0)
    assert limiter.in_flight_count("dsp:in_flight") == 0


def test_in_flight_caps_leases_until_released(limiter: Limiter, clock: FakeClock) -> None:
    """Two leases fill a cap of two; releasing one lets the next request in."""
    cap = InFlight("dsp", max_in_flight=2, ttl_s=60.0)
    spec = LimitSpec("dsp", parse_rate("1000/s"))
    leases = []
    for _ in range(2):
        grant = limiter.acquire([spec], in_flight=cap)
        assert grant.granted
        assert grant.lease_id is not None
        leases.append(grant.lease_id)
        clock.advance(1.0)
    refused = limiter.acquire([spec], in_flight=cap)
    assert (refused.granted, refused.reason) == (False, "in_flight")
    assert refused.retry_after_s == pytest.approx(58.0)
    limiter.release(leases[0], "dsp")
    assert limiter.acquire([spec], in_flight=cap).granted


def test_in_flight_refusal_consumes_no_rate(limiter: Limiter) -> None:
    """A request refused for in-flight leaves its rate slot for the next caller."""
    cap = InFlight("dsp", max_in_flight=1, ttl_s=60.0)
    assert limiter.acquire([], in_flight=cap).granted
    assert limiter.acquire([TEN_PER_S], in_flight=cap).reason == "in_flight"
    assert limiter.acquire([TEN_PER_S]).granted


def test_in_flight_leases_expire(limiter: Limiter, clock: FakeClock) -> None:
    """A lease never released lapses after its TTL, so a dead worker frees its slot."""
    cap = InFlight("dsp", max_in_flight=1, ttl_s=5.0)
    assert limiter.acquire([], in_flight=cap).granted
    clock.advance(4.999999)
    assert limiter.acquire([], in_flight=cap).reason == "in_flight"
    clock.advance(0.000001)
    assert limiter.acquire([], in_flight=cap).granted


def test_reset_forgets_everything(limiter: Limiter) -> None:
    """After reset a spent key, a pause and a full lease cap are all free again."""
    cap = InFlight("dsp", max_in_flight=1, ttl_s=60.0)
    assert limiter.acquire([TEN_PER_S], in_flight=cap).granted
    limiter.pause("dsp", 60.0)
    limiter.reset()
    assert limiter.paused_until("dsp") is None
    assert limiter.acquire([TEN_PER_S], in_flight=cap).granted


def test_two_instances_share_one_limit_and_pause(make_limiter: Factory, clock: FakeClock) -> None:
    """A grant or pause through one limiter instance holds back callers of another."""
    host_a, host_b = make_limiter(clock), make_limiter(clock)
    assert host_a.acquire([TEN_PER_S]).granted
    assert host_b.acquire([TEN_PER_S]).reason == "rate"
    clock.advance(1.0)
    host_b.pause("dsp", 10.0)
    assert host_a.acquire([TEN_PER_S]).reason == "paused"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    limit=st.integers(1, 5),
    window_us=st.integers(1, 2_000_000),
    schedule=st.lists(st.one_of(st.none(), st.integers(0, 1_000_000)), max_size=60),
)
def test_grants_never_exceed_limit_in_any_sliding_window(
    limiter: Limiter, clock: FakeClock, limit: int, window_us: int, schedule: list[int | None]
) -> None:
    """For random request times, at most `limit` grants fall in any window of window_s, and
    a refused caller asking again after exactly retry_after_s is granted."""
    limiter.reset()
    clock.advance(10.0)  # past every TAT an earlier example left behind
    spec = LimitSpec("dsp", Rate(limit, window_us / 1e6))
    granted_us: list[int] = []
    for gap_us in schedule:
        clock.advance((gap_us or 0) / 1e6)
        grant = limiter.acquire([spec])
        if not grant.granted and gap_us is None:
            clock.advance(grant.retry_after_s)
            grant = limiter.acquire([spec])
            assert grant.granted
        if grant.granted:
            assert grant.granted_at is not None
            granted_us.append(gcra.to_us(grant.granted_at))
            assert granted_us[-1] == clock_us(clock)
    for first, last in zip(granted_us, granted_us[limit:], strict=False):
        assert last - first >= window_us


@pytest.mark.parametrize("instances", [1, 2])
def test_hammering_threads_stay_spaced_on_the_real_clock(
    make_limiter: Factory, instances: int
) -> None:
    """Six threads asking for 200/s as fast as allowed get grants spaced by at least
    interval * (1 + margin) on the limiter's own clock (Redis TIME), across instances, and
    keep getting them: 60 grants (0.3 s of slots) within 10 s. A fixed 0.6 s run asking
    for 40 of its 119 slots failed on a loaded host, where one stall of 337 ms left 35."""
    rate = parse_rate("200/s")
    spec = LimitSpec("hammer", rate)
    limiters = [make_limiter(None) for _ in range(instances)]
    for limiter in limiters:
        # Connected and its script loaded before the clock starts: a cluster client's first
        # call finds the nodes and loads the script on each (0.6 s on a loaded host).
        limiter.acquire([LimitSpec("warm-up", rate)])
    granted_at: list[float] = []
    record = threading.Lock()
    wanted = 60
    deadline = time.monotonic() + 10.0

    def hammer(limiter: Limiter) -> None:
        while time.monotonic() < deadline and len(granted_at) < wanted:
            grant = limiter.acquire([spec])
            if grant.granted:
                assert grant.granted_at is not None
                with record:
                    granted_at.append(grant.granted_at)
            else:
                time.sleep(min(grant.retry_after_s, 0.002))

    threads = [threading.Thread(target=hammer, args=(limiters[n % instances],)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    times_us = sorted(gcra.to_us(at) for at in granted_at)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times_us)]
    assert min(gaps) >= gcra.spacing_us(rate, 0.01)
    assert len(times_us) >= wanted  # not starved either


@pytest.mark.parametrize("kind", REDIS_KINDS)
def test_separate_redis_clients_share_one_limit_on_server_time(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Two RedisLimiters on separate connections (two hosts) draw from one limit on Redis TIME."""
    redis_url = server_url(request, kind)
    namespace = f"sluice:test:rl:{uuid.uuid4().hex[:12]}"
    host_a = RedisLimiter(connect(redis_url), namespace=namespace, cold_start=False)
    host_b = RedisLimiter(connect(redis_url), namespace=namespace, cold_start=False)
    try:
        spec = LimitSpec("dsp", parse_rate("1/min"))
        first = host_a.acquire([spec])
        assert first.granted
        assert first.granted_at is not None
        assert abs(first.granted_at - time.time()) < 3600
        refused = host_b.acquire([spec])
        assert refused.reason == "rate"
        assert 59.0 < refused.retry_after_s <= 60.6
        host_b.pause("other", 5.0)
        until = host_a.paused_until("other:write")
        assert until is not None
        assert 0 < until - first.granted_at <= 6.0
    finally:
        host_a.reset()
        host_a.close()
        host_b.close()


@pytest.mark.parametrize("kind", REDIS_KINDS)
def test_redis_keys_expire_and_reset_stays_in_its_namespace(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """Every key the limiter writes has a TTL (its 'born' marker too), so idle keys vanish,
    and reset leaves other namespaces alone."""
    client = connect(server_url(request, kind))
    namespace = f"sluice:test:rl:{uuid.uuid4().hex[:12]}"
    neighbour = f"{namespace}x:tat:dsp"
    client.set(neighbour, "1", ex=60)
    limiter = RedisLimiter(client, namespace=namespace, cold_start=False)
    try:
        limiter.acquire([TEN_PER_S], in_flight=InFlight("dsp", 3, 30.0))
        limiter.pause("dsp", 5.0)
        limiter.hold("lease", "dsp:write#window", 2.0)
        keys = {key.decode() for key in client.scan_iter(match=f"{namespace}:*")}
        born = f"{namespace}:{{dsp}}:born"
        assert born in keys
        assert 0 < client.pttl(born) <= BORN_TTL_MS
        keys.remove(born)
        assert len(keys) == 4  # tat, inflight and pause of 'dsp', the hold's in-flight set
        for key in keys:
            assert 0 < client.pttl(key) <= 30_000 + KEY_GRACE_MS
        limiter.reset()
        assert not list(client.scan_iter(match=f"{namespace}:*"))
        assert client.exists(neighbour)
    finally:
        client.delete(neighbour)
        limiter.reset()
        client.close()


@pytest.mark.parametrize("backend", ["memory", *REDIS_KINDS])
def test_catch_up_keeps_the_schedule_of_a_late_caller(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """A caller up to catch_up_s late for its slot keeps the schedule; later than that, not."""
    clock = FakeClock()
    rate = [LimitSpec("dsp", Rate(50, 1.0))]  # 20 ms slots; 1% margin gives 10 ms slack
    if backend != "memory":
        namespace = f"sluice:test:{uuid.uuid4().hex}"
        limiter: Limiter = RedisLimiter(
            connect(server_url(request, backend)),
            namespace=namespace,
            clock=clock,
            catch_up_s=0.002,
            cold_start=False,
        )
        request.addfinalizer(limiter.reset)
    else:
        limiter = MemoryLimiter(clock=clock, catch_up_s=0.002, cold_start=False)
    assert limiter.acquire(rate).granted
    clock.advance(0.0202 + 0.0015)  # 1.5 ms late for the second slot
    assert limiter.acquire(rate).granted
    clock.advance(0.0202 - 0.0015)  # exactly the third slot: the lateness was not lost
    assert limiter.acquire(rate).granted
    clock.advance(0.0202 + 0.005)  # 5 ms late: only 2 ms are credited
    assert limiter.acquire(rate).granted
    clock.advance(0.0202 - 0.0025)
    refused = limiter.acquire(rate)
    assert not refused.granted
    assert refused.retry_after_s == pytest.approx(0.0005, abs=2e-6)


@pytest.fixture
def make_cold_limiter(request: pytest.FixtureRequest) -> Iterator[Callable[[FakeClock], Limiter]]:
    """A limiter of each backend that starts cold, as after a restart or a Redis flush."""
    if request.param == "memory":
        yield lambda clock: MemoryLimiter(clock=clock)
        return
    redis_url = server_url(request, request.param)
    namespace = f"sluice:test:rl:{uuid.uuid4().hex[:12]}"
    made: list[RedisLimiter] = []

    def make(clock: FakeClock) -> Limiter:
        made.append(RedisLimiter.from_url(redis_url, namespace=namespace, clock=clock))
        return made[-1]

    yield make
    for limiter in made:
        limiter.reset()
        limiter.close()


COLD = pytest.mark.parametrize("make_cold_limiter", ["memory", *REDIS_KINDS], indirect=True)


@COLD
def test_a_cold_limiter_holds_each_key_for_its_window_or_spacing(
    make_cold_limiter: Callable[[FakeClock], Limiter], clock: FakeClock
) -> None:
    """A limiter that lost its state grants a 10/s key only after 1 s, a 40/min key after one
    spacing (1.515 s), and says so in retry_after_s."""
    limiter = make_cold_limiter(clock)
    per_minute = LimitSpec("dsp:write", parse_rate("40/min"))
    first = limiter.acquire([TEN_PER_S])
    assert (first.granted, first.reason, first.retry_after_s) == (False, "rate", 1.0)
    assert limiter.acquire([per_minute]).retry_after_s == pytest.approx(1.515)
    clock.advance(1.0)
    assert limiter.acquire([TEN_PER_S]).granted
    clock.advance(0.515)
    assert limiter.acquire([per_minute]).granted


@COLD
def test_reset_is_a_state_loss_and_holds_again(
    make_cold_limiter: Callable[[FakeClock], Limiter], clock: FakeClock
) -> None:
    """After reset (a flush), no key is granted within its hold of the loss, even one whose
    last grant was long ago."""
    limiter = make_cold_limiter(clock)
    limiter.acquire([TEN_PER_S])  # Redis notices its loss at the first call
    clock.advance(5.0)
    assert limiter.acquire([TEN_PER_S]).granted
    clock.advance(3.0)
    limiter.reset()
    assert limiter.acquire([TEN_PER_S]).retry_after_s == 1.0
    clock.advance(1.0)
    assert limiter.acquire([TEN_PER_S]).granted


@COLD
def test_a_wide_key_keeps_its_window_across_a_state_loss(
    make_cold_limiter: Callable[[FakeClock], Limiter], clock: FakeClock
) -> None:
    """The window holds are lost with the state, so across a loss a wide key's window rests
    on the GCRA and the cold hold alone. 10/10s (spacing 1.01 s, hold 1.01 s before): one
    grant 250 ms late (the wide credit), nine on time, a flush at the tenth, and the next
    grant at the end of the cold hold put 11 grants, each sent and answered at once, in
    9.85 s. The hold now covers the credit too, so any 11 span at least the window."""
    limiter = make_cold_limiter(clock)
    spec = LimitSpec("dsp", Rate(10, 10.0))
    window_us = 10_000_000

    def ask() -> Grant:
        return holds.acquire(limiter, [spec], in_flight=None, timeout_s=1.0, judges_spacing=False)

    def send_all(late_us: int = 0) -> list[int]:
        """Wait for the key's next slot (plus ``late_us``), then take every grant there is."""
        sent = []
        while True:
            grant = ask()
            if not grant.granted:
                if sent:
                    return sent
                assert grant.reason == "rate"
                clock.advance(grant.retry_after_s + late_us / 1e6)
                continue
            holds.finish(limiter, grant, sent=True)  # answered at once
            sent.append(clock_us(clock))

    limiter.acquire([spec], wide={spec.key})  # Redis notices its loss at the first call
    arrivals = send_all()
    arrivals += send_all(late_us=gcra.WIDE_CATCH_UP_US)
    while len(arrivals) < 11:
        arrivals += send_all()
    limiter.reset()  # a flush right after the tenth grant: the holds go with it
    limiter.acquire([spec], wide={spec.key})
    arrivals += send_all()
    for first, last in zip(arrivals, arrivals[10:], strict=False):
        assert last - first >= window_us, arrivals


def test_a_grant_says_how_long_it_may_wait_before_sending(limiter: Limiter) -> None:
    """A grant on 10/s (margin 1%: 10 ms of slack) may be sent within 5 ms of asking; one
    with no rate limit (an in-flight cap only) has no such bound."""
    grant = limiter.acquire([TEN_PER_S])
    assert grant.send_within_s == pytest.approx(0.005)
    capped = limiter.acquire([], in_flight=InFlight("dsp:in_flight", 2, 30.0))
    assert capped.granted
    assert capped.send_within_s == sendgate.UNBOUNDED


def test_a_grant_names_its_paced_keys_and_their_steps(limiter: Limiter) -> None:
    """``Grant.steps``: each key paced by its spacing with what the grant added to its TAT
    (10/s at margin 1%: 101 ms; a cost-3 grant on a burst-2 key: 3 spacings); a wide key,
    whose window the holds keep, is not among them."""
    heavy = LimitSpec("dsp:heavy", parse_rate("10/s"), cost=3, burst=2)
    grant = limiter.acquire([TEN_PER_S, heavy])
    assert dict(grant.steps) == {"dsp": 101_000, "dsp:heavy": 3 * 126_250}
    wide = limiter.acquire([LimitSpec("dsp:w", parse_rate("10/s"))], wide={"dsp:w"})
    assert wide.granted
    assert wide.steps == ()


def test_push_back_moves_a_schedule_after_a_late_write(make_limiter: Factory) -> None:
    """``push_back`` raises each key's TAT to the limiter clock's now plus its offset, on
    both backends: the next grant waits exactly that long; a TAT already later is left
    alone, and so is every other key."""
    clock = FakeClock()
    limiter = make_limiter(clock)
    other = LimitSpec("dsp:other", parse_rate("10/s"))
    assert limiter.acquire([TEN_PER_S]).granted
    assert limiter.acquire([other]).granted
    clock.advance(0.250)  # the write ended 250 ms after the grant (its slot was at +101 ms)
    limiter.push_back([(TEN_PER_S.key, 96_000)])  # one step (101 ms) less a 5 ms window
    refused = limiter.acquire([TEN_PER_S])
    assert (refused.reason, refused.retry_after_s) == ("rate", pytest.approx(0.096))
    assert limiter.acquire([other]).granted  # untouched: its slot passed at +101 ms
    limiter.push_back([(TEN_PER_S.key, 1_000)])  # never lowers a TAT
    assert limiter.acquire([TEN_PER_S]).retry_after_s == pytest.approx(0.096)
    clock.advance(0.096)
    assert limiter.acquire([TEN_PER_S]).granted
    limiter.push_back([("dsp:never-granted", 50_000)])  # a key with no TAT gets one
    fresh = limiter.acquire([LimitSpec("dsp:never-granted", parse_rate("10/s"))])
    assert (fresh.reason, fresh.retry_after_s) == ("rate", pytest.approx(0.05))


def test_a_wide_key_makes_up_lateness_within_its_credit(make_limiter: Factory) -> None:
    """Both backends apply the wide catch-up (``gcra.wide_credit_us``) to the keys asked
    for, and only to them: 10/s at margin 1%, a grant 200 ms after its slot keeps the
    schedule on a wide key (250 ms of credit: the slot missed meanwhile goes at once, the
    next one is 2 ms off) and loses the 200 ms on the other (its next slot a spacing off)."""
    clock = FakeClock()
    limiter = make_limiter(clock)
    other = LimitSpec("dsp:other", parse_rate("10/s"))
    wide = {TEN_PER_S.key}
    for spec in (TEN_PER_S, other):
        # Take what the key allows now (an idle key: one grant), so the next slot is ahead.
        while limiter.acquire([spec], wide=wide).granted:
            pass
        refused = limiter.acquire([spec], wide=wide)
        assert refused.reason == "rate"
        clock.advance(refused.retry_after_s + 0.200)  # asked 200 ms after the slot
        assert limiter.acquire([spec], wide=wide).granted
        verdicts = [limiter.acquire([spec], wide=wide) for _ in range(2)]
        if spec is TEN_PER_S:
            # Slots 101 ms apart: the one at +101 ms goes now, the one at +202 ms is 2 ms off.
            assert [v.granted for v in verdicts] == [True, False]
            assert verdicts[1].retry_after_s == pytest.approx(0.002, abs=1e-6)
        else:
            assert [v.granted for v in verdicts] == [False, False]
            assert verdicts[0].retry_after_s == pytest.approx(0.101, abs=1e-6)


def test_a_wide_key_opens_from_idle_with_one_grant(make_limiter: Factory) -> None:
    """The wide credit is for lateness, not idleness (``KeyPlan.idle_credit``): a key idle
    for longer than its credit opens with one grant and the ordinary credit, on both
    backends, then keeps its spacing."""
    clock = FakeClock()
    limiter = make_limiter(clock)
    wide = {TEN_PER_S.key}
    for _ in range(2):  # the first use, then again after 10 s idle
        assert limiter.acquire([TEN_PER_S], wide=wide).granted
        refused = limiter.acquire([TEN_PER_S], wide=wide)
        assert refused.reason == "rate"
        assert refused.retry_after_s == pytest.approx(0.101, abs=1e-6)
        clock.advance(10.0)


def test_a_wide_key_first_used_after_its_root_began_opens_from_idle(
    make_limiter: Factory,
) -> None:
    """A warm limiter (``cold_start=False``) has no cold floor: a wide key first asked for
    200 ms after another key of its root opens with one grant on both backends. Redis
    floored the key's TAT at its root's ``born`` even without a hold, so the wide credit
    took the 200 ms since then as lateness and granted two at once (memory: one)."""
    clock = FakeClock()
    limiter = make_limiter(clock)
    wide = {"dsp:other", TEN_PER_S.key}
    assert limiter.acquire([LimitSpec("dsp:other", parse_rate("10/s"))], wide=wide).granted
    clock.advance(0.2)
    assert limiter.acquire([TEN_PER_S], wide=wide).granted
    refused = limiter.acquire([TEN_PER_S], wide=wide)
    assert (refused.granted, refused.retry_after_s) == (False, pytest.approx(0.101, abs=1e-6))


def test_a_hold_keeps_its_place_a_window_after_the_answer(make_limiter: Factory) -> None:
    """Window holds (``holds.py``) on both backends: the place stays held while the request
    runs and for ``W`` after its answer, then frees; an unsent one frees at once."""
    clock = FakeClock()
    limiter = make_limiter(clock)
    spec = LimitSpec("dsp", Rate(1, 1.0))
    grant = holds.acquire(limiter, [spec], in_flight=None, timeout_s=1.0)
    assert grant.granted
    assert [h.key for h in grant.holds] == ["dsp#window"]
    clock.advance(2.5)  # a slow answer
    assert holds.acquire(limiter, [spec], in_flight=None, timeout_s=1.0).reason == "in_flight"
    holds.finish(limiter, grant, sent=True, since_answer_s=0.5)
    clock.advance(0.4)
    assert holds.acquire(limiter, [spec], in_flight=None, timeout_s=1.0).reason == "in_flight"
    clock.advance(0.1)
    unsent = holds.acquire(limiter, [spec], in_flight=None, timeout_s=1.0)
    assert unsent.granted
    holds.finish(limiter, unsent, sent=False)
    # The place and the spacing slot are both back: granted again at the same instant.
    assert holds.acquire(limiter, [spec], in_flight=None, timeout_s=1.0).granted


@pytest.mark.parametrize(
    ("spec", "wide"),
    [
        (LimitSpec("dsp", Rate(10, 1.0)), False),
        (LimitSpec("dsp", Rate(10, 1.0), burst=3), False),
        (LimitSpec("dsp", Rate(10, 1.0)), True),  # a credit of 250 ms, 2.5 spacings
    ],
    ids=["paced", "burst", "wide"],
)
def test_give_back_undoes_only_the_last_grant(
    make_limiter: Factory, spec: LimitSpec, wide: bool
) -> None:
    """A grant that sent nothing gives its slot back unless another grant followed it, on
    both backends, whatever the key's burst and credit (``gcra.undone``)."""
    clock = FakeClock()
    limiter = make_limiter(clock)
    keys = {spec.key} if wide else set()

    def take_all() -> list[Grant]:
        taken = []
        while (grant := limiter.acquire([spec], wide=keys)).granted:
            taken.append(grant)
        return taken

    first = take_all()
    assert first
    limiter.give_back(first[-1].undo)
    again = take_all()
    assert len(again) == 1  # exactly the slot given back
    clock.advance(gcra.spacing_us(spec.rate, 0.01, spec.burst) / 1e6)  # the default 1% margin
    third = take_all()
    assert third
    limiter.give_back(again[0].undo)  # followed by the third: kept
    assert limiter.acquire([spec], wide=keys).reason == "rate"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    limit=st.integers(1, 8),
    window_us=st.integers(1, 2_000_000),
    burst_share=st.floats(0.0, 1.0),
    schedule=st.lists(
        st.tuples(st.one_of(st.none(), st.integers(0, 1_000_000)), st.integers(1, 8)),
        max_size=50,
    ),
)
def test_units_never_exceed_limit_with_costs_and_bursts(
    limiter: Limiter,
    clock: FakeClock,
    limit: int,
    window_us: int,
    burst_share: float,
    schedule: list[tuple[int | None, int]],
) -> None:
    """With costs and a burst, no window of window_s holds more than `limit` units, and
    waiting exactly retry_after_s is enough (brute force over every window)."""
    limiter.reset()
    clock.advance(10.0)
    burst = min(limit - 1, int(burst_share * limit))
    rate = Rate(limit, window_us / 1e6)
    granted: list[tuple[int, int]] = []
    for gap_us, cost in schedule:
        clock.advance((gap_us or 0) / 1e6)
        spec = LimitSpec("dsp", rate, min(cost, burst + 1), burst)
        grant = limiter.acquire([spec])
        if not grant.granted and gap_us is None:
            clock.advance(grant.retry_after_s)
            grant = limiter.acquire([spec])
            assert grant.granted
        if grant.granted:
            granted.append((clock_us(clock), spec.cost))
    for start, _ in granted:
        held = sum(cost for at, cost in granted if start <= at < start + window_us)
        assert held <= limit, (start, held, limit)


def twin_limiters(
    request: pytest.FixtureRequest, kind: str, *, margin: float, catch_up_us: int
) -> tuple[FakeClock, MemoryLimiter, RedisLimiter]:
    """A memory limiter and a Redis one (``kind``'s server, a fresh namespace) on one fake
    clock, with the same margin and catch-up, for the tests that compare their answers."""
    clock = FakeClock()
    clock.advance(100.0)
    memory = MemoryLimiter(clock=clock, margin=margin, catch_up_s=catch_up_us / 1e6)
    remote = RedisLimiter.from_url(
        server_url(request, kind),
        namespace=f"sluice:test:rl:eq:{uuid.uuid4().hex[:12]}",
        clock=clock,
        margin=margin,
        catch_up_s=catch_up_us / 1e6,
    )
    return clock, memory, remote


@pytest.mark.parametrize("kind", REDIS_KINDS)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    limits=st.lists(
        st.tuples(st.integers(1, 8), st.integers(1, 2_000_000), st.floats(0.0, 1.0)),
        min_size=2,
        max_size=2,
    ),
    catch_up_us=st.integers(0, 20_000),
    schedule=st.lists(
        st.tuples(
            st.integers(0, 1_500_000),
            st.sets(st.sampled_from([0, 1]), min_size=1),
            st.integers(1, 8),
            st.booleans(),
        ),
        max_size=40,
    ),
)
def test_memory_and_redis_answer_every_request_alike(
    kind: str,
    request: pytest.FixtureRequest,
    limits: list[tuple[int, int, float]],
    catch_up_us: int,
    schedule: list[tuple[int, set[int], int, bool]],
) -> None:
    """The same requests at the same instants get the same answers, to the microsecond, from
    both backends: costs, bursts, catch-up, cold starts and state losses included."""
    clock, memory, remote = twin_limiters(request, kind, margin=0.015, catch_up_us=catch_up_us)
    # Both are born now: the memory limiter at construction (or reset), Redis (per root,
    # here 'dsp') at its first script, which a lease on a key of that root runs without
    # touching any rate.
    probe = InFlight("dsp:probe", 1_000_000, 1.0)
    try:
        remote.acquire([], in_flight=probe)
        for gap_us, keys, cost, lose_state in schedule:
            if lose_state:
                memory.reset()
                remote.reset()
                remote.acquire([], in_flight=probe)
            clock.advance(gap_us / 1e6)
            asked = []
            for index in sorted(keys):
                limit, window_us, share = limits[index]
                burst = min(limit - 1, int(share * limit))
                rate = Rate(limit, window_us / 1e6)
                asked.append(LimitSpec(f"dsp:{index}", rate, min(cost, burst + 1), burst))
            a, b = memory.acquire(asked), remote.acquire(asked)
            assert (a.granted, a.reason, a.send_within_s) == (b.granted, b.reason, b.send_within_s)
            assert gcra.to_us(a.retry_after_s) == gcra.to_us(b.retry_after_s)
    finally:
        remote.reset()
        remote.close()


@COLD
def test_a_cold_limiter_holds_an_in_flight_cap_too(
    make_cold_limiter: Callable[[FakeClock], Limiter], clock: FakeClock
) -> None:
    """A provider with only ``max_in_flight`` has no rate key to hold: after a flush its
    grants went at once, before the pause sync could restore a lost Retry-After."""
    limiter = make_cold_limiter(clock)
    cap = InFlight("dsp:in_flight", 2, 30.0)
    first = limiter.acquire([], in_flight=cap)
    assert (first.granted, first.reason, first.retry_after_s) == (False, "rate", 1.0)
    clock.advance(1.0)
    assert limiter.acquire([], in_flight=cap).granted
    limiter.reset()
    assert limiter.acquire([], in_flight=cap).retry_after_s == 1.0


@pytest.mark.parametrize("kind", REDIS_KINDS)
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    limits=st.lists(
        st.tuples(st.integers(1, 60), st.integers(10_000, 12_000_000), st.floats(0.0, 1.0)),
        min_size=3,
        max_size=3,
    ),
    wide=st.sets(st.sampled_from([0, 1, 2])),
    lowered=st.sets(st.sampled_from([0, 1, 2])),
    catch_up_us=st.integers(0, 20_000),
    schedule=st.lists(
        st.tuples(
            st.one_of(st.integers(0, 50_000), st.integers(0, 1_500_000)),
            st.sets(st.sampled_from([0, 1, 2]), min_size=1),
            st.one_of(st.none(), st.integers(0, 5)),
            st.integers(0, 30),
        ),
        max_size=50,
    ),
)
def test_memory_and_redis_agree_on_wide_keys_and_give_backs(
    kind: str,
    request: pytest.FixtureRequest,
    limits: list[tuple[int, int, float]],
    wide: set[int],
    lowered: set[int],
    catch_up_us: int,
    schedule: list[tuple[int, set[int], int | None, int]],
) -> None:
    """Wide keys (the 250 ms credit, the idle start, a lowered rate's narrow credit), some
    grants given back later in any order, state losses: both backends answer alike to the
    microsecond, and each grant's undo moves the TAT by the same amounts, measured from
    each backend's own clock reading."""
    clock, memory, remote = twin_limiters(request, kind, margin=0.01, catch_up_us=catch_up_us)
    probe = InFlight("dsp:probe", 1_000_000, 1.0)
    wide_keys = {f"dsp:{index}" for index in wide}
    grants: list[tuple[Grant, Grant]] = []
    try:
        remote.acquire([], in_flight=probe)
        for gap_us, keys, back, lose_state in schedule:
            if lose_state == 0:
                memory.reset()
                remote.reset()
                remote.acquire([], in_flight=probe)
            clock.advance(gap_us / 1e6)
            asked = []
            for index in sorted(keys):
                limit, window_us, share = limits[index]
                burst = min(limit - 1, int(share * limit))
                spec = LimitSpec(f"dsp:{index}", Rate(limit, window_us / 1e6), burst=burst)
                if index in lowered:
                    spec = LimitSpec(
                        spec.key, Rate(limit, 3 * spec.rate.window_s), 1, burst, spec.rate
                    )
                asked.append(spec)
            a, b = memory.acquire(asked, wide=wide_keys), remote.acquire(asked, wide=wide_keys)
            assert (a.granted, a.reason, a.send_within_s) == (b.granted, b.reason, b.send_within_s)
            assert gcra.to_us(a.retry_after_s) == gcra.to_us(b.retry_after_s)
            if a.granted:
                m_now, r_now = monotonic_us(clock), clock_us(clock)
                assert [(k, x - m_now, y - m_now) for k, x, y in a.undo] == [
                    (k, x - r_now, y - r_now) for k, x, y in b.undo
                ]
                grants.append((a, b))
            if back is not None and back < len(grants):
                given_a, given_b = grants.pop(len(grants) - 1 - back)
                memory.give_back(given_a.undo)
                remote.give_back(given_b.undo)
    finally:
        remote.reset()
        remote.close()
