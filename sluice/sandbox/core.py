"""The sandbox DSP's state and the checks every API call goes through, free of HTTP.

Order for a ``/v1`` call: auth (401) -> rate limiter (refusal in the profile's style) ->
fault draw -> the action itself (which may raise an :class:`~sluice.sandbox.errors.ApiError`).
Every answer is counted in the stats and noted in the arrival log; ``/_sandbox/*`` calls
are not. Profiles that reveal their limits add the limit's state to every answer that
passed the limiter.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sluice.sandbox.arrivals import ArrivalLog, Timeline
from sluice.sandbox.auth import TokenIssuer
from sluice.sandbox.clock import SandboxClock
from sluice.sandbox.config import SandboxConfig
from sluice.sandbox.entities import EntityStore
from sluice.sandbox.errors import ApiError, Unauthorized
from sluice.sandbox.faults import Fault, FaultInjector
from sluice.sandbox.limiter import ANONYMOUS, SandboxLimiter, Verdict
from sluice.sandbox.reveal import ratelimit_fields
from sluice.sandbox.stats import RequestStats, snapshot
from sluice.sandbox.throttle import refuse

Action = Callable[[float, str], tuple[int, Any]]
"""What a call does once let through: ``(now, app_key) -> (status code, JSON body)``."""

ADMITTED, REFUSED, UNAUTHORIZED = "admitted", "refused", "unauthorized"
"""A ``/v1`` call's outcome in the arrival log."""


@dataclass(frozen=True)
class Call:
    """One API call, as far as the checks need to know it."""

    method: str
    route: str
    """``"<METHOD> <path template>"`` for the stats, e.g. ``"GET /v1/campaigns/{id}/status"``."""
    authorization: str | None = None
    collection: str | None = None
    object_id: str | None = None
    """The object a read of one object names (its advertiser's budgets apply)."""
    body: Any = None
    """The parsed JSON body of a write (None for reads)."""
    idempotency_key: str | None = None

    @property
    def write(self) -> bool:
        """Whether the call spends the write budget."""
        return self.method != "GET"


@dataclass(frozen=True)
class Reply:
    """What to answer: status, JSON body (None for empty), headers, and how."""

    status_code: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    """Seconds to wait before answering (slow and commit-then-timeout faults)."""
    drop: bool = False
    """Drop the connection instead of answering (reset fault)."""


