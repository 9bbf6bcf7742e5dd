"""Redis limiter for distributed mode: one atomic Lua script per acquire, on one Redis or
a Redis Cluster.

Every worker on every host shares the same limits because the whole decision (pauses,
in-flight cap, GCRA on every key, then the commit) runs inside one Lua script, which
Redis executes atomically, and reads the *Redis server's* clock (``TIME``), so host
clocks never matter. Tests inject a clock; its time is then passed in instead.

Keys under ``namespace`` (default ``sluice:rl``), each carrying the **hash tag** of its
limit key's root (:func:`slot_tag`: the text before the first ``:`` or ``#``, which is the
provider's name for every key Sluice makes)::

    <ns>:{<root>}:born            when this root's state began (microseconds)
    <ns>:{<root>}:tat:<key>       GCRA theoretical arrival time, integer microseconds
    <ns>:{<root>}:pause:<key>     end of the pause on <key>, integer microseconds
    <ns>:{<root>}:inflight:<key>  sorted set of lease ids scored by their expiry (microseconds)

A Redis Cluster places a key by its hash tag alone, so every key of one provider lives in
one slot, and one script can read and write all the keys of a grant (provider-wide,
per-operation, per-account, in-flight and window holds) atomically, on one server's clock.
The price: one provider's limiter traffic is served by one shard (docs/scaling.md). On a
cluster, a grant whose keys have different roots is refused with ``InvalidValue`` before
anything is sent; one Redis server takes any keys.

Every key expires when idle: a TAT, pause or in-flight set a grace period
(:data:`KEY_GRACE_MS`) after it stops constraining anything, and ``born``
:data:`BORN_TTL_MS` after the last acquire on its root. The grace also keeps a key alive
when an injected test clock runs ahead of or behind the server's clock, which is what Redis
measures TTLs with.

A root with no ``born`` key lost the limiter's state (a flush, a restart, a cluster
failover that lost writes) or has been idle past ``BORN_TTL_MS``. The first script to
notice writes the server's time there, and each of that root's keys is then held as a
limiter that lost its state must be (:mod:`gcra`: 1 s, or one spacing if longer), so the
limit holds across the loss; on a cluster each shard's loss is noticed on its own roots.
The Redis must not bring back old state on its own: run it without persistence
(``--save '' --appendonly no``; Sluice rebuilds what it needs) and with
``maxmemory-policy noeviction``, since an evicted TAT with ``born`` still present would let
one grant come early.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
import redis.exceptions
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot

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
from sluice.redis_url import parse_redis_url

T = TypeVar("T")

Client = redis.Redis | RedisCluster
"""A client of one Redis server or of a Redis Cluster: the limiter works on either."""

KEY_GRACE_MS = 60_000
BORN_TTL_MS = 7 * 86_400_000
"""A root idle this long forgets when its state began: its next grant waits a cold hold."""

_ROOT = re.compile(r"[^:#]*")
_FAILURES = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)

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

# KEYS: n_born born keys (one per root), then n_rate TAT keys, then n_pause pause keys,
#       then the in-flight key if any.
# ARGV: now_us ('' = server TIME), n_born, n_rate, n_pause, has_inflight, grace_ms,
#       max_in_flight, lease_ttl_us, lease_id, born_ttl_ms, then six values per TAT key:
#       step_us (cost * spacing), catch-up credit_us, cold-start hold_us, allow_us
#       ((burst + 1 - cost) * spacing), the index of its root's born key, and the catch-up
#       of a key further behind than credit_us (idle_credit_us); with an in-flight cap, its
#       cold-start hold_us and the index of its root's born key.
# Returns {granted 0/1, wait_us, reason, now_us}, and when granted a fifth element: each
# TAT key's TAT before and after, as strings. Mirrors gcra.decide + in_flight_wait.
_ACQUIRE_LUA = (
    _NOW_LUA
    + """
local n_born = tonumber(ARGV[2])
local n_rate = tonumber(ARGV[3])
local n_pause = tonumber(ARGV[4])
local grace_ms = tonumber(ARGV[6])
local born_ttl_ms = tonumber(ARGV[10])

-- No born key: this root lost the limiter's state (flushed, restarted, failed over) or was
-- idle past its TTL. Start it now. A live one is kept while its root is used.
local borns = {}
for b = 1, n_born do
  local born = tonumber(redis.call('GET', KEYS[b]) or '-1')
  if born < 0 then
    born = now
    redis.call('SET', KEYS[b], string.format('%d', born), 'PX', born_ttl_ms)
  elseif redis.call('PTTL', KEYS[b]) < born_ttl_ms / 2 then
    redis.call('PEXPIRE', KEYS[b], born_ttl_ms)
  end
  borns[b] = born
