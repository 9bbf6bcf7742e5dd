"""The Redis limiter on a real 3-master Redis Cluster (``redis_cluster_url``): a grant's keys
share one hash tag, so a multi-key grant is one atomic script on one shard; idle keys expire;
and the engine runs tasks to the sandbox on it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from sluice import errors, submissions
from sluice.clock import FakeClock
from sluice.domain import Submission, TaskStatus
from sluice.ratelimit import InFlight, LimitSpec, RedisLimiter, holds, parse_rate
from sluice.ratelimit.redis import connect
from tests.integration.conftest import make_runtime, run_until_final, sandbox_stats

pytestmark = pytest.mark.redis_cluster


@pytest.fixture
def cluster(redis_cluster_url: str) -> Iterator[RedisCluster]:
    """A cluster client for looking at where the limiter's keys are."""
    client = connect(redis_cluster_url)
    assert isinstance(client, RedisCluster)
    yield client
    client.close()


@pytest.fixture
def namespace(cluster: RedisCluster) -> Iterator[str]:
    """A namespace of this test's own, emptied on every node at the end."""
    name = f"sluice:test:cl:{uuid.uuid4().hex[:12]}"
    yield name
    for key in list(cluster.scan_iter(match=f"{name}:*")):
        cluster.delete(key)


def names_in(cluster: RedisCluster, namespace: str) -> set[str]:
    return {key.decode() for key in cluster.scan_iter(match=f"{namespace}:*")}


def advertiser_on_another_slot(namespace: str) -> str:
    """An advertiser whose key, named without a hash tag, would hash to a slot other than
    the provider-wide key's (so without tags the grant would span shards)."""
    provider_slot = key_slot(f"{namespace}:tat:acme".encode())
    for number in range(1000):
        key = f"acme:write:advertiser_id={number}"
        if key_slot(f"{namespace}:tat:{key}".encode()) != provider_slot:
            return key
    raise AssertionError("no advertiser on another slot in 1000 tries")


def test_a_multi_key_grant_lands_in_one_slot(
    redis_cluster_url: str, cluster: RedisCluster, namespace: str
) -> None:
    """Provider-wide, per-operation and per-advertiser limits, the in-flight cap and the
    window holds of one grant are written in one slot although their untagged names hash
    to different slots; a refusal by one of them consumes none of the others."""
    advertiser = advertiser_on_another_slot(namespace)
    clock = FakeClock()
    limiter = RedisLimiter.from_url(
        redis_cluster_url, namespace=namespace, clock=clock, cold_start=False
    )
    limits = [
        LimitSpec("acme", parse_rate("10/s")),
        LimitSpec("acme:write", parse_rate("5/s"), cost=2, burst=1),
        LimitSpec(advertiser, parse_rate("1/s")),
    ]
    cap = InFlight("acme:in_flight", 4, 30.0)
    try:
        grant = holds.acquire(limiter, limits, in_flight=cap, timeout_s=2.0)
        assert grant.granted
        keys = names_in(cluster, namespace)
        # born, three TATs, the in-flight set and three window-hold sets
        assert len(keys) == 8
        assert {cluster.keyslot(key) for key in keys} == {key_slot(b"acme")}
        assert all("{acme}" in key for key in keys)
        # The per-advertiser limit refuses; the provider-wide slot is not spent by it.
        clock.advance(0.2)
        refused = limiter.acquire(limits, in_flight=cap)
        assert (refused.granted, refused.reason) == (False, "rate")
        assert limiter.acquire(limits[:1]).granted
        assert limiter.in_flight_count("acme:in_flight") == 1
    finally:
        limiter.reset()
        limiter.close()


