"""Rate limiting shared by every worker and host: GCRA in memory or in Redis.

Usage::

    limiter = build_limiter(settings.redis_url)
    grant = limiter.acquire([LimitSpec("sandbox", parse_rate("10/s"))])
    if not grant.granted:
        ...  # come back in grant.retry_after_s; being refused is never a failure
"""

from __future__ import annotations

from sluice.ratelimit.base import InFlight, Limiter
from sluice.ratelimit.memory import MemoryLimiter
from sluice.ratelimit.rate import Grant, LimitSpec, Rate, parse_rate
from sluice.ratelimit.redis import RedisLimiter

__all__ = [
    "Grant",
    "InFlight",
    "LimitSpec",
    "Limiter",
    "MemoryLimiter",
    "Rate",
    "RedisLimiter",
    "build_limiter",
    "parse_rate",
]


def build_limiter(
    redis_url: str | None,
    margin: float = 0.01,
    namespace: str = "sluice:rl",
    catch_up_s: float = 0.0,
    cold_start: bool = True,
) -> Limiter:
    """A :class:`RedisLimiter` when ``redis_url`` is given (one server, or a Redis Cluster
    as ``redis+cluster://host:port,…``), else a :class:`MemoryLimiter`.

    Embedded mode (one process) needs no Redis; distributed mode must share one Redis so
    that every worker on every host draws from the same limits. ``cold_start=False`` is
    for limits that guard Sluice itself (the API's per-key limit), not a third party: a
    restart need not hold them.
    """
    if redis_url:
        return RedisLimiter.from_url(
            redis_url,
            namespace=namespace,
            margin=margin,
            catch_up_s=catch_up_s,
            cold_start=cold_start,
        )
    return MemoryLimiter(margin=margin, catch_up_s=catch_up_s, cold_start=cold_start)
