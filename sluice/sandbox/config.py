"""The sandbox's configuration: a validated pydantic model built from ``[sandbox]`` and flags.

Precedence, lowest first: the profile's defaults, the ``[sandbox]`` TOML section, CLI flags.
Nested tables (``faults``, ``fixtures``, ``costs``) merge key by key; lists (``limits``)
replace. Limits come in three kinds, told apart by ``kind``: ``sliding`` windows (the
default, optionally on a schedule), ``bucket`` (a leaky bucket judged to the millisecond)
and ``fixed`` windows that restart at local midnight (daily quotas).
"""

from __future__ import annotations

import re
import zoneinfo
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from sluice.sandbox.profiles import PROFILES, Profile, get_profile
from sluice.settings import NumbersRefuseBooleans
from sluice.units import MAX_DURATION_S

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
# Every duration is at most ten years, as everywhere in Sluice: a window of 1e308 s
# overflowed the leaky bucket's arithmetic (a 500 on the next call).
Seconds = Annotated[float, Field(ge=0.0, le=MAX_DURATION_S)]
PositiveSeconds = Annotated[float, Field(gt=0.0, le=MAX_DURATION_S)]


class _Model(NumbersRefuseBooleans, BaseModel):
    """A table of ``[sandbox]``: unknown keys refused, and numbers refuse true/false."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleStep(_Model):
    """One step of a changing limit: ``limit`` for ``duration_s`` seconds."""

    duration_s: PositiveSeconds
    limit: int = Field(gt=0)

    @model_validator(mode="before")
    @classmethod
    def _pair_is_duration_then_limit(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) == 2:
            return {"duration_s": value[0], "limit": value[1]}
        return value


class _Limit(_Model):
    """What every kind of limit has: a name, whom and what it applies to, a count."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    per: Literal["app", "advertiser"] = "app"
    scope: Literal["all", "read", "write"] = "all"
    limit: int = Field(gt=0)
    weighted: bool = False
    """Charge each call its cost from ``costs`` (default 1) instead of 1."""
    quota: bool = False
    """A refusal means "quota spent, wait for it" rather than "slow down" (Google Ads style)."""


class LimitSpec(_Limit):
    """A sliding window: at most ``limit`` admitted units in any ``window_s`` seconds.

    With a ``schedule`` the limit changes over time (from the sandbox's start or reset):
    each step's limit for its duration, then ``limit`` for good, or the steps again from
    the first when ``repeat`` is set.
    """

    kind: Literal["sliding"] = "sliding"
    window_s: PositiveSeconds
    schedule: tuple[ScheduleStep, ...] = ()
    repeat: bool = False

    @model_validator(mode="after")
    def _repeat_needs_steps(self) -> Self:
        if self.repeat and not self.schedule:
            raise ValueError("repeat needs a schedule to repeat")
        return self


class BucketSpec(_Limit):
    """A leaky bucket (GCRA) judged on arrival times truncated to whole milliseconds.

    Calls are due one emission interval ``window_s / limit`` apart; a call may come up to
    ``burst`` intervals early (0: strictly paced, 1: one call of burst tolerated).
    """

    kind: Literal["bucket"]
    window_s: PositiveSeconds
    burst: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _unweighted(self) -> Self:
        if self.weighted:
            raise ValueError("a bucket limit cannot be weighted; use a sliding or fixed limit")
        return self


SECONDS_PER_DAY = 86_400


class FixedWindowSpec(_Limit):
    """A quota over fixed windows that restart at local midnight in ``timezone``.

    Windows last ``window_s`` seconds from midnight (which must divide a day); the day's
    last window ends at the next local midnight, so ``window_s = 86400`` is a calendar day
    (23 or 25 hours on the days clocks change). A quota by default.
    """

    kind: Literal["fixed"]
    window_s: int = Field(default=SECONDS_PER_DAY, gt=0, le=SECONDS_PER_DAY)
    timezone: str = "UTC"
    quota: bool = True

    @field_validator("window_s")
    @classmethod
    def _divides_a_day(cls, value: int) -> int:
        if SECONDS_PER_DAY % value:
            raise ValueError(f"window_s {value} must divide a day (86400 s) evenly")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name like 'America/Los_Angeles'"
            ) from None
        return value


