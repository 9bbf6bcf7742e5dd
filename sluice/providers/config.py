"""Provider configuration: the ``[providers.NAME]`` TOML tables as validated models.

Every key is documented in docs/providers.md. Validation errors are turned into one
line per problem, ``<file>: providers.NAME.<key>: <reason>``, and never quote the
value of a header or an auth body entry (they hold secrets).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from sluice import errors, masking
from sluice.domain import FAIRNESS_KEY_MAX, TENANT_PATTERN, TaskStatus
from sluice.providers.templating import RequestLine, expand_env
from sluice.ratelimit.quota import ROLLING, Quota, zone
from sluice.ratelimit.rate import Rate, parse_rate
from sluice.settings import NumbersRefuseBooleans
from sluice.units import format_duration, parse_duration

log = logging.getLogger("sluice.providers")

PROVIDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
TENANT_NAME = re.compile(TENANT_PATTERN)
FIELD_PATH = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_SENSITIVE_NAME = re.compile(r"auth|token|key|secret|password|cookie|session|signature", re.I)
_MIN_SECRET_LEN = 4


# --- value types ---------------------------------------------------------------------------


class KeyProblem(errors.InvalidValue):
    """A problem with a sub-key of the value being validated (folded into the key path)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, repr=False)
class Secret:
    """A configured value that may hold a secret; its repr never shows it.

    ``sensitive`` lists the substrings to redact from messages and logs; ``credential``
    says whether the value is a credential (it came from ``${VAR}`` or sits under a
    credential-like name), which a tenant's own credentials replace.
    """

    value: str
    sensitive: tuple[str, ...]
    credential: bool = False

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def _secret_map(value: object, info: ValidationInfo) -> dict[str, Secret]:
    if not isinstance(value, Mapping):
        raise errors.InvalidValue(f"must be a table of strings, got {type(value).__name__}")
    environ: Mapping[str, str] = (info.context or {}).get("environ", {})
    result: dict[str, Secret] = {}
    for key, raw in value.items():
        if not isinstance(raw, str):
            raise KeyProblem(str(key), f"must be a string, got {type(raw).__name__}")
        try:
            expanded, substituted = expand_env(raw, environ)
        except ValueError as exc:
            raise KeyProblem(str(key), str(exc)) from None
        sensitive = set(substituted)
        credential = bool(substituted) or bool(_SENSITIVE_NAME.search(str(key)))
        if _SENSITIVE_NAME.search(str(key)):
            sensitive.add(expanded)
            _scheme, _, rest = expanded.partition(" ")
            if rest:
                sensitive.add(rest)
        result[str(key)] = Secret(
            value=expanded,
            sensitive=tuple(sorted(s for s in sensitive if len(s) >= _MIN_SECRET_LEN)),
            credential=credential,
        )
    return result


def _field_paths(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise errors.InvalidValue("must be a list of dotted payload paths like 'card.number'")
    for path in value:
        if not FIELD_PATH.match(path):
            raise errors.InvalidValue(f"{path!r} is not a dotted payload path like 'card.number'")
    return tuple(value)


def _field_path(value: object) -> str:
    if not isinstance(value, str) or not FIELD_PATH.match(value):
        raise errors.InvalidValue(
            f"{value!r} is not a dotted payload path like 'advertiser_id' or 'account.id'"
        )
    return value


MAX_FAIRNESS_WEIGHT = 1000.0


def _weights(value: object) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise errors.InvalidValue(
            f'must be a table of fairness keys to weights, like {{ "adv-1" = 3 }}, '
            f"got {type(value).__name__}"
        )
    result: dict[str, float] = {}
    for key, weight in value.items():
        if not 1 <= len(str(key)) <= FAIRNESS_KEY_MAX:
            raise KeyProblem(str(key), f"a fairness key is 1 to {FAIRNESS_KEY_MAX} characters")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not 0 < weight <= MAX_FAIRNESS_WEIGHT
        ):
            raise KeyProblem(
                str(key),
                f"a weight must be a number > 0 and <= {MAX_FAIRNESS_WEIGHT:g}, got {weight!r}",
            )
        result[str(key)] = float(weight)
    return result


