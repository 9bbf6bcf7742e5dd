"""MemoryLimiter specifics; the behaviour shared with Redis is in the contract suite
(tests/integration/test_ratelimit_contract.py), which runs on both backends."""

from __future__ import annotations

import threading

import pytest

from sluice import errors
from sluice.clock import FakeClock
from sluice.ratelimit import (
    InFlight,
    LimitSpec,
    MemoryLimiter,
    RedisLimiter,
    build_limiter,
    parse_rate,
)

TEN_PER_S = LimitSpec("dsp", parse_rate("10/s"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> MemoryLimiter:
    return MemoryLimiter(clock=clock, cold_start=False)


def test_margin_zero_spaces_by_the_bare_interval(clock: FakeClock) -> None:
    """With margin=0 a 4/s limit grants every 250 ms exactly."""
    limiter = MemoryLimiter(clock=clock, margin=0.0, cold_start=False)
    spec = LimitSpec("dsp", parse_rate("4/s"))
    assert limiter.acquire([spec]).granted
    assert limiter.acquire([spec]).retry_after_s == 0.25


def test_pause_refuses_key_and_sub_keys_but_not_siblings(
    limiter: MemoryLimiter, clock: FakeClock
) -> None:
    """Pausing 'dsp' stops 'dsp' and 'dsp:write' but not 'dsp2' or 'other'."""
    limiter.pause("dsp", 30.0)
    for key in ["dsp", "dsp:write", "dsp:write:adv=1"]:
        grant = limiter.acquire([LimitSpec(key, parse_rate("10/s"))])
        assert (grant.granted, grant.reason, grant.retry_after_s) == (False, "paused", 30.0)
    for key in ["dsp2", "other", "other:dsp"]:
        assert limiter.acquire([LimitSpec(key, parse_rate("10/s"))]).granted
    clock.advance(30.0)
    assert limiter.acquire([TEN_PER_S]).granted


def test_pause_on_sub_key_leaves_parent_alone(limiter: MemoryLimiter) -> None:
    """Pausing 'dsp:write' holds back writes only."""
    limiter.pause("dsp:write", 10.0)
    assert limiter.paused_until("dsp") is None
    assert limiter.acquire([LimitSpec("dsp:read", parse_rate("10/s"))]).granted
    assert limiter.acquire([LimitSpec("dsp:write", parse_rate("10/s"))]).reason == "paused"


def test_pause_refuses_bad_lengths(limiter: MemoryLimiter) -> None:
    """Negative or NaN pause lengths are errors, zero is a no-op."""
    with pytest.raises(ValueError, match="pause seconds"):
        limiter.pause("dsp", -1.0)
    with pytest.raises(ValueError, match="pause seconds"):
        limiter.pause("dsp", float("nan"))
    limiter.pause("dsp", 0.0)
    assert limiter.paused_until("dsp") is None


def test_release_of_unknown_lease_is_harmless(limiter: MemoryLimiter) -> None:
    """Releasing twice or releasing a stranger's id changes nothing."""
    limiter.release("nope", "dsp")
    cap = InFlight("dsp", max_in_flight=1, ttl_s=5.0)
    grant = limiter.acquire([], in_flight=cap)
    assert grant.lease_id is not None
    limiter.release(grant.lease_id, "dsp")
    limiter.release(grant.lease_id, "dsp")
    assert limiter.acquire([], in_flight=cap).granted


def test_acquire_without_any_limit_is_refused(limiter: MemoryLimiter) -> None:
    """Asking for no limit at all is a programming error, not unlimited traffic."""
    with pytest.raises(ValueError, match="at least one"):
        limiter.acquire([])


def test_threads_racing_at_one_instant_get_one_grant(limiter: MemoryLimiter) -> None:
    """Sixteen threads asking at the same fake instant share a single grant."""
    grants: list[bool] = []
    barrier = threading.Barrier(16)

    def ask() -> None:
        barrier.wait()
        grants.extend(limiter.acquire([TEN_PER_S]).granted for _ in range(50))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert grants.count(True) == 1
    assert len(grants) == 16 * 50


def test_idle_keys_are_forgotten(limiter: MemoryLimiter, clock: FakeClock) -> None:
    """Thousands of one-off keys do not accumulate once they constrain nothing."""
    for number in range(5000):
        limiter.acquire([LimitSpec(f"dsp:adv={number}", parse_rate("10/s"))])
        clock.advance(0.2)
    # White-box: memory held is what a user would notice, and there is no public size.
    assert len(limiter._tats) < 1100


def test_build_limiter_picks_backend_by_url() -> None:
    """No URL gives the in-memory limiter; a Redis URL gives the Redis one."""
    assert isinstance(build_limiter(None), MemoryLimiter)
    remote = build_limiter("redis://127.0.0.1:1/0")
    assert isinstance(remote, RedisLimiter)
    remote.close()


def test_unreachable_redis_raises_limiter_error() -> None:
    """A Redis that cannot be reached surfaces as LimiterError naming the namespace."""
    limiter = RedisLimiter.from_url("redis://127.0.0.1:1/0", namespace="sluice:unit")
    with pytest.raises(errors.LimiterError, match="sluice:unit"):
        limiter.acquire([TEN_PER_S])
    with pytest.raises(errors.LimiterError):
        limiter.pause("dsp", 1.0)
    limiter.close()