def test_a_grant_across_providers_is_refused_before_anything_is_sent(
    redis_cluster_url: str, cluster: RedisCluster, namespace: str
) -> None:
    """On a cluster, keys of two roots in one grant are one clear line naming the roots,
    and nothing is written."""
    limiter = RedisLimiter.from_url(redis_cluster_url, namespace=namespace)
    if key_slot(b"acme") == key_slot(b"zeta"):
        pytest.fail("the two roots must hash to different slots for this test")
    try:
        with pytest.raises(errors.InvalidValue, match="share their root") as refused:
            limiter.acquire(
                [LimitSpec("acme", parse_rate("1/s")), LimitSpec("zeta", parse_rate("1/s"))]
            )
        assert "\n" not in str(refused.value)
        assert "acme, zeta" in str(refused.value)
        assert names_in(cluster, namespace) == set()
    finally:
        limiter.close()


def test_idle_keys_expire_on_their_own(
    redis_cluster_url: str, cluster: RedisCluster, namespace: str
) -> None:
    """With a short grace (5 s), 300 one-off advertiser keys, a pause and a hold all vanish
    from the cluster on their own once idle; only each root's born marker stays, itself
    with a TTL (its expiry is checked, not waited for: it is a week)."""
    limiter = RedisLimiter.from_url(
        redis_cluster_url, namespace=namespace, key_grace_ms=5000, cold_start=False
    )
    try:
        for number in range(300):
            grant = limiter.acquire([LimitSpec(f"acme:advertiser={number}", parse_rate("100/s"))])
            assert grant.granted
        limiter.pause("acme:write", 0.1)
        limiter.hold("lease", "acme#window", 0.1)
        assert len(names_in(cluster, namespace)) == 300 + 3
        deadline = time.monotonic() + 30.0
        while len(names_in(cluster, namespace)) > 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        born = f"{namespace}:{{acme}}:born"
        assert names_in(cluster, namespace) == {born}
        assert cluster.pttl(born) > 0
    finally:
        limiter.reset()
        limiter.close()


def test_tasks_run_through_the_engine_on_the_cluster_limiter(
    tmp_path: Path,
    sandbox: Callable[..., str],
    redis_cluster_url: str,
    cluster: RedisCluster,
    namespace: str,
) -> None:
    """Tasks on a provider with a provider-wide, a per-advertiser limit and an in-flight cap
    all complete through the embedded engine on the cluster limiter, with no refusal and no
    window over the limit at the sandbox, every limiter key under the provider's tag."""
    url = sandbox(profile="standard", limits=[{"name": "app", "limit": 20, "window_s": 1.0}])
    providers = {
        "sbx": {
            "preset": "sandbox-standard",
            "base_url": url,
            "rate_limit": "20/s",
            "max_in_flight": 4,
            "limits": [{"rate": "10/s", "scope": "write", "per": "advertiser_id"}],
            "poll": {"interval": "100ms"},
            "retry_base": "50ms",
            "retry_max": "500ms",
        }
    }
    runtime = make_runtime(
        tmp_path, providers, redis_url=redis_cluster_url, limiter_namespace=namespace
    )
    try:
        assert isinstance(runtime.limiter, RedisLimiter)
        assert runtime.limiter.is_cluster
        items = [
            Submission(
                kind="campaign",
                payload={"advertiser_id": f"adv-{1 + n % 3}", "name": f"C{n}", "budget": 100.0},
            )
            for n in range(12)
        ]
        ids = submissions.create_tasks(runtime.repo, runtime.catalog, items)
        run_until_final(runtime)
        done = [runtime.repo.get(i) for i in ids]
        assert {t.status for t in done} == {TaskStatus.COMPLETED}, [
            (t.validation_error, t.last_error) for t in done
        ]
        stats = sandbox_stats(url)
        assert stats["refused_total"] == 0
        assert stats["duplicate_count"] == 0
        assert all(v["max_seen"] <= v["limit"] for v in stats["max_in_window"].values())
        keys = names_in(cluster, namespace)
        assert any(":tat:sbx:write:advertiser_id=adv-3" in key for key in keys)
        assert {cluster.keyslot(key) for key in keys} == {key_slot(b"sbx")}
    finally:
        runtime.close()