def _duration(value: object) -> float:
    return parse_duration(value)


def _rate(value: object) -> Rate:
    if not isinstance(value, str):
        raise errors.InvalidValue(
            f"must be a rate like '10/s', '40/min' or '1000/h', got {value!r}"
        )
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise errors.InvalidValue(f"{exc}") from None


def _rates(value: object) -> tuple[Rate, ...]:
    if isinstance(value, str):
        return (_rate(value),)
    if isinstance(value, list) and value:
        return tuple(_rate(item) for item in value)
    raise errors.InvalidValue(f"must be a rate like '10/s' or a list of rates, got {value!r}")


def _floor(value: object) -> float:
    """A fraction of the configured rate in (0, 1], or a rate like '2/s' (kept negated)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not 0 < value <= 1:
            raise errors.InvalidValue(
                f"must be a fraction of the configured rate in (0, 1] or a rate like '2/s', "
                f"got {value!r}"
            )
        return float(value)
    rate = _rate(value)
    return -rate.limit / rate.window_s


OPERATIONS = {"submit": "write", "lookup": "read", "poll": "read"}
"""The operations a cost may name, and the scope each draws on."""


def _costs(value: object) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise errors.InvalidValue(
            'must be a table like { submit = 5 } or { "audience.submit" = 5 }, '
            f"got {type(value).__name__}"
        )
    result: dict[str, int] = {}
    for name, cost in value.items():
        name = str(name)
        operation = name.rsplit(".", 1)[-1]
        if operation not in OPERATIONS:
            raise KeyProblem(
                name,
                f"unknown operation {operation!r}; known: {', '.join(OPERATIONS)} "
                "(as OPERATION or KIND.OPERATION)",
            )
        if isinstance(cost, bool) or not isinstance(cost, int):
            raise KeyProblem(name, f"must be an integer, got {cost!r}")
        if cost < 1:
            raise KeyProblem(name, f"a cost must be >= 1, got {cost}")
        result[name] = cost
    return result


def _reset(value: object) -> str:
    if not isinstance(value, str):
        raise errors.InvalidValue(f"must be a time zone name or 'rolling', got {value!r}")
    if value != ROLLING:
        zone(value)
    return value


def _codes(value: object) -> frozenset[str]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | str) and not isinstance(v, bool) for v in value
    ):
        raise errors.InvalidValue(f"must be a list of codes (numbers or strings), got {value!r}")
    return frozenset(str(v) for v in value)


def _request_line(*allowed: str) -> PlainValidator:
    def parse(value: object) -> RequestLine:
        if isinstance(value, RequestLine):
            return value
        if not isinstance(value, str):
            raise errors.InvalidValue(f"must be a request line like 'GET /path', got {value!r}")
        return RequestLine.parse(value, allowed)

    return PlainValidator(parse)


Duration = Annotated[float, PlainValidator(_duration)]
Secrets = Annotated[dict[str, Secret], PlainValidator(_secret_map)]
Rates = Annotated[tuple[Rate, ...], PlainValidator(_rates)]
Codes = Annotated[frozenset[str], PlainValidator(_codes)]
Costs = Annotated[dict[str, int], PlainValidator(_costs)]
Reset = Annotated[str, PlainValidator(_reset)]
FieldPaths = Annotated[tuple[str, ...], PlainValidator(_field_paths)]
FieldPath = Annotated[str, PlainValidator(_field_path)]
Weights = Annotated[dict[str, float], PlainValidator(_weights)]
SubmitLine = Annotated[RequestLine, _request_line("client_ref", "parent_external_id", "payload")]
StatusLine = Annotated[
    RequestLine, _request_line("external_id", "client_ref", "parent_external_id", "payload")
]
LookupLine = Annotated[RequestLine, _request_line("client_ref", "parent_external_id", "payload")]
BatchLine = Annotated[RequestLine, _request_line("ids")]
PlainLine = Annotated[RequestLine, _request_line()]


class _Table(NumbersRefuseBooleans, BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


# --- tables --------------------------------------------------------------------------------


def check_costs(costs: Mapping[str, int], scope: str, count: int, kinds: set[str]) -> None:
    """Refuse costs for another scope's operations, unknown kinds, or above ``count``."""
    for name, cost in costs.items():
        kind, _, operation = name.rpartition(".")
        if kind and kinds and kind not in kinds:
            raise KeyProblem(
                f"cost.{name}", f"unknown kind {kind!r}; known: {', '.join(sorted(kinds))}"
            )
        if scope != "all" and OPERATIONS[operation] != scope:
            raise KeyProblem(
                f"cost.{name}",
                f"{operation} is a {OPERATIONS[operation]}; this limit counts {scope}s only",
            )
        if cost > count:
            raise KeyProblem(
                f"cost.{name}",
                f"a cost of {cost} is above this limit's count ({count}): it could never go",
            )


