"""Prometheus metrics: every instrument Sluice records, and how limit keys become labels.

The instruments are module-level (prometheus_client's way) and the engine, the executor
and the providers record through the small functions below, each a few microseconds.
Names follow Prometheus conventions: a ``sluice_`` prefix, base units (seconds),
``_total`` on counters, and labels of bounded sets only: the provider's name (label
``provider``), an operation, a status class, a reason. Never a task id, an external id or
an account: a per-account limit key folds into its provider and scope
(:func:`fold_key`: ``sandbox:advertiser_id=adv-1`` counts under ``sandbox`` /
``advertiser_id``); the detail of one account is in the API.

Several processes on one host (Celery's prefork children, ``sluice up --workers N``)
each write their counters to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode, chosen when prometheus_client is first imported: :mod:`sluice.metrics_host`
sets the directory up before that). :func:`exposition` sums them for a scrape.

Gauges of shared state (tasks by status, pauses, rates in force, fair shares) are not
recorded here:
they are read from the database and the limiter when scraped
(:mod:`sluice.engine.gauges`), through :class:`StateFamilies`.
"""

from __future__ import annotations

import contextvars
import functools
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The text format every Prometheus version reads (what ``generate_latest`` writes)."""
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ALL_SCOPE = "all"
OTHER_KEYS = "_other"
"""The ``fairness_key`` label of every fairness key not shown on its own (summed)."""
FAIR_SHARE_TOP_KEYS = 10
"""Fairness keys shown on their own per provider, besides those with a configured weight."""
"""The scope of a provider-wide key (``sandbox``)."""
NO_OPERATION = "other"
STATUS_REPORT = "status_report"
"""The event label of an outcome that only records what the provider reported."""

WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# --- the instruments ---------------------------------------------------------------------

GRANTS = Counter(
    "sluice_limiter_grants_total",
    "Requests the limiter granted (each lets one request go to the provider).",
    ["provider"],
)
REFUSALS = Counter(
    "sluice_limiter_refusals_total",
    "Times the limiter refused a request, by reason: rate (the budget is spent for now), "
    "paused (the provider or a key is paused), in_flight (max_in_flight requests running).",
    ["provider", "reason"],
)
GRANT_WAIT = Histogram(
    "sluice_limiter_grant_wait_seconds",
    "From the claim of a unit of work to its grant: how long it waited for the limiter.",
    ["provider"],
    buckets=WAIT_BUCKETS_S,
)
GRANTS_EXPIRED = Counter(
    "sluice_limiter_grants_expired_total",
    "Grants not used within their send window: nothing was sent, the work went back.",
    ["provider"],
)
GRANTS_WRITTEN_LATE = Counter(
    "sluice_limiter_grants_written_late_total",
    "Requests written after their grant's send window (a thread lost the CPU between its "
    "send check and the socket): the keys' schedule was moved after the write.",
    ["provider"],
)
UPSTREAM_REQUESTS = Counter(
    "sluice_upstream_requests_total",
    "HTTP requests sent to providers, by operation (submit, poll, lookup, token) and status "
    "class (2xx, 4xx, 5xx...; timeout, disconnected when no answer came, connect_error when "
    "nothing was sent).",
    ["provider", "operation", "status_class"],
)
UPSTREAM_LATENCY = Histogram(
    "sluice_upstream_request_duration_seconds",
    "From sending a request to a provider to its answer's headers (or the failure).",
    ["provider", "operation"],
    buckets=LATENCY_BUCKETS_S,
)
IN_FLIGHT = Gauge(
    "sluice_upstream_requests_in_flight",
    "Requests to providers running now.",
    ["provider"],
    multiprocess_mode="livesum",
)
SIGNALS = Counter(
    "sluice_ratelimit_signals_total",
    "Answers read as 'slow down', by kind: http_<status> (e.g. http_429) or "
    "error_code_<code> (e.g. Meta's 613 with HTTP 400). Each pauses the provider.",
    ["provider", "signal"],
)
RETRIES = Counter(
    "sluice_retries_total",
    "Failed attempts that will be tried again after a backoff (transient errors).",
    ["provider", "operation"],
)
VALIDATION_ERRORS = Counter(
    "sluice_validation_errors_total",
    "Tasks the provider refused as invalid (at submit, or later in a status report): they "
    "ended in Error with its message.",
    ["provider"],
)
OUTCOMES = Counter(
    "sluice_task_outcomes_total",
    "Outcomes recorded for tasks, by the event written to their history (submitted, "
    "attempt_failed, rate_limited, rejected, gave_up...; status_report: what a poll read).",
    ["provider", "operation", "event"],
)

# labels() validates and locks on every call; the children are looked up once instead.
_grants = functools.cache(GRANTS.labels)
_refusals = functools.cache(REFUSALS.labels)
_grant_wait = functools.cache(GRANT_WAIT.labels)
_expired = functools.cache(GRANTS_EXPIRED.labels)
_written_late = functools.cache(GRANTS_WRITTEN_LATE.labels)
_requests = functools.cache(UPSTREAM_REQUESTS.labels)
_latency = functools.cache(UPSTREAM_LATENCY.labels)
_in_flight = functools.cache(IN_FLIGHT.labels)
_signals = functools.cache(SIGNALS.labels)
_retries = functools.cache(RETRIES.labels)
_validation = functools.cache(VALIDATION_ERRORS.labels)
_outcomes = functools.cache(OUTCOMES.labels)

_operation: contextvars.ContextVar[str] = contextvars.ContextVar(
    "sluice_operation", default=NO_OPERATION
)
_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn recording on or off in this process (the overhead benchmark compares both)."""
    global _enabled
    _enabled = enabled


