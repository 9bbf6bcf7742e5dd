"""Turning a provider's configured budgets into the limiter keys of one request.

Keys are built so that a pause on the provider name covers all of them::

    acme                               rate_limit = "10/s"
    acme:1s, acme:1h                   rate_limit = ["10/s", "1000/h"]  (several windows)
    acme:write                         [[limits]] scope = "write"
    acme:write:advertiser_id=42        [[limits]] scope = "write", per = "advertiser_id"

A ``per`` limit applies only to requests whose payload has that field (polls of a batch
carry no payload, so only provider-wide and read/write budgets apply to them).

Token requests (``[auth]``) draw on limits of their own::

    acme:auth                          [auth] rate_limit = "1/s"
    acme:auth + acme                   ... and shares_provider_limit = true
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sluice.domain import Access
from sluice.providers.config import ProviderConfig
from sluice.providers.templating import scalar_at
from sluice.ratelimit.rate import LimitSpec, Rate
from sluice.units import format_duration


@dataclass(frozen=True)
class ConfiguredLimit:
    """One configured limit of a provider, as the console and the controls list it.

    ``key`` is the limiter key; a limit kept per account (``per``) names its keys
    ``<prefix><per>=<value><suffix>`` and shows ``*`` for the value. ``rate`` is the rate
    as configured; ``applied`` is what the limiter is asked for (stretched by the
    provider's ``rate_margin``).
    """

    key: str
    scope: str
    per: str | None
    rate: Rate
    applied: Rate

    def matches(self, key: str) -> bool:
        """Whether ``key`` is this limit's key (or, per account, one account's key)."""
        if self.per is None:
            return key == self.key
        prefix, _, suffix = self.key.partition("*")
        value = key[len(prefix) : len(key) - len(suffix)] if suffix else key[len(prefix) :]
        return (
            key.startswith(prefix)
            and key.endswith(suffix)
            and len(key) > len(prefix) + len(suffix)
            and ":" not in value
        )


@dataclass(frozen=True)
class _Rule:
    scope: str
    per: str | None
    rate: Rate
    suffix: str
    configured: Rate

    def key(self, provider: str, value: str | None) -> str:
        parts = [provider]
        if self.scope != "all":
            parts.append(self.scope)
        if self.per is not None:
            parts.append(f"{self.per}={value}")
        return ":".join(parts) + self.suffix


class LimitRules:
    """The limits of one provider, evaluated per request."""

    def __init__(self, provider: str, config: ProviderConfig) -> None:
        self._provider = provider
        raw: list[tuple[str, str | None, Rate]] = [
            ("all", None, rate) for rate in config.rate_limit or ()
        ]
        raw += [(limit.scope, limit.per, limit.rate) for limit in config.limits]
        # Limits sharing scope and field differ only by window: the window names them apart.
        shared = Counter((scope, per) for scope, per, _ in raw)
        # rate_margin: extra spacing for this provider on top of the limiter's own margin,
        # the same number of requests over a window stretched by the margin.
        stretch = 1.0 + (config.rate_margin or 0.0)
        auth = config.auth
        token_rates = (auth.rate_limit or ()) if auth is not None else ()
        self._token_rules = tuple(
            _Rule(
                scope="auth",
                per=None,
                rate=Rate(rate.limit, rate.window_s * stretch) if stretch != 1.0 else rate,
                suffix=f":{format_duration(rate.window_s)}" if len(token_rates) > 1 else "",
                configured=rate,
            )
            for rate in token_rates
        )
        self._token_shares = auth is not None and auth.shares_provider_limit
        self._rules = tuple(
            _Rule(
                scope=scope,
                per=per,
                rate=Rate(rate.limit, rate.window_s * stretch) if stretch != 1.0 else rate,
                suffix=f":{format_duration(rate.window_s)}" if shared[(scope, per)] > 1 else "",
                configured=rate,
            )
            for scope, per, rate in raw
        )

    def configured(self) -> list[ConfiguredLimit]:
        """Every limit as configured (token limits included), one entry per rule."""
        return [
            ConfiguredLimit(
                rule.key(self._provider, "*"), rule.scope, rule.per, rule.configured, rule.rate
            )
            for rule in (*self._rules, *self._token_rules)
        ]

    def limits_for(self, access: Access, payload: Mapping[str, Any] | None) -> list[LimitSpec]:
        """Every limit a request of ``access`` with ``payload`` must fit in."""
        specs: list[LimitSpec] = []
        for rule in self._rules:
            if rule.scope not in ("all", access):
                continue
            value: str | None = None
            if rule.per is not None:
                value = scalar_at(payload or {}, rule.per)
                if value is None:
                    continue
            specs.append(LimitSpec(rule.key(self._provider, value), rule.rate))
        return specs

    def token_limits(self) -> list[LimitSpec]:
        """Every limit a token request must fit in (none: token requests are not limited)."""
        specs = [LimitSpec(rule.key(self._provider, None), rule.rate) for rule in self._token_rules]
        if self._token_shares:
            specs += [
                LimitSpec(rule.key(self._provider, None), rule.rate)
                for rule in self._rules
                if rule.scope == "all" and rule.per is None
            ]
        return specs