class LimitConfig(_Table):
    """``[[providers.NAME.limits]]``: one more budget a request must fit in.

    Either a ``rate`` (an even pace; ``burst`` lets that many extra units go at once) or a
    ``quota`` (a budget per long window, spent in bursts, reset by ``reset``).
    """

    rate: Annotated[Rate, PlainValidator(_rate)] | None = None
    quota: Annotated[Rate, PlainValidator(_rate)] | None = None
    reset: Reset = "UTC"
    pace: bool = False
    scope: Literal["all", "read", "write"] = "all"
    per: FieldPath | None = None
    burst: int = Field(default=0, ge=0)
    cost: Costs = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_budget(self) -> Self:
        if (self.rate is None) == (self.quota is None):
            raise errors.InvalidValue("give either rate (a pace) or quota (a budget), not both")
        if self.rate is not None and self.burst >= self.rate.limit:
            raise KeyProblem("burst", f"must be below the rate's count ({self.rate.limit})")
        if self.quota is not None and self.burst:
            raise KeyProblem("burst", "a quota is spent in bursts already; burst is for rates")
        for key in ("reset", "pace"):
            if self.rate is not None and key in self.model_fields_set:
                # It did nothing: a rate is a pace of its own and never resets.
                raise KeyProblem(key, f"{key} is for a quota; this limit is a rate")
        count = (self.rate or self.quota or Rate(1, 1.0)).limit
        check_costs(self.cost, self.scope, count, set())
        return self


class PollConfig(_Table):
    """``[providers.NAME.poll]``: one request answers for many tasks."""

    request: BatchLine
    batch_size: int = Field(default=100, ge=1)
    interval: Duration | None = None
    items_field: str | None = None
    id_field: str = "id"
    status_field: str = "status"
    error_field: str | None = "error_message"
    status_map: dict[str, TaskStatus] = Field(min_length=1)


class KindConfig(_Table):
    """``[providers.NAME.kinds.KIND]``: how one kind of object is created and found."""

    submit: SubmitLine
    external_id_field: str = "id"
    parent_field: str | None = None
    client_ref_field: str | None = None
    status: StatusLine | None = None
    status_field: str = "status"
    error_field: str | None = "error_message"
    status_map: dict[str, TaskStatus] = Field(default_factory=dict)
    lookup: LookupLine | None = None
    lookup_items_field: str | None = None
    lookup_id_field: str | None = None
    resubmit_when_unknown: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.status is not None and not self.status_map:
            raise KeyProblem("status_map", "required when a status request is set")
        if (
            self.lookup is not None
            and "client_ref" in self.lookup.placeholders
            and self.client_ref_field is None
        ):
            raise KeyProblem(
                "lookup",
                "uses {client_ref} but client_ref_field is not set, so the provider never "
                "receives the reference; set client_ref_field",
            )
        return self