# --- recording -------------------------------------------------------------------------

OPERATIONS = ("submit", "poll", "lookup")
"""Operations a task's request can be (``token`` requests are not a task's)."""
REFUSAL_REASONS = ("rate", "paused", "in_flight")


def declare(provider: str, signals: Iterable[str] = ()) -> None:
    """Export ``provider``'s counters at 0 now, before anything happens to them.

    Prometheus's ``increase()`` and ``rate()`` cannot see a series' first sample: a counter
    first exported at 1 shows no increase, so an alert on the first 429 or the first
    validation error would stay silent. ``signals`` are the rate-limit signal labels the
    provider's configuration can produce (``http_429``, ``error_code_613``).
    """
    if not _enabled:
        return
    _grants(provider)
    _expired(provider)
    _written_late(provider)
    _validation(provider)
    for reason in REFUSAL_REASONS:
        _refusals(provider, reason)
    for name in OPERATIONS:
        _retries(provider, name)
    for signal in signals:
        _signals(provider, signal)


def granted(provider: str, waited_s: float | None) -> None:
    """One grant; ``waited_s`` since the unit was claimed, when known."""
    if not _enabled:
        return
    _grants(provider).inc()
    if waited_s is not None:
        _grant_wait(provider).observe(max(0.0, waited_s))


def refused(provider: str, reason: str) -> None:
    """One refusal by the limiter."""
    if _enabled:
        _refusals(provider, reason or "unknown").inc()


def grant_expired(provider: str) -> None:
    if _enabled:
        _expired(provider).inc()


def grant_written_late(provider: str) -> None:
    if _enabled:
        _written_late(provider).inc()


@contextmanager
def operation(name: str) -> Iterator[None]:
    """Requests sent inside this block count under operation ``name``."""
    token = _operation.set(name)
    try:
        yield
    finally:
        _operation.reset(token)


def current_operation() -> str:
    return _operation.get()


def status_class(status_code: int) -> str:
    """``2xx`` for 200-299, and so on."""
    return f"{status_code // 100}xx"


@dataclass
class UpstreamCall:
    """One request in flight to a provider; :meth:`done` records how it ended."""

    provider: str
    operation: str
    started: float
    recorded: bool = field(default=False)

    def done(self, outcome: str, ended: float) -> None:
        """Record the request with ``outcome`` (a status class or a failure kind)."""
        if self.recorded:
            return
        self.recorded = True
        _requests(self.provider, self.operation, outcome).inc()
        _latency(self.provider, self.operation).observe(max(0.0, ended - self.started))


