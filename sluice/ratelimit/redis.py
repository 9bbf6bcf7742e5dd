"""Redis limiter for distributed mode: one atomic Lua script per acquire.

Every worker on every host shares the same limits because the whole decision (pauses,
in-flight cap, GCRA on every key, then the commit) runs inside one Lua script, which
Redis executes atomically, and reads the *Redis server's* clock (``TIME``), so host
clocks never matter. Tests inject a clock; its time is then passed in instead.

Keys under ``namespace`` (default ``sluice:rl``)::

    <ns>:born             when this state began (server time, microseconds); no TTL
    <ns>:tat:<key>        GCRA theoretical arrival time, integer microseconds
    <ns>:pause:<key>      end of the pause on <key>, integer microseconds
    <ns>:inflight:<key>   sorted set of lease ids scored by their expiry (microseconds)

Each key but ``born`` expires a grace period after it stops constraining anything, so idle
keys vanish. The grace also keeps a key alive when an injected test clock runs ahead of or
behind the server's clock, which is what Redis measures TTLs with.

A Redis that was flushed or restarted has no ``born`` key. The first script to notice
writes the server's time there, and every key is then held as a limiter that lost its
state must be (:mod:`gcra`: 1 s, or one spacing if longer), so the limit holds across
the loss. The Redis must not bring back old state on its own: run it without
persistence (``--save '' --appendonly no``; Sluice rebuilds what it needs) and with
``maxmemory-policy noeviction``, since an evicted TAT with ``born`` still present would let
one grant come early.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
import redis.exceptions

from sluice import errors
from sluice.clock import Clock
from sluice.ratelimit import gcra, sendgate
from sluice.ratelimit.base import (
    InFlight,
    check_acquire_args,
    check_pause_seconds,
    clock_us,
)
from sluice.ratelimit.rate import Grant, LimitSpec

T = TypeVar("T")

KEY_GRACE_MS = 60_000

# Every script starts here: ARGV[1] is an injected clock's time, or '' for the server's TIME.
_NOW_LUA = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
"""

# KEYS: the born key, then n_rate TAT keys, then n_pause pause keys, then the in-flight
#       key if any.
# ARGV: now_us ('' = server TIME), n_rate, n_pause, has_inflight, grace_ms,
#       max_in_flight, lease_ttl_us, lease_id, then one step_us (cost * spacing) per TAT
#       key, then one catch-up credit_us per TAT key, then one cold-start hold_us per TAT
#       key, then one allow_us ((burst + 1 - cost) * spacing) per TAT key.
# Returns {granted 0/1, wait_us, reason, now_us}. Mirrors gcra.decide + in_flight_wait.
_ACQUIRE_LUA = (
    _NOW_LUA
    + """
local n_rate = tonumber(ARGV[2])
local n_pause = tonumber(ARGV[3])
local grace_ms = tonumber(ARGV[5])

-- No born key: this Redis lost the limiter's state (flushed, restarted). Start it now.
local born = tonumber(redis.call('GET', KEYS[1]) or '-1')
if born < 0 then
  born = now
  redis.call('SET', KEYS[1], string.format('%d', born))
end

local pause_wait = 0
for i = n_rate + 2, n_rate + n_pause + 1 do
  local wait = tonumber(redis.call('GET', KEYS[i]) or '0') - now
  if wait > pause_wait then pause_wait = wait end
end
local rate_wait = 0
local tats = {}
for i = 1, n_rate do
  local hold = tonumber(ARGV[8 + 2 * n_rate + i])
  tats[i] = math.max(tonumber(redis.call('GET', KEYS[i + 1]) or '0'), born + hold)
  local wait = tats[i] - tonumber(ARGV[8 + 3 * n_rate + i]) - now
  if wait > rate_wait then rate_wait = wait end
end
if pause_wait > 0 or rate_wait > 0 then
  local reason = 'rate'
  if pause_wait > 0 then reason = 'paused' end
  return {0, math.max(pause_wait, rate_wait), reason, now}
end

if ARGV[4] == '1' then
  local key = KEYS[n_rate + n_pause + 2]
  local max_in_flight = tonumber(ARGV[6])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local live = redis.call('ZCARD', key)
  if live >= max_in_flight then
    local nth = live - max_in_flight
    local freeing = redis.call('ZRANGE', key, nth, nth, 'WITHSCORES')
    return {0, tonumber(freeing[2]) - now, 'in_flight', now}
  end
  redis.call('ZADD', key, now + tonumber(ARGV[7]), ARGV[8])
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', key, math.ceil((tonumber(last[2]) - now) / 1000) + grace_ms)
end

for i = 1, n_rate do
  local step = tonumber(ARGV[8 + i])
  local credit = tonumber(ARGV[8 + n_rate + i])
  local tat = math.max(tats[i], now - credit) + step
  redis.call('SET', KEYS[i + 1], string.format('%d', tat),
             'PX', math.ceil((tat - now) / 1000) + grace_ms)
end
return {1, 0, '', now}
"""
)