end

local first_pause = n_born + n_rate + 1
local pause_wait = 0
for i = first_pause, first_pause + n_pause - 1 do
  local wait = tonumber(redis.call('GET', KEYS[i]) or '0') - now
  if wait > pause_wait then pause_wait = wait end
end
local rate_wait = 0
local tats = {}
for i = 1, n_rate do
  local base = 10 + 6 * (i - 1)
  local hold = tonumber(ARGV[base + 3])
  -- No hold (cold_start=False): no floor either, as in gcra.decide; born would read as a
  -- TAT the wide credit catches up from.
  local floor = 0
  if hold > 0 then floor = borns[tonumber(ARGV[base + 5])] + hold end
  tats[i] = math.max(tonumber(redis.call('GET', KEYS[n_born + i]) or '0'), floor)
  local wait = tats[i] - tonumber(ARGV[base + 4]) - now
  if wait > rate_wait then rate_wait = wait end
end
if ARGV[5] == '1' then
  -- An in-flight cap holds its root cold too: with no rate key, a lost pause would let it go.
  local extra = 10 + 6 * n_rate
  local wait = borns[tonumber(ARGV[extra + 2])] + tonumber(ARGV[extra + 1]) - now
  if wait > rate_wait then rate_wait = wait end
end
if pause_wait > 0 or rate_wait > 0 then
  local reason = 'rate'
  if pause_wait > 0 then reason = 'paused' end
  return {0, math.max(pause_wait, rate_wait), reason, now}
end

if ARGV[5] == '1' then
  local key = KEYS[first_pause + n_pause]
  local max_in_flight = tonumber(ARGV[7])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local live = redis.call('ZCARD', key)
  if live >= max_in_flight then
    local nth = live - max_in_flight
    local freeing = redis.call('ZRANGE', key, nth, nth, 'WITHSCORES')
    return {0, tonumber(freeing[2]) - now, 'in_flight', now}
  end
  redis.call('ZADD', key, now + tonumber(ARGV[8]), ARGV[9])
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', key, math.ceil((tonumber(last[2]) - now) / 1000) + grace_ms)
end

local undo = {}
for i = 1, n_rate do
  local base = 10 + 6 * (i - 1)
  local credit = tonumber(ARGV[base + 2])
  if now - tats[i] > credit then credit = tonumber(ARGV[base + 6]) end
  local tat = math.max(tats[i], now - credit) + tonumber(ARGV[base + 1])
  redis.call('SET', KEYS[n_born + i], string.format('%d', tat),
             'PX', math.ceil((tat - now) / 1000) + grace_ms)
  undo[2 * i - 1] = string.format('%d', tats[i])
  undo[2 * i] = string.format('%d', tat)
end
return {1, 0, '', now, undo}
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

# KEYS[1]: in-flight key. ARGV: now_us ('' = server TIME), lease_id, hold_us, grace_ms.
# The lease expires hold_us from now (re-added if it had lapsed); the set outlives it and
# is never shortened (others' leases may be longer).
_HOLD_LUA = (
    _NOW_LUA
    + """
local hold_us = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + hold_us, ARGV[2])
local life_ms = math.floor(hold_us / 1000) + tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < life_ms then
  redis.call('PEXPIRE', KEYS[1], life_ms)
end
return 1
"""
)

# KEYS[1]: in-flight key. ARGV: now_us ('' = server TIME). Returns the live leases.
_IN_FLIGHT_COUNT_LUA = (
    _NOW_LUA
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', now), '+inf')
"""
)

# KEYS: TAT keys. ARGV: per key, the TAT a grant found and the one it left. Mirrors
# gcra.undone on each key: back to the first only while the TAT is still the second.
_GIVE_BACK_LUA = """
for i = 1, #KEYS do
  local raw = redis.call('GET', KEYS[i])
  if raw and tonumber(raw) == tonumber(ARGV[2 * i]) then
    redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'KEEPTTL')
  end
end
return 1
"""

# KEYS: TAT keys. ARGV: now_us ('' = server TIME), grace_ms, then per key the offset.
# Mirrors gcra.pushed_back on each key: raised to now + offset, never lowered.
_PUSH_BACK_LUA = (
    _NOW_LUA
    + """