class SignalConfig(_Table):
    """``[providers.NAME.rate_limit_signal]``: how the provider says "slow down"."""

    statuses: frozenset[int] = frozenset({429})
    retry_after_header: str | None = "Retry-After"
    reset_header: str | None = None
    reset_kind: Literal["auto", "epoch", "epoch_ms", "delta"] = "auto"
    limit_header: str | None = None
    remaining_header: str | None = None
    ietf_headers: bool = False
    codes: Codes = frozenset()
    code_field: str = "error.code"
    usage_header: str | None = None
    usage_field: str = "estimated_time_to_regain_access"
    usage_unit: Literal["ms", "s", "min", "h"] = "min"
    usage_percent_fields: tuple[str, ...] = ()
    retry_delay_field: str | None = None
    default_pause: Duration = 5.0
    max_pause: Duration = 3600.0

    @property
    def reads_limits(self) -> bool:
        """Whether any answer header or body field here describes the limit's state."""
        return bool(
            self.limit_header
            or self.remaining_header
            or self.ietf_headers
            or (self.usage_header and self.usage_percent_fields)
        )


class AdaptiveConfig(_Table):
    """``[providers.NAME.adaptive]`` (or ``adaptive = true``): learn the real limit.

    ``decrease`` multiplies a key's effective rate on a refusal that gives no numbers when
    the limit fell (refused again soon after a drop; a third as deep a drop when refused at
    about the last refused rate, a probe; half as deep otherwise: CubicLaw.after_refusal);
    ``climb`` is how long the rate then takes to climb back to where it was refused (and as
    long again to reach the configured rate, probing); ``floor`` is the lowest it may go
    (a rate, or a fraction of the configured one); ``pause`` replaces ``default_pause``
    for a refusal that says nothing of when to come back; ``hold`` is the least time
    between two decreases of one key (refusals of one burst, seen by many workers, count once);
    above ``usage_slow_above`` percent used (Meta's usage header), the rest is spread.
    """

    enabled: bool = True
    floor: Annotated[float, PlainValidator(_floor)] = 0.05
    climb: Duration = 10.0
    decrease: float = Field(default=0.7, gt=0, lt=1)
    pause: Duration = 0.1
    hold: Duration = 1.0
    usage_slow_above: float = Field(default=80.0, ge=0, lt=100)

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: object) -> object:
        if isinstance(value, bool):
            return {"enabled": value}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.climb <= 0:
            raise KeyProblem("climb", f"must be > 0, got {self.climb:g}s")
        if self.hold <= 0:
            raise KeyProblem("hold", f"must be > 0, got {self.hold:g}s")
        return self

    def floor_per_s(self, configured_per_s: float) -> float:
        """The lowest rate (per second) a key configured at ``configured_per_s`` may run at."""
        if self.floor < 0:  # an absolute rate, stored negated (see _floor)
            return min(-self.floor, configured_per_s)
        return configured_per_s * self.floor


class ErrorsConfig(_Table):
    """``[providers.NAME.errors]``: reading error answers."""

    error_body_field: str | None = "error"
    message_fields: tuple[str, ...] = ("error.message", "error_message", "message", "error")
    field_path_fields: tuple[str, ...] = ("error.field",)
    code_field: str = "error.code"
    transient_codes: Codes = frozenset()
    transient_flag_field: str | None = None
    transient_statuses: frozenset[int] = frozenset({408, 425})


class AuthConfig(_Table):
    """``[providers.NAME.auth]``: a token fetched by a request and sent on every call."""

    request: PlainLine
    body: Secrets = Field(default_factory=dict)
    body_format: Literal["json", "form"] = "json"
    headers: Secrets = Field(default_factory=dict)
    token_field: str = "access_token"  # noqa: S105 (a field name, not a secret)
    expires_in_field: str | None = "expires_in"
    lifetime: Duration = 3600.0
    refresh_margin: Duration = 30.0
    header: str = "Authorization"
    value: str = "Bearer {token}"
    rate_limit: Rates | None = None
    shares_provider_limit: bool = False

    @model_validator(mode="after")
    def _has_token(self) -> Self:
        if "{token}" not in self.value:
            raise KeyProblem("value", "must contain {token}")
        return self