def upstream_started(provider: str, started: float) -> UpstreamCall | None:
    """A request to ``provider`` starts now (None when recording is off)."""
    if not _enabled:
        return None
    _in_flight(provider).inc()
    return UpstreamCall(provider, _operation.get(), started)


def upstream_ended(call: UpstreamCall | None, outcome: str | None, ended: float) -> None:
    """The request ended: with ``outcome`` it counts, with None it was never sent."""
    if call is None:
        return
    _in_flight(call.provider).dec()
    if outcome is not None:
        call.done(outcome, ended)


def rate_limit_signal(provider: str, signal: str) -> None:
    if _enabled:
        _signals(provider, signal).inc()


def outcomes(provider: str, operation: str, recorded: Iterable[tuple[str | None, str]]) -> None:
    """Outcomes of one request, as ``(event, new status)``: retries, validation errors and
    every event counted.

    A validation error is a task the provider refused: ``rejected`` at submit, or a status
    report of Error (``event`` None) from a poll.
    """
    if not _enabled:
        return
    for event, status in recorded:
        _outcomes(provider, operation, event or STATUS_REPORT).inc()
        if event == "attempt_failed":
            _retries(provider, operation).inc()
        elif status == "Error" and event in ("rejected", None):
            _validation(provider).inc()


# --- limit keys as labels ----------------------------------------------------------------

_WINDOW = re.compile(r"\d+(?:\.\d+)?(?:ms|s|min|h|d)")
"""A window appended to a key (``format_duration``'s text: ``1h``, ``10min``, ``250ms``)."""


def fold_key(key: str) -> tuple[str, str]:
    """A limit key as ``(provider, scope)``, with every account's value dropped.

    ``sandbox`` -> (sandbox, all); ``sandbox:write`` -> (sandbox, write);
    ``sandbox:advertiser_id=adv-1`` -> (sandbox, advertiser_id);
    ``sandbox:write:advertiser_id=42:1h`` -> (sandbox, write:advertiser_id:1h).

    Keys Sluice makes hold no ``:`` in an account's value (a value that would is written in
    its digest form, :func:`sluice.providers.limits.account_value`); a key kept from before
    (a pause, a learned rate) may, and its value is dropped all the same: after the
    ``per=`` part only a window (the last part, ``1h``) is kept, so no value reaches a label.
    """
    provider, _, rest = key.partition(":")
    if not rest:
        return provider, ALL_SCOPE
    parts = rest.split(":")
    scope: list[str] = []
    for index, part in enumerate(parts):
        name, per, _ = part.partition("=")
        scope.append(name)
        if per:
            tail = parts[index + 1 :]
            if tail and _WINDOW.fullmatch(tail[-1]):
                scope.append(tail[-1])
            break
    return provider, ":".join(scope)


# --- shared state, read at scrape time ---------------------------------------------------


@dataclass(frozen=True)
class Pause:
    """A pause running now on a limit key."""

    key: str
    remaining_s: float


@dataclass(frozen=True)
class RateInForce:
    """A limit key's configured rate and the rate in force (requests per second)."""

    key: str
    configured_per_s: float
    in_force_per_s: float
    source: str


@dataclass(frozen=True)
class FairShare:
    """One fairness key on a provider's budget: its share of the last minute's claims."""

    provider: str
    key: str
    share: float
    waiting: int
    weighted: bool = False
    """A weight is configured for it (``fairness_weights``): always its own series."""


@dataclass(frozen=True)
class QuotaUse:
    """A quota key's limit and the units used of it in its current window."""

    key: str
    limit: int
    used: int