class Sandbox:
    """Objects, limiter, faults, tokens and stats behind the HTTP edge."""

    def __init__(self, config: SandboxConfig, clock: Callable[[], float]) -> None:
        self.clock = SandboxClock(clock)
        self._request_ids = itertools.count(1)
        self.tokens = TokenIssuer(config.token_lifetime_s, config.credentials, config.tokens)
        self._configure(config)

    def _configure(self, config: SandboxConfig) -> None:
        now = self.clock.time()
        self.config = config
        self.store = EntityStore(config)
        self.limiter = SandboxLimiter(config.limits, origin=now)
        self.faults = FaultInjector(config.faults, config.seed)
        self.stats = RequestStats()
        self.arrivals = ArrivalLog(config.arrival_log_cap)
        self.timeline = Timeline(now, config.timeline_cap_s)
        self.maintenance_origin = now

    def next_request_id(self) -> str:
        """A request id unique for this process."""
        return f"req-{next(self._request_ids):08d}"

    def reset(self) -> None:
        """Forget objects, stats, arrivals and limiter state; re-seed, restart schedules.

        The clock keeps its offset: time never moves back.
        """
        self._configure(self.config)

    def reconfigure(self, patch: dict[str, Any]) -> SandboxConfig:
        """Apply a partial update of limits, faults or delays.

        New limits start with empty logs and their schedules from now; objects, stats and
        arrivals are kept.

        Raises:
            ValueError: the patch names a fixed key or an invalid value.
        """
        config = self.config.updated(patch)
        if config.limits != self.config.limits:
            self.limiter = SandboxLimiter(config.limits, origin=self.clock.time())
        if config.faults != self.config.faults:
            self.faults = FaultInjector(config.faults, config.seed)
        if config.maintenance != self.config.maintenance:
            self.maintenance_origin = self.clock.time()
        self.config = self.store.config = config
        return config

    def stats_snapshot(self) -> dict[str, Any]:
        """The ``GET /_sandbox/stats`` answer."""
        return snapshot(self.stats, self.limiter, self.store, self.clock.time())

    def timeline_answer(self) -> dict[str, Any]:
        """The ``GET /_sandbox/timeline`` answer, with scheduled limits per second."""
        schedules = self.limiter.schedules
        return self.timeline.answer(
            lambda at: {name: schedule.limit_at(at) for name, schedule in schedules.items()}
        )

    def plain(self, route: str, status_code: int, body: Any) -> Reply:
        """An unlimited call (health, token): just count it."""
        self.stats.record(route, status_code)
        return Reply(status_code, body)

    def issue_token(self, body: Any) -> Reply:
        """``POST /oauth/token``."""
        route = "POST /oauth/token"
        try:
            return self.plain(route, 200, self.tokens.issue(body, self.clock.time()))
        except ApiError as exc:
            return self.plain(route, exc.status_code, exc.body())

    def call(self, call: Call, action: Action) -> Reply:
        """Run a ``/v1`` call through auth, the limiter and the faults, then ``action``."""
        now = self.clock.time()
        reply, outcome = self._checked(call, action, now)
        status: int | str = "reset" if reply.drop else reply.status_code
        self.stats.record(call.route, status)
        self.arrivals.record(now, call.route, status, outcome)
        if outcome != UNAUTHORIZED:
            self.timeline.record(now, admitted=outcome == ADMITTED)
        return reply

    def create(self, call: Call) -> Reply:
        """``POST /v1/{collection}``, honouring ``Idempotency-Key`` when configured."""

        def action(now: float, app_key: str) -> tuple[int, Any]:
            assert call.collection is not None
            key = call.idempotency_key if self.config.idempotency else None
            if key is not None:
                earlier = self.store.idempotent_answers.get((app_key, key))
                if earlier is not None:
                    return 202, earlier
            answer = self.store.create(call.collection, call.body, now)
            if key is not None:
                self.store.idempotent_answers[(app_key, key)] = answer
            return 202, answer

        return self.call(call, action)

    def _checked(self, call: Call, action: Action, now: float) -> tuple[Reply, str]:
        """The reply to ``call`` at ``now``, and its outcome for the arrival log."""
        try:
            app_key = (
                self.tokens.app_key(call.authorization, now) if self.config.auth else ANONYMOUS
            )
        except Unauthorized as exc:
            return Reply(exc.status_code, exc.body()), UNAUTHORIZED
        maintenance = self._maintenance_left(now)
        if maintenance is not None:
            wait = max(1, math.ceil(maintenance))
            body = {"error": {"code": "MAINTENANCE", "message": "scheduled maintenance"}}
            return Reply(429, body, {"Retry-After": str(wait)}), REFUSED
        verdict = self.limiter.arrive(
            now,
            write=call.write,
            app_key=app_key,
            advertiser_id=self._advertiser_of(call),
            cost=self.config.costs.get(call.route, 1),
        )
        style = self.config.profile_spec.throttle
        if not verdict.admitted:
            self.stats.record_refusal([r.limit_key for r in verdict.refusals])
            answer = refuse(style, verdict, now, app_key)
            return Reply(answer.status_code, answer.body, answer.headers), REFUSED
        reply = self._admitted(call, action, now, app_key)
        if style.reveals:
            reply = replace(reply, headers={**reply.headers, **_revealed(verdict, now)})
        return reply, ADMITTED

    def _maintenance_left(self, now: float) -> float | None:
        """Seconds left of the maintenance window ``now`` falls in, if any."""
        since = now - self.maintenance_origin
        for window in self.config.maintenance:
            end = window.start_s + window.duration_s
            if window.start_s <= since < end:
                return end - since
        return None

    def _advertiser_of(self, call: Call) -> str | None:
        """The advertiser whose budgets a call spends: named by a create, or a read's object."""
        if call.collection is None:
            return None
        if call.write:
            return self.store.advertiser_of(call.collection, call.body)
        if call.object_id is not None:
            return self.store.advertiser_of_object(call.collection, call.object_id)
        return None

    def _admitted(self, call: Call, action: Action, now: float, app_key: str) -> Reply:
        """The answer to a call the limiter let through: a fault, or the action's."""
        plan = self.faults.draw(
            create=call.method == "POST" and call.collection is not None, auth=self.config.auth
        )
        if plan.slow_s:
            self.stats.record_fault(Fault.SLOW)
        if plan.fault is not None:
            self.stats.record_fault(plan.fault)
            if plan.fault is not Fault.COMMIT_THEN_TIMEOUT:
                return _fault_reply(plan.fault, plan.slow_s)
        try:
            status_code, body = action(now, app_key)
        except ApiError as exc:
            return Reply(exc.status_code, exc.body(), delay_s=plan.slow_s)
        if plan.fault is Fault.COMMIT_THEN_TIMEOUT:
            return Reply(status_code, body, delay_s=plan.slow_s + self.config.faults.hang_s)
        return Reply(status_code, body, delay_s=plan.slow_s)


def _revealed(verdict: Verdict, now: float) -> dict[str, str]:
    """The rate-limit fields of the tightest limit the call was judged by (none: none)."""
    tightest = verdict.tightest(now)
    return {} if tightest is None else ratelimit_fields(tightest[1], now)


def _fault_reply(fault: Fault, delay_s: float) -> Reply:
    """The answer of a fault that replaces the normal one (nothing happened)."""
    if fault is Fault.ERROR_5XX:
        return Reply(500, _error("INTERNAL", "internal error (injected)"), delay_s=delay_s)
    if fault is Fault.UNAVAILABLE_503:
        body = _error("UNAVAILABLE", "service unavailable (injected)")
        return Reply(503, body, {"Retry-After": "1"}, delay_s=delay_s)
    if fault is Fault.ERROR_BODY:
        body = _error("TEMPORARY_ERROR", "temporary error, please retry (injected)")
        body["error"]["is_transient"] = True
        return Reply(200, body, delay_s=delay_s)
    if fault is Fault.TOKEN_EXPIRY:
        error = Unauthorized("access token expired; request a new one at /oauth/token")
        return Reply(error.status_code, error.body(), delay_s=delay_s)
    # Fault.RESET: nothing is answered at all.
    return Reply(200, None, delay_s=delay_s, drop=True)


def _error(code: str, message: str) -> dict[str, dict[str, Any]]:
    return {"error": {"code": code, "message": message}}