local grace_ms = tonumber(ARGV[2])
for i = 1, #KEYS do
  local target = now + tonumber(ARGV[2 + i])
  local raw = redis.call('GET', KEYS[i])
  if not raw or tonumber(raw) < target then
    redis.call('SET', KEYS[i], string.format('%d', target),
               'PX', math.max(1, math.ceil((target - now) / 1000)) + grace_ms)
  end
end
return 1
"""
)

_GLOB_SPECIALS = "\\*?[]"


def slot_tag(key: str) -> str:
    """The hash tag of a limit key: its root, the text before the first ``:`` or ``#``.

    Sluice's limit keys all start with their provider's name (``acme``, ``acme:write``,
    ``acme:advertiser=7``, ``acme:in_flight``, ``acme:write#window``), so every key one
    grant touches shares it. A root that could not be a hash tag (empty, or holding a
    brace) is replaced by ``-`` (a name no provider may have).
    """
    root = _ROOT.match(key)
    text = root.group(0) if root else ""
    return text if text and "{" not in text and "}" not in text else "-"


def connect(url: str, **client_kwargs: Any) -> Client:
    """A client for ``url``: a ``RedisCluster`` for ``redis+cluster://`` URLs (which
    connects to find the cluster's nodes at once), else a ``redis.Redis`` (which connects
    at its first command). See :mod:`sluice.redis_url`."""
    target = parse_redis_url(url)
    if not target.cluster:
        return redis.Redis.from_url(url, **client_kwargs)
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],  # type: ignore[no-untyped-call]
        username=target.username,
        password=target.password,
        ssl=target.ssl,
        **client_kwargs,
    )


@dataclass(frozen=True)
class _Scripts:
    acquire: Script
    pause: Script
    paused_until: Script
    hold: Script
    in_flight_count: Script
    give_back: Script
    push_back: Script


class RedisLimiter:
    """:class:`~sluice.ratelimit.base.Limiter` shared through Redis by every process and host.

    Args:
        client: a ``redis.Redis`` or ``RedisCluster``; its connection pool is shared by
            threads. Or ``None`` with ``connect``, a function that makes one at first use
            (a cluster client connects when made, so a cluster that is down at start-up
            fails the first call, as a plain Redis does, not the process).
        namespace: prefix of every key this limiter writes; ``reset`` drops them all.
            No ``{`` or ``}``: the keys' hash tags follow it.
        clock: tests only; when given, its time replaces the Redis server's ``TIME``.
        margin: extra fraction of the interval kept between grants (see :mod:`gcra`).
        catch_up_s: how late a caller may be for its slot without the schedule slipping
            (see :mod:`gcra`; capped at half the margin's slack).
        cold_start: hold every key after the Redis lost the limiter's state (see
            :mod:`gcra`); off only for tests that start from a known-empty past.
        key_grace_ms: how long a TAT, pause or in-flight set outlives what it constrains.
    """

    def __init__(
        self,
        client: Client | None,
        namespace: str = "sluice:rl",
        clock: Clock | None = None,
        margin: float = 0.01,
        catch_up_s: float = 0.0,
        *,
        cold_start: bool = True,
        key_grace_ms: int = KEY_GRACE_MS,
        connect: Callable[[], Client] | None = None,
    ) -> None:
        gcra.check_margin(margin)
        self._catch_up_us = gcra.to_us(catch_up_s)
        self._cold_start = cold_start
        if not namespace or "{" in namespace or "}" in namespace:
            raise errors.InvalidValue(
                f"RedisLimiter namespace must be non-empty, without '{{' or '}}', got {namespace!r}"
            )
        if (client is None) == (connect is None):
            raise errors.InvalidValue("RedisLimiter needs a client or a connect function")
        if isinstance(key_grace_ms, bool) or key_grace_ms < 1:
            raise errors.InvalidValue(f"key_grace_ms must be >= 1, got {key_grace_ms!r}")
        self._grace_ms = key_grace_ms
        self._namespace = namespace
        self._clock = clock
        self._margin = margin
        self._connect = connect
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._scripts: _Scripts | None = None
        if client is not None:
            self._attach(client)

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
        key_grace_ms: int = KEY_GRACE_MS,
        **client_kwargs: Any,
    ) -> RedisLimiter:
        """Build a limiter for ``url`` (``redis://host:6379/0``, or a cluster's
        ``redis+cluster://host:7000,host2:7000``: :mod:`sluice.redis_url`).

        Nothing connects until the first call. Socket timeouts default to 2 s so a dead
        Redis fails fast with ``LimiterError`` instead of hanging every worker;
        ``client_kwargs`` override them.
        """
        client_kwargs.setdefault("socket_timeout", 2.0)
        client_kwargs.setdefault("socket_connect_timeout", 2.0)
        cluster = parse_redis_url(url).cluster
        return cls(
            None if cluster else connect(url, **client_kwargs),
            namespace=namespace,
            clock=clock,
            margin=margin,
            catch_up_s=catch_up_s,
            cold_start=cold_start,
            key_grace_ms=key_grace_ms,
            connect=(lambda: connect(url, **client_kwargs)) if cluster else None,
        )

    @property
    def client(self) -> Client:
        """The Redis client this limiter talks through (made now if not yet)."""
        return self._call(lambda: self._ready()[0])

    @property
    def is_cluster(self) -> bool:
        """Whether this limiter runs on a Redis Cluster (known once a client is made)."""
        return isinstance(self._client, RedisCluster) or self._connect is not None

    def acquire(
        self,
        limits: Sequence[LimitSpec],
        *,
        in_flight: InFlight | None = None,
        wide: Collection[str] = (),
    ) -> Grant:
        """See :meth:`Limiter.acquire`; one round trip, atomic on the server."""
        check_acquire_args(limits, in_flight)
        plans = gcra.plan(limits, self._margin, self._catch_up_us, wide)
        guarded = list(plans) + ([in_flight.key] if in_flight else [])
        scopes = gcra.pause_scopes_all(guarded)
        roots = list(dict.fromkeys(slot_tag(key) for key in guarded))
        keys = [self._born(root) for root in roots]
        keys += [self._key("tat", key) for key in plans]
        keys += [self._key("pause", scope) for scope in scopes]
        lease_id = uuid.uuid4().hex if in_flight else ""
        if in_flight is not None:
            keys.append(self._key("inflight", in_flight.key))
        args: list[str | int] = [
            self._now_arg(),
            len(roots),
            len(plans),
            len(scopes),
            1 if in_flight else 0,
            self._grace_ms,
            in_flight.max_in_flight if in_flight else 0,
            gcra.to_us(in_flight.ttl_s) if in_flight else 0,
            lease_id,
            BORN_TTL_MS,
        ]
        for key, p in plans.items():
            hold = p.hold if self._cold_start else 0
            idle_credit = p.credit if p.idle_credit is None else p.idle_credit
            args += [p.step, p.credit, hold, p.allow, roots.index(slot_tag(key)) + 1, idle_credit]
        if in_flight is not None:
            hold = gcra.COLD_HOLD_US if self._cold_start else 0
            args += [hold, roots.index(slot_tag(in_flight.key)) + 1]
        self._check_one_slot(keys)
        answer = self._run("acquire", keys, args)
        granted, wait_us, reason, now_us = answer[:4]
        if not granted:
            return Grant(False, int(wait_us) / gcra.US_PER_S, _text(reason))
        within = sendgate.send_within_s(limits, self._margin, self._catch_up_us)
        tats = [int(value) for value in answer[4]]
        undo = tuple((key, tats[2 * i], tats[2 * i + 1]) for i, key in enumerate(plans))
        at = int(now_us) / gcra.US_PER_S
        steps = gcra.paced_steps(plans, wide)
        return Grant(True, 0.0, "", lease_id or None, at, within, undo=undo, steps=steps)

    def release(self, lease_id: str, key: str) -> None:
        """See :meth:`Limiter.release`."""
        inflight = self._key("inflight", key)
        self._call(lambda: self._ready()[0].zrem(inflight, lease_id))

    def hold(self, lease_id: str, key: str, seconds: float) -> None:
        """See :meth:`Limiter.hold`; one script on the key's server and its clock.

        The expiry is at least ``seconds`` after the caller asked; a lease that had lapsed
        meanwhile is taken again.
        """
        check_pause_seconds(seconds)
        args: list[str | int] = [self._now_arg(), lease_id, gcra.to_us(seconds), self._grace_ms]
        self._run("hold", [self._key("inflight", key)], args)

    def give_back(self, undo: Sequence[tuple[str, int, int]]) -> None:
        """See :meth:`Limiter.give_back`; one script, so each key's undo is atomic (a grant
        by anyone in between leaves its TAT elsewhere, and it is kept)."""
        if not undo:
            return
        keys = [self._key("tat", key) for key, _, _ in undo]
        args: list[str | int] = [value for _, before, after in undo for value in (before, after)]
        self._check_one_slot(keys)
        self._run("give_back", keys, args)

    def push_back(self, moves: Sequence[tuple[str, int]]) -> None:
        """See :meth:`Limiter.push_back`; one script on the server's clock, so a grant by
        anyone cannot slip between reading a key's TAT and raising it."""
        if not moves:
            return
        keys = [self._key("tat", key) for key, _ in moves]
        args: list[str | int] = [self._now_arg(), self._grace_ms]
        args += [offset_us for _, offset_us in moves]
        self._check_one_slot(keys)
        self._run("push_back", keys, args)

    def pause(self, key: str, seconds: float) -> None:
        """See :meth:`Limiter.pause`; atomic, so concurrent pauses keep the latest end."""
        check_pause_seconds(seconds)
        args: list[str | int] = [self._now_arg(), gcra.to_us(seconds), self._grace_ms]
        self._run("pause", [self._key("pause", key)], args)

    def paused_until(self, key: str) -> float | None:
        """See :meth:`Limiter.paused_until`."""
        keys = [self._key("pause", scope) for scope in gcra.pause_scopes(key)]
        latest_us, now_us = self._run("paused_until", keys, [self._now_arg()])
        return int(latest_us) / gcra.US_PER_S if int(latest_us) > int(now_us) else None

    def unpause(self, key: str) -> None:
        """See :meth:`Limiter.unpause`: one DEL of the key's pause."""
        pause = self._key("pause", key)
        self._call(lambda: self._ready()[0].delete(pause))

    def in_flight_count(self, key: str) -> int:
        """See :meth:`Limiter.in_flight_count`: leases whose expiry is after now (the clock
        of the server holding the key)."""
        return int(self._run("in_flight_count", [self._key("inflight", key)], [self._now_arg()]))

    def reset(self) -> None:
        """Delete every key under this limiter's namespace (on every node of a cluster)."""
        pattern = _glob_escape(self._namespace) + ":*"

        def drop_all() -> None:
            client = self._ready()[0]
            batch: list[Any] = []
            for key in client.scan_iter(match=pattern, count=500):
                batch.append(key)
                if len(batch) >= 500:
                    client.unlink(*batch)
                    batch.clear()
            if batch:
                client.unlink(*batch)

        self._call(drop_all)

    def close(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            self._client.close()

    def _attach(self, client: Client) -> _Scripts:
        scripts = _Scripts(
            acquire=client.register_script(_ACQUIRE_LUA),
            pause=client.register_script(_PAUSE_LUA),
            paused_until=client.register_script(_PAUSED_UNTIL_LUA),
            hold=client.register_script(_HOLD_LUA),
            in_flight_count=client.register_script(_IN_FLIGHT_COUNT_LUA),
            give_back=client.register_script(_GIVE_BACK_LUA),
            push_back=client.register_script(_PUSH_BACK_LUA),
        )
        self._client, self._scripts = client, scripts
        return scripts

    def _ready(self) -> tuple[Client, _Scripts]:
        client, scripts = self._client, self._scripts
        if client is not None and scripts is not None:
            return client, scripts
        with self._lock:
            if self._client is None or self._scripts is None:
                assert self._connect is not None  # __init__ takes a client or a connect
                made = self._connect()
                return made, self._attach(made)
            return self._client, self._scripts

    def _run(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        def run() -> Any:
            script: Script = getattr(self._ready()[1], name)
            return script(keys=keys, args=args)

        return self._call(run)

    def _check_one_slot(self, keys: list[str]) -> None:
        """On a cluster, refuse keys of several slots with a clear error, sending nothing."""
        if not self.is_cluster or len({key_slot(key.encode()) for key in keys}) <= 1:
            return
        roots = sorted({key.split("{", 1)[1].split("}", 1)[0] for key in keys if "{" in key})
        raise errors.InvalidValue(
            "on a Redis Cluster one grant's limit keys must share their root (the text "
            f"before the first ':'), so they hash to one slot; got roots {', '.join(roots)}"
        )

    def _born(self, root: str) -> str:
        return f"{self._namespace}:{{{root}}}:born"

    def _key(self, kind: str, key: str) -> str:
        return f"{self._namespace}:{{{slot_tag(key)}}}:{kind}:{key}"

    def _now_arg(self) -> str:
        return "" if self._clock is None else str(clock_us(self._clock))

    def _call(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except _FAILURES as exc:
            raise errors.LimiterError(
                f"redis limiter (namespace {self._namespace!r}) failed: {exc}; "
                "check that Redis is reachable at the configured URL"
            ) from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in _GLOB_SPECIALS else char for char in text)