@dataclass(frozen=True)
class State:
    """What a scrape reports of the shared state (database, limiter)."""

    tasks: dict[tuple[str, str], int] = field(default_factory=dict)
    """Tasks by (provider, status)."""
    oldest_due_s: dict[str, float] = field(default_factory=dict)
    """By provider: how long the oldest task due to be sent has been due."""
    pauses: Sequence[Pause] = ()
    providers: Sequence[str] = ()
    rates: Sequence[RateInForce] = ()
    shares: Sequence[FairShare] = ()
    quotas: Sequence[QuotaUse] = ()
    """Every quota key (a ``per`` quota's accounts as read, and its ``*`` key at 0)."""
    fair_share_keys: int = FAIR_SHARE_TOP_KEYS
    """Fairness keys named per provider besides the weighted ones (:func:`fold_shares`)."""


class StateFamilies(Collector):
    """Gauges of the shared state, from ``read()`` at each scrape (cache it there)."""

    def __init__(self, read: Callable[[], State]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from state_families(self._read())


def state_families(state: State) -> Iterator[GaugeMetricFamily]:
    """The gauge families of ``state``; per-account keys summed into provider and scope."""
    tasks = GaugeMetricFamily(
        "sluice_tasks",
        "Tasks in the database by provider and status (cluster-wide; cached a few seconds).",
        labels=["provider", "status"],
    )
    for (provider, status), count in sorted(state.tasks.items()):
        tasks.add_metric([provider, status], count)
    yield tasks

    oldest = GaugeMetricFamily(
        "sluice_queue_oldest_due_seconds",
        "How long the oldest task due to be sent or polled has been due (0: none waiting).",
        labels=["provider"],
    )
    for provider in state.providers:
        oldest.add_metric([provider], round(state.oldest_due_s.get(provider, 0.0), 3))
    yield oldest

    active: dict[tuple[str, str], int] = {}
    remaining: dict[tuple[str, str], float] = {}
    for pause in state.pauses:
        labels = fold_key(pause.key)
        active[labels] = active.get(labels, 0) + 1
        remaining[labels] = max(remaining.get(labels, 0.0), pause.remaining_s)
    for provider in state.providers:
        active.setdefault((provider, ALL_SCOPE), 0)
        remaining.setdefault((provider, ALL_SCOPE), 0.0)
    paused = GaugeMetricFamily(
        "sluice_paused",
        "Limit keys paused now, by provider and scope (a provider-wide pause is scope all).",
        labels=["provider", "scope"],
    )
    left = GaugeMetricFamily(
        "sluice_pause_remaining_seconds",
        "Seconds until the longest pause of the provider and scope ends "
        "(0: not paused; +Inf: until resumed).",
        labels=["provider", "scope"],
    )
    for labels in sorted(active):
        paused.add_metric(list(labels), active[labels])
        left.add_metric(list(labels), round(remaining[labels], 3))
    yield paused
    yield left

    configured = GaugeMetricFamily(
        "sluice_limit_configured_requests_per_second",
        "The configured rate of each limit key, by provider and scope.",
        labels=["provider", "scope"],
    )
    in_force = GaugeMetricFamily(
        "sluice_limit_in_force_requests_per_second",
        "The rate in force now (the lowest of configured, pinned, learned and quota pace), "
        "and which of them sets it.",
        labels=["provider", "scope", "source"],
    )
    seen: set[tuple[str, str]] = set()
    for rate in state.rates:
        labels = fold_key(rate.key)
        if labels in seen:
            continue
        seen.add(labels)
        configured.add_metric(list(labels), rate.configured_per_s)
        in_force.add_metric([*labels, rate.source], rate.in_force_per_s)
    yield configured
    yield in_force
    yield from quota_families(state.quotas)
    yield from fair_share_families(state.shares, state.fair_share_keys)


def quota_families(quotas: Iterable[QuotaUse]) -> Iterator[GaugeMetricFamily]:
    """Each quota's limit and use, by provider and scope; a quota kept per account shows
    its most used account (an account's own use is in the API)."""
    folded: dict[tuple[str, str], tuple[int, int]] = {}
    for quota in quotas:
        labels = fold_key(quota.key)
        _, most = folded.get(labels, (quota.limit, 0))
        folded[labels] = (quota.limit, max(most, quota.used))
    limit = GaugeMetricFamily(
        "sluice_quota_limit_units",
        "Units a quota allows per window (per account for a quota kept per account).",
        labels=["provider", "scope"],
    )
    used = GaugeMetricFamily(
        "sluice_quota_used_units",
        "Units used of a quota in its current window (cached a few seconds); for a quota "
        "kept per account, the most used account's.",
        labels=["provider", "scope"],
    )
    for labels, (allowed, spent) in sorted(folded.items()):
        limit.add_metric(list(labels), allowed)
        used.add_metric(list(labels), spent)
    yield limit
    yield used


def fold_shares(shares: Iterable[FairShare], top: int = FAIR_SHARE_TOP_KEYS) -> list[FairShare]:
    """Fairness keys as bounded label sets: per provider, the keys with a configured
    weight, then the ``top`` others with the largest share (then most waiting), each as
    itself; every other key summed into one :data:`OTHER_KEYS` line.

    So a provider has at most ``len(fairness_weights) + top + 1`` series however many
    tenants or advertisers it serves (keys outside the top may come and go between
    scrapes; the sum of ``_other`` keeps the total).
    """
    by_provider: dict[str, list[FairShare]] = {}
    for share in shares:
        by_provider.setdefault(share.provider, []).append(share)
    folded: list[FairShare] = []
    for provider, found in sorted(by_provider.items()):
        weighted = sorted((s for s in found if s.weighted), key=lambda s: s.key)
        ranked = sorted(
            (s for s in found if not s.weighted), key=lambda s: (-s.share, -s.waiting, s.key)
        )
        shown, rest = ranked[:top], ranked[top:]
        folded += sorted(weighted + shown, key=lambda s: s.key)
        if rest:
            folded.append(
                FairShare(
                    provider,
                    OTHER_KEYS,
                    round(sum(s.share for s in rest), 4),
                    sum(s.waiting for s in rest),
                )
            )
    return folded


def fair_share_families(
    shares: Iterable[FairShare], top: int = FAIR_SHARE_TOP_KEYS
) -> Iterator[GaugeMetricFamily]:
    """Each fairness key's share of its provider's claims and its waiting tasks."""
    ratio = GaugeMetricFamily(
        "sluice_fair_share_ratio",
        "A fairness key's part of the budget units (tasks at their cost) claimed for its "
        "provider over the last 60 s "
        f"(0..1). Keys with a configured weight and the {top} largest others each have "
        f"their own series; the rest are summed under fairness_key={OTHER_KEYS}.",
        labels=["provider", "fairness_key"],
    )
    waiting = GaugeMetricFamily(
        "sluice_fair_share_waiting_tasks",
        "Tasks due and not claimed, by provider and fairness key (folded as in "
        "sluice_fair_share_ratio).",
        labels=["provider", "fairness_key"],
    )
    for share in fold_shares(shares, top):
        ratio.add_metric([share.provider, share.key], share.share)
        waiting.add_metric([share.provider, share.key], share.waiting)
    yield ratio
    yield waiting


# --- exposition --------------------------------------------------------------------------


def multiproc_dir() -> str | None:
    """The directory this host's processes write their metrics to, when set."""
    return os.environ.get(MULTIPROC_ENV) or None


def registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """A registry for one scrape: this host's processes summed (or this process), plus
    ``extra`` collectors."""
    path = multiproc_dir()
    if path is None:
        built = CollectorRegistry(auto_describe=False)
        built.register(_ProcessLocal())
    else:
        from sluice import metrics_host

        metrics_host.forget_dead_processes(path)
        built = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(built, path=path)  # type: ignore[no-untyped-call]
    for collector in extra:
        built.register(collector)
    return built


def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """The text a scrape answers with (Prometheus text format 0.0.4)."""
    return bytes(generate_latest(registry(extra)))


class _ProcessLocal(Collector):
    """This process's instruments (no multiprocess directory): the default registry."""

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        yield from REGISTRY.collect()