class TenantCredentials(_Table):
    """``[providers.NAME.tenants.TENANT]``: a tenant's own account at this provider.

    Its ``headers`` and ``auth`` replace the provider's credentials for that tenant's
    requests: the provider's credential headers (a ``${VAR}`` value or a credential-like
    name) and its token are not sent; its other headers are. ``auth`` takes the provider's
    ``[auth]`` request, fields and header format, and only ``body`` and ``headers`` (the
    secrets) from the tenant.
    """

    headers: Secrets = Field(default_factory=dict)
    auth: AuthConfig | None = None

    @model_validator(mode="after")
    def _has_credentials(self) -> Self:
        if not self.headers and self.auth is None:
            raise errors.InvalidValue("give the tenant's credentials: headers, or an [auth] table")
        return self


def _check_base_url(base_url: str) -> None:
    """KeyProblem unless httpx can send to ``base_url`` (a port that is not a number was an
    InvalidURL traceback when the provider's client was built); its password never shown."""
    try:
        port = httpx.URL(base_url).port
    except httpx.InvalidURL as exc:
        raise KeyProblem("base_url", f"not a URL: {masking.mask(str(exc))}") from None
    if port is not None and not 1 <= port <= 65535:
        raise KeyProblem("base_url", f"its port must be 1-65535, got {port}")