def _limit_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "sliding"))
    return str(getattr(value, "kind", "sliding"))


AnyLimitSpec = Annotated[
    Annotated[LimitSpec, Tag("sliding")]
    | Annotated[BucketSpec, Tag("bucket")]
    | Annotated[FixedWindowSpec, Tag("fixed")],
    Discriminator(
        _limit_kind,
        custom_error_type="limit_kind",
        custom_error_message="kind must be 'sliding' (the default), 'bucket' or 'fixed'",
    ),
]
"""Any limit, told apart by ``kind`` (``sliding`` when absent)."""

ROUTE_PATTERN = re.compile(r"^(GET|POST) /v1/\S+$")


class FaultRates(_Model):
    """Per-request fault probabilities (0 = never) and the durations some faults use."""

    error_5xx: Probability = 0.0
    unavailable_503: Probability = 0.0
    slow: Probability = 0.0
    reset: Probability = 0.0
    commit_then_timeout: Probability = 0.0
    error_body: Probability = 0.0
    token_expiry: Probability = 0.0
    slow_s: Seconds = 2.0
    hang_s: Seconds = 30.0

    @model_validator(mode="after")
    def _exclusive_faults_fit(self) -> Self:
        exclusive = (
            self.error_5xx
            + self.unavailable_503
            + self.reset
            + self.commit_then_timeout
            + self.error_body
            + self.token_expiry
        )
        if exclusive > 1.0:
            raise ValueError(
                f"fault probabilities other than 'slow' add up to {exclusive:g}; at most 1 allowed"
            )
        return self

    @property
    def any_enabled(self) -> bool:
        """Whether any fault can happen at all."""
        return any(
            rate > 0.0
            for rate in (
                self.error_5xx,
                self.unavailable_503,
                self.slow,
                self.reset,
                self.commit_then_timeout,
                self.error_body,
                self.token_expiry,
            )
        )


class FixtureSpec(_Model):
    """An external id whose status is scripted rather than processed."""

    status: str = Field(min_length=1)
    error_message: str | None = None


class MaintenanceWindow(_Model):
    """A planned outage: from ``start_s`` after the sandbox starts (or is reset, or given a
    new ``maintenance``) for ``duration_s``, every ``/v1`` call gets 429 with
    ``Retry-After`` set to the seconds left, so a client that honours it pauses once."""

    start_s: Seconds
    duration_s: PositiveSeconds

    @model_validator(mode="before")
    @classmethod
    def _pair_is_start_then_duration(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) == 2:
            return {"start_s": value[0], "duration_s": value[1]}
        return value


def _default_limits() -> list[AnyLimitSpec]:
    return [LimitSpec(name="app", per="app", scope="all", limit=50, window_s=1.0)]