# KEYS[1]: pause key. ARGV: now_us ('' = server TIME), pause_us, grace_ms.
# Only ever extends: an earlier end than the current one is ignored.
_PAUSE_LUA = (
    _NOW_LUA
    + """
local pause_until = now + tonumber(ARGV[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if pause_until > current then
  redis.call('SET', KEYS[1], string.format('%d', pause_until),
             'PX', math.ceil((pause_until - now) / 1000) + tonumber(ARGV[3]))
end
return 1
"""
)

# KEYS: pause keys. ARGV: now_us ('' = server TIME). Returns {latest pause end, now_us}.
_PAUSED_UNTIL_LUA = (
    _NOW_LUA
    + """
local latest = 0
for i = 1, #KEYS do
  local pause_until = tonumber(redis.call('GET', KEYS[i]) or '0')
  if pause_until > latest then latest = pause_until end
end
return {latest, now}
"""
)

_GLOB_SPECIALS = "\\*?[]"


class RedisLimiter:
    """:class:`~sluice.ratelimit.base.Limiter` shared through Redis by every process and host.

    Args:
        client: a ``redis.Redis``; its connection pool is shared by threads.
        namespace: prefix of every key this limiter writes; ``reset`` drops them all.
        clock: tests only; when given, its time replaces the Redis server's ``TIME``.
        margin: extra fraction of the interval kept between grants (see :mod:`gcra`).
        catch_up_s: how late a caller may be for its slot without the schedule slipping
            (see :mod:`gcra`; capped at half the margin's slack).
        cold_start: hold every key after the Redis lost the limiter's state (see
            :mod:`gcra`); off only for tests that start from a known-empty past.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str = "sluice:rl",
        clock: Clock | None = None,
        margin: float = 0.01,
        catch_up_s: float = 0.0,
        *,
        cold_start: bool = True,
    ) -> None:
        gcra.check_margin(margin)
        self._catch_up_us = gcra.to_us(catch_up_s)
        self._cold_start = cold_start
        if not namespace:
            raise errors.InvalidValue("RedisLimiter namespace must be a non-empty string")
        self._client = client
        self._namespace = namespace
        self._clock = clock
        self._margin = margin
        self._acquire_script = client.register_script(_ACQUIRE_LUA)
        self._pause_script = client.register_script(_PAUSE_LUA)
        self._paused_until_script = client.register_script(_PAUSED_UNTIL_LUA)

    @classmethod
    def from_url(
        cls,
        url: str,
        namespace: str = "sluice:rl",
        clock: Clock | None = None,
        margin: float = 0.01,
        catch_up_s: float = 0.0,
        *,
        cold_start: bool = True,
        **client_kwargs: Any,
    ) -> RedisLimiter:
        """Build a limiter on a new client for ``url`` (``redis://host:6379/0``).

        Socket timeouts default to 2 s so a dead Redis fails fast with ``LimiterError``
        instead of hanging every worker; ``client_kwargs`` override them.
        """
        client_kwargs.setdefault("socket_timeout", 2.0)
        client_kwargs.setdefault("socket_connect_timeout", 2.0)
        client = redis.Redis.from_url(url, **client_kwargs)
        return cls(
            client,
            namespace=namespace,
            clock=clock,
            margin=margin,
            catch_up_s=catch_up_s,
            cold_start=cold_start,
        )

    @property
    def client(self) -> redis.Redis:
        """The Redis client this limiter talks through."""
        return self._client

    def acquire(self, limits: Sequence[LimitSpec], *, in_flight: InFlight | None = None) -> Grant:
        """See :meth:`Limiter.acquire`; one round trip, atomic on the server."""
        check_acquire_args(limits, in_flight)
        plans = gcra.plan(limits, self._margin, self._catch_up_us)
        guarded = list(plans) + ([in_flight.key] if in_flight else [])
        scopes = gcra.pause_scopes_all(guarded)
        keys = [f"{self._namespace}:born"]
        keys += [self._key("tat", key) for key in plans]
        keys += [self._key("pause", scope) for scope in scopes]
        lease_id = uuid.uuid4().hex if in_flight else ""
        if in_flight is not None:
            keys.append(self._key("inflight", in_flight.key))
        args: list[str | int] = [
            self._now_arg(),
            len(plans),
            len(scopes),
            1 if in_flight else 0,
            KEY_GRACE_MS,
            in_flight.max_in_flight if in_flight else 0,
            gcra.to_us(in_flight.ttl_s) if in_flight else 0,
            lease_id,
            *(p.step for p in plans.values()),
            *(p.credit for p in plans.values()),
            *(p.hold if self._cold_start else 0 for p in plans.values()),
            *(p.allow for p in plans.values()),
        ]
        granted, wait_us, reason, now_us = self._call(
            lambda: self._acquire_script(keys=keys, args=args)
        )
        if not granted:
            return Grant(False, int(wait_us) / gcra.US_PER_S, _text(reason))
        within = sendgate.send_within_s(limits, self._margin, self._catch_up_us)
        return Grant(True, 0.0, "", lease_id or None, int(now_us) / gcra.US_PER_S, within)

    def release(self, lease_id: str, key: str) -> None:
        """See :meth:`Limiter.release`."""
        self._call(lambda: self._client.zrem(self._key("inflight", key), lease_id))

    def hold(self, lease_id: str, key: str, seconds: float) -> None:
        """See :meth:`Limiter.hold`; no script needed.

        The server's clock is read first, so the expiry is at least ``seconds`` after the
        caller asked; ``ZADD`` re-adds a lease that had lapsed meanwhile.
        """
        check_pause_seconds(seconds)
        inflight = self._key("inflight", key)

        def keep() -> None:
            if self._clock is None:
                secs, micros = self._client.time()
                now_us = int(secs) * gcra.US_PER_S + int(micros)
            else:
                now_us = clock_us(self._clock)
            until_us = now_us + gcra.to_us(seconds)
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(inflight, {lease_id: until_us})
            # Outlive this lease, never shorten the set's life (others' leases may be longer):
            # NX for a set the ZADD just created, GT for one that already expires.
            life_ms = gcra.to_us(seconds) // 1000 + KEY_GRACE_MS
            pipe.pexpire(inflight, life_ms, nx=True)
            pipe.pexpire(inflight, life_ms, gt=True)
            pipe.execute()

        self._call(keep)

    def give_back(self, limits: Sequence[LimitSpec], granted_at: float) -> None:
        """See :meth:`Limiter.give_back`; no script: ``WATCH`` makes each key's undo atomic
        (a grant by anyone in between aborts it, and the TAT is kept)."""
        plans = gcra.undoable(limits, self._margin, self._catch_up_us)
        at_us = gcra.to_us(granted_at)
        for key, plan in plans.items():
            tat_key = self._key("tat", key)
            spacing, credit = plan.spacing, plan.credit

            def undo(tat_key: str = tat_key, spacing: int = spacing, credit: int = credit) -> None:
                with self._client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(tat_key)  # type: ignore[no-untyped-call]
                        raw = pipe.get(tat_key)
                        if raw is None:
                            return
                        back = gcra.given_back(int(raw), at_us, spacing, credit)
                        if back is None:
                            return
                        pipe.multi()
                        pipe.set(tat_key, str(back), keepttl=True)
                        pipe.execute()
                    except redis.exceptions.WatchError:
                        return  # someone was granted meanwhile: the slot stays spent

            self._call(undo)

    def pause(self, key: str, seconds: float) -> None:
        """See :meth:`Limiter.pause`; atomic, so concurrent pauses keep the latest end."""
        check_pause_seconds(seconds)
        args: list[str | int] = [self._now_arg(), gcra.to_us(seconds), KEY_GRACE_MS]
        self._call(lambda: self._pause_script(keys=[self._key("pause", key)], args=args))

    def paused_until(self, key: str) -> float | None:
        """See :meth:`Limiter.paused_until`."""
        keys = [self._key("pause", scope) for scope in gcra.pause_scopes(key)]
        latest_us, now_us = self._call(
            lambda: self._paused_until_script(keys=keys, args=[self._now_arg()])
        )
        return int(latest_us) / gcra.US_PER_S if int(latest_us) > int(now_us) else None

    def unpause(self, key: str) -> None:
        """See :meth:`Limiter.unpause`: one DEL of the key's pause."""
        self._call(lambda: self._client.delete(self._key("pause", key)))

    def in_flight_count(self, key: str) -> int:
        """See :meth:`Limiter.in_flight_count`: leases whose expiry is after now."""

        def count() -> int:
            if self._clock is not None:
                now_us = clock_us(self._clock)
            else:
                seconds, micros = self._client.time()
                now_us = int(seconds) * 1_000_000 + int(micros)
            return int(self._client.zcount(self._key("inflight", key), f"({now_us}", "+inf"))

        return self._call(count)

    def reset(self) -> None:
        """Delete every key under this limiter's namespace."""
        pattern = _glob_escape(self._namespace) + ":*"

        def drop_all() -> None:
            batch: list[Any] = []
            for key in self._client.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    self._client.unlink(*batch)
                    batch.clear()
            if batch:
                self._client.unlink(*batch)

        self._call(drop_all)

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()

    def _key(self, kind: str, key: str) -> str:
        return f"{self._namespace}:{kind}:{key}"

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(clock_us(self._clock))

    def _call(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except redis.exceptions.RedisError as exc:
            raise errors.LimiterError(
                f"redis limiter (namespace {self._namespace!r}) failed: {exc}; "
                "check that Redis is reachable at the configured URL"
            ) from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in _GLOB_SPECIALS else char for char in text)
