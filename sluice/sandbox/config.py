"""The sandbox's configuration: a validated pydantic model built from ``[sandbox]`` and flags.

Precedence, lowest first: the profile's defaults, the ``[sandbox]`` TOML section, CLI flags.
Nested tables (``faults``, ``fixtures``) merge key by key; lists (``limits``) replace.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sluice.sandbox.profiles import PROFILES, Profile, get_profile

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0)]


class LimitSpec(BaseModel):
    """One rate limit: at most ``limit`` admitted requests in any ``window_s`` seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    per: Literal["app", "advertiser"] = "app"
    scope: Literal["all", "read", "write"] = "all"
    limit: int = Field(gt=0)
    window_s: float = Field(gt=0.0)


class FaultRates(BaseModel):
    """Per-request fault probabilities (0 = never) and the durations some faults use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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


class FixtureSpec(BaseModel):
    """An external id whose status is scripted rather than processed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: str = Field(min_length=1)
    error_message: str | None = None


def _default_limits() -> list[LimitSpec]:
    return [LimitSpec(name="app", per="app", scope="all", limit=50, window_s=1.0)]


class SandboxConfig(BaseModel):
    """Everything the sandbox DSP can be told (see docs/sandbox.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: str = "standard"
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = Field(default=9000, ge=0, le=65535)
    auth: bool = False
    token_lifetime_s: float = Field(default=300.0, gt=0.0)
    credentials: dict[str, str] = Field(
        default_factory=dict,
        description="client_id -> client_secret; empty accepts any non-empty pair",
    )
    idempotency: bool = False
    accept_delay_s: tuple[Seconds, Seconds] = (0.05, 0.1)
    process_delay_s: tuple[Seconds, Seconds] = (0.05, 0.2)
    limits: list[LimitSpec] = Field(default_factory=_default_limits)
    faults: FaultRates = Field(default_factory=FaultRates)
    fixtures: dict[str, FixtureSpec] = Field(default_factory=dict)

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
    def _unique_limit_names(cls, value: list[LimitSpec]) -> list[LimitSpec]:
        names = [spec.name for spec in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"limit names must be unique; repeated: {', '.join(repeated)}")
        return value

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
        """A copy with ``patch`` applied (partial: only limits, faults and delays).

        Raises:
            ValueError: a key that cannot be changed at run time, or an invalid value.
        """
        changeable = {"limits", "faults", "accept_delay_s", "process_delay_s"}
        fixed = sorted(set(patch) - changeable)
        if fixed:
            raise ValueError(
                f"cannot change {', '.join(fixed)} at run time; "
                f"changeable: {', '.join(sorted(changeable))}"
            )
        return type(self).model_validate(_merge(self.model_dump(), patch))


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``extra``, merging nested dicts key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