class SandboxConfig(_Model):
    """Everything the sandbox DSP can be told (see docs/sandbox.md)."""

    profile: str = "standard"
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = Field(default=9000, ge=0, le=65535)
    auth: bool = False
    token_lifetime_s: PositiveSeconds = 300.0
    credentials: dict[str, str] = Field(
        default_factory=dict,
        description="client_id -> client_secret; empty accepts any non-empty pair",
    )
    tokens: dict[str, str] = Field(
        default_factory=dict,
        description="static bearer token -> the account (app key) it stands for",
    )
    idempotency: bool = False
    accept_delay_s: tuple[Seconds, Seconds] = (0.05, 0.1)
    process_delay_s: tuple[Seconds, Seconds] = (0.05, 0.2)
    limits: list[AnyLimitSpec] = Field(default_factory=_default_limits)
    costs: dict[str, int] = Field(
        default_factory=dict,
        description='route ("POST /v1/audiences") -> units it charges to weighted limits',
    )
    faults: FaultRates = Field(default_factory=FaultRates)
    fixtures: dict[str, FixtureSpec] = Field(default_factory=dict)
    maintenance: tuple[MaintenanceWindow, ...] = ()
    """Planned outages answered with 429 + Retry-After (see :class:`MaintenanceWindow`)."""
    arrival_log_cap: int = Field(default=100_000, ge=0)
    """Most arrivals ``/_sandbox/arrivals`` remembers (oldest forgotten first; 0: none)."""
    timeline_cap_s: int = Field(default=3_600, ge=0)
    """Most seconds ``/_sandbox/timeline`` remembers (oldest forgotten first; 0: none)."""

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        get_profile(value)
        return value

    @field_validator("accept_delay_s", "process_delay_s", mode="before")
    @classmethod
    def _single_number_is_fixed_delay(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (value, value)
        return value

    @field_validator("accept_delay_s", "process_delay_s")
    @classmethod
    def _min_not_above_max(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if low > high:
            raise ValueError(f"[min, max] has min {low:g} above max {high:g}")
        return value

    @field_validator("limits")
    @classmethod
    def _unique_limit_names(cls, value: list[AnyLimitSpec]) -> list[AnyLimitSpec]:
        names = [spec.name for spec in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"limit names must be unique; repeated: {', '.join(repeated)}")
        return value

    @field_validator("costs")
    @classmethod
    def _costs_name_routes(cls, value: dict[str, int]) -> dict[str, int]:
        for route, cost in value.items():
            if not ROUTE_PATTERN.match(route):
                raise ValueError(
                    f"cost key {route!r} is not a route like 'POST /v1/audiences' (GET or POST)"
                )
            if cost < 1:
                raise ValueError(f"cost of {route!r} is {cost}; at least 1 allowed")
        return value

    @model_validator(mode="after")
    def _costs_fit_weighted_limits(self) -> Self:
        for spec in self.limits:
            if not spec.weighted:
                continue
            lowest = min([spec.limit, *(step.limit for step in getattr(spec, "schedule", ()))])
            for route, cost in self.costs.items():
                if _scope_covers(spec.scope, write=not route.startswith("GET ")) and (
                    cost > lowest
                ):
                    raise ValueError(
                        f"limit {spec.name!r} allows {lowest} units, below the cost "
                        f"{cost} of {route!r}: such a call could never be admitted"
                    )
        return self

    @property
    def profile_spec(self) -> Profile:
        """The profile this configuration names."""
        return PROFILES[self.profile]

    @classmethod
    def from_settings(cls, section: dict[str, Any], **cli_overrides: Any) -> SandboxConfig:
        """Build from a ``[sandbox]`` section and CLI flags (flags that are None are unset).

        Raises:
            ValueError: unknown profile, or a key that is missing, unknown or out of range
                (pydantic's ``ValidationError`` names the key).
        """
        given = {**section, **{k: v for k, v in cli_overrides.items() if v is not None}}
        profile = get_profile(str(given.get("profile", "standard")))
        return cls.model_validate(_merge(dict(profile.defaults), given))

    def updated(self, patch: dict[str, Any]) -> SandboxConfig:
        """A copy with ``patch`` applied (partial: limits, costs, faults, delays, maintenance).

        Raises:
            ValueError: a key that cannot be changed at run time, or an invalid value.
        """
        changeable = {
            "limits",
            "costs",
            "faults",
            "accept_delay_s",
            "process_delay_s",
            "maintenance",
        }
        fixed = sorted(set(patch) - changeable)
        if fixed:
            raise ValueError(
                f"cannot change {', '.join(fixed)} at run time; "
                f"changeable: {', '.join(sorted(changeable))}"
            )
        return type(self).model_validate(_merge(self.model_dump(), patch))


def _scope_covers(scope: str, *, write: bool) -> bool:
    """Whether a limit of ``scope`` applies to a write (or a read)."""
    return scope == "all" or (scope == "write") == write


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, merging nested dicts key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