class ProviderConfig(_Table):
    """``[providers.NAME]``: one third party."""

    base_url: str = Field(pattern=r"^https?://.+")
    rate_limit: Rates | None = None
    burst: int = Field(default=0, ge=0)
    cost: Costs = Field(default_factory=dict)
    quota: Annotated[Rate, PlainValidator(_rate)] | None = None
    quota_reset: Reset = "UTC"
    quota_pace: bool = False
    limits: tuple[LimitConfig, ...] = ()
    max_in_flight: int | None = Field(default=None, ge=1)
    in_flight_ttl: Duration | None = None
    # At most 1 (twice the spacing), like SLUICE_RATE_MARGIN: unbounded, a margin stretched
    # a long window to infinity and the provider failed to build.
    rate_margin: float | None = Field(default=None, ge=0, le=1)
    # What the provider's limiter judges (docs/ratelimit.md, "Send windows of held keys"):
    # "spacing" (it may be a leaky bucket refusing a request a few ms early) or "window"
    # (it counts requests in windows, sliding or fixed): held grants may then be sent up to
    # a whole spacing after they were asked for, instead of a quarter to 0.35 of one.
    judges: Literal["spacing", "window"] = "spacing"
    headers: Secrets = Field(default_factory=dict)
    timeout: Duration = 10.0
    max_attempts: int = Field(default=8, ge=1, le=1000)
    retry_base: Duration = 1.0
    retry_max: Duration = 300.0
    deadline: Duration | None = None
    poll_interval: Duration = 2.0
    idempotency_header: str | None = None
    resubmit_when_unknown: bool = False
    redact_fields: FieldPaths = ()
    # Fair share (docs/providers.md): whose tasks share this provider's budget fairly; the
    # tenant when unset, else this payload field's value. Weights per key (default 1).
    fairness_field: FieldPath | None = None
    fairness_weights: Weights = Field(default_factory=dict)
    poll: PollConfig | None = None
    kinds: dict[str, KindConfig] = Field(default_factory=dict)
    rate_limit_signal: SignalConfig = Field(default_factory=SignalConfig)
    adaptive: AdaptiveConfig = Field(default_factory=lambda: AdaptiveConfig(enabled=False))
    errors: ErrorsConfig = Field(default_factory=ErrorsConfig)
    auth: AuthConfig | None = None
    tenants: dict[str, TenantCredentials] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        bad = sorted(t for t in self.tenants if not TENANT_NAME.match(t))
        if bad:
            raise KeyProblem(
                "tenants",
                f"{bad[0]!r} is not a tenant name (letters, digits, '.', '_', '-'; "
                "at most 64 characters)",
            )
        _check_base_url(self.base_url)
        if self.timeout <= 0:
            raise KeyProblem("timeout", f"must be > 0, got {self.timeout:g}s")
        if self.retry_max < self.retry_base:
            raise KeyProblem(
                "retry_max",
                f"must be >= retry_base ({self.retry_base:g}s), got {self.retry_max:g}s",
            )
        if self.deadline is not None and self.deadline <= 0:
            raise KeyProblem("deadline", "must be > 0")
        windows: list[tuple[str, str | None, float, bool]] = [
            ("all", None, r.window_s, False) for r in self.rate_limit or ()
        ]
        windows += [
            (lim.scope, lim.per, budget.window_s, lim.quota is not None)
            for lim in self.limits
            for budget in (lim.rate or lim.quota,)
            if budget is not None
        ]
        if self.quota is not None:
            windows.append(("all", None, self.quota.window_s, True))
        if len(set(windows)) != len(windows):
            raise KeyProblem(
                "limits",
                "two limits have the same scope, per and window; merge them into one",
            )
        self._check_budgets()
        if not self.kinds and self.poll is None:
            raise errors.InvalidValue("nothing to do: define [kinds.KIND] tables or a [poll] table")
        return self

    def _check_budgets(self) -> None:
        kinds = set(self.kinds)
        rates = list(self.rate_limit or ())
        rates += [lim.rate for lim in self.limits if lim.rate is not None]
        longest = max((rate.window_s for rate in rates), default=0.0)
        for rate in self.rate_limit or ():
            if self.burst >= rate.limit:
                raise KeyProblem("burst", f"must be below the rate's count ({rate.limit})")
            check_costs(self.cost, "all", rate.limit, kinds)
        if self.quota is not None:
            check_costs(self.cost, "all", self.quota.limit, kinds)
        if self.cost and not self.rate_limit and self.quota is None:
            raise KeyProblem("cost", "there is no rate_limit or quota here to charge it to")
        for key in ("quota_reset", "quota_pace"):
            if self.quota is None and key in self.model_fields_set:
                # It did nothing (a misspelt or forgotten quota loaded without a word).
                raise KeyProblem(key, 'there is no quota here; set quota = "15000/d" or remove it')
        budgets: list[tuple[str, Rate | None, Rate | None]] = [("quota", None, self.quota)]
        budgets += [
            (f"limits[{i}].quota", lim.rate, lim.quota) for i, lim in enumerate(self.limits)
        ]
        for i, lim in enumerate(self.limits):
            count = (lim.rate or lim.quota or Rate(1, 1.0)).limit
            try:
                check_costs(lim.cost, lim.scope, count, kinds)
            except KeyProblem as problem:
                raise KeyProblem(f"limits[{i}].{problem.key}", problem.reason) from None
        resets = [(self.quota_reset, self.quota_pace)]
        resets += [(lim.reset, lim.pace) for lim in self.limits]
        for (key, _, quota), (reset, pace) in zip(budgets, resets, strict=True):
            if quota is None:
                continue
            if quota.window_s < longest:
                raise KeyProblem(
                    key,
                    f"the quota window ({format_duration(quota.window_s)}) is shorter than the "
                    f"provider's rate window ({format_duration(longest)}); make it a rate",
                )
            try:
                # What the limits will build from it (a calendar the window fits): checked
                # here so the error names the file and the key.
                Quota(quota, reset, pace)
            except errors.InvalidValue as problem:
                raise KeyProblem(key, str(problem)) from None
        for rate in rates:
            if rate.window_s >= 3600:
                log.warning(
                    "providers.long_paced_window",
                    extra={
                        "rate": str(rate),
                        "hint": "a rate is an even pace; for a budget per hour or day that "
                        "may be spent in bursts use quota = '...' (docs/ratelimit.md#quotas)",
                    },
                )

    @property
    def interval_s(self) -> float:
        """Seconds between polls of one task (``poll.interval`` wins when given)."""
        if self.poll is not None and self.poll.interval is not None:
            return self.poll.interval
        return self.poll_interval


# --- loading -------------------------------------------------------------------------------


def parse_provider(
    name: str, table: Mapping[str, Any], source: str, environ: Mapping[str, str]
) -> ProviderConfig:
    """Validate one merged ``[providers.NAME]`` table.

    Raises:
        errors.InvalidValue: one line per problem, already prefixed with ``source`` and the key.
    """
    prefix = f"{source}: providers.{name}"
    if not PROVIDER_NAME.match(name):
        raise errors.InvalidValue(
            f"{prefix}: provider names may hold letters, digits, '-' and '_' only"
        )
    try:
        return ProviderConfig.model_validate(with_tenant_auth(table), context={"environ": environ})
    except ValidationError as exc:
        raise errors.InvalidValue("\n".join(_describe(exc, prefix))) from None


AUTH_SECRET_KEYS = frozenset({"body", "headers"})


def with_tenant_auth(table: Mapping[str, Any]) -> dict[str, Any]:
    """``table`` with each tenant's ``[auth]`` completed from the provider's ``[auth]``.

    Only the non-secret keys (request line, fields, header format) are taken from the
    provider: a tenant's token request never carries the provider's own secrets.
    """
    result = dict(table)
    base = table.get("auth")
    tenants = table.get("tenants")
    if not isinstance(base, Mapping) or not isinstance(tenants, Mapping):
        return result
    shared = {k: v for k, v in base.items() if k not in AUTH_SECRET_KEYS}
    completed: dict[str, Any] = {}
    for name, tenant in tenants.items():
        if isinstance(tenant, Mapping) and isinstance(tenant.get("auth"), Mapping):
            tenant = {**tenant, "auth": {**shared, **tenant["auth"]}}
        completed[name] = tenant
    result["tenants"] = completed
    return result


def _describe(exc: ValidationError, prefix: str) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        key = _loc_text(error["loc"])
        reason = _reason(error)
        problem = (error.get("ctx") or {}).get("error")
        if isinstance(problem, KeyProblem):
            key = f"{key}.{problem.key}" if key else problem.key
            reason = problem.reason
        lines.append(f"{prefix}{'.' + _printable(key) if key else ''}: {reason}")
    return lines


def _printable(key: str) -> str:
    """``key`` with control characters escaped: a table key holding a newline (``"a\\nb"``
    in TOML) split its problem's line in two."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)


def _loc_text(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _reason(error: Any) -> str:
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    got = error.get("input")
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        model = _table_model(error["loc"][:-1])
        if model is None:
            return "unknown key"
        known = (["preset"] if model is ProviderConfig else []) + list(model.model_fields)
        return f"unknown key; known: {', '.join(known)}"
    if kind in {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}:
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<="}.get(
            kind, "<"
        )
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound}, got {got!r}"
    if kind in {"enum", "literal_error"}:
        return f"must be one of {ctx.get('expected')}, got {got!r}"
    if kind == "string_pattern_mismatch":
        return f"must start with http:// or https://, got {masking.mask_urls(str(got))!r}"
    if kind == "too_short":
        return "must not be empty"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        expected = kind.removesuffix("_type").removesuffix("_parsing")
        return f"must be {_article(expected)}, got {type(got).__name__}"
    return str(error["msg"])


def _table_model(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model of the table at ``loc`` (to list its keys)."""
    if not loc:
        return ProviderConfig
    tables: dict[str, tuple[int, type[BaseModel]]] = {
        "poll": (1, PollConfig),
        "kinds": (2, KindConfig),
        "limits": (2, LimitConfig),
        "rate_limit_signal": (1, SignalConfig),
        "adaptive": (1, AdaptiveConfig),
        "errors": (1, ErrorsConfig),
        "auth": (1, AuthConfig),
        "tenants": (2, TenantCredentials),
    }
    depth, model = tables.get(str(loc[0]), (0, ProviderConfig))
    return model if depth == len(loc) else None


def _article(word: str) -> str:
    nouns = {"dict": "a table", "model": "a table", "int": "an integer", "bool": "true or false"}
    return nouns.get(word, f"a {word}")
