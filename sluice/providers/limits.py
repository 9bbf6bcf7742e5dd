"""Turning a provider's configured budgets into the limiter keys of one request.

Keys are built so that a pause on the provider name covers all of them::

    acme                               rate_limit = "10/s"
    acme:1s, acme:1h                   rate_limit = ["10/s", "1000/h"]  (several windows)
    acme:write                         [[limits]] scope = "write"
    acme:write:advertiser_id=42        [[limits]] scope = "write", per = "advertiser_id"

A ``per`` limit applies only to requests whose payload has that field (polls of a batch
carry no payload, so only provider-wide and read/write budgets apply to them).

**Costs.** A limit may charge an operation more than one unit: ``cost = { submit = 5 }``
or ``cost = { "audience.submit" = 5 }`` (``KIND.OPERATION`` wins over ``OPERATION``). A
batch poll is one request: it costs the highest poll cost among its tasks' kinds, once.
Each rate limit's burst is raised to its heaviest cost less one (:mod:`sluice.ratelimit.gcra`
explains why a cost needs that room), never below the configured ``burst``.

**Quotas** (``quota = "15000/d"``, or ``[[limits]] quota = ...``) are not limiter keys:
they become :class:`~sluice.ratelimit.quota.QuotaSpec` s, keyed like limits with their
window appended (``acme:1d``, ``acme:write:advertiser_id=42:10min``), which the
dispatcher spends from the database (:mod:`sluice.engine.quotas`).

**Account values in keys.** A ``per`` value is written into its keys as it is when it is
plain: 1 to :data:`ACCOUNT_VALUE_MAX` characters among ASCII letters, digits and
``_ . @ + = -`` (``42``, ``adv-1``, ``act_123``). Any other value (longer, empty, or with
``:``, ``*``, ``/``, ``~``, whitespace, control or non-ASCII characters) is written in its
digest form, ``~`` and the first 32 hex digits of the SHA-256 of its UTF-8
(:func:`account_value`): the same in every process and after every restart, distinct per
value, never holding the ``:`` that separates pause scopes, so a key keeps its structure
(``acme``, ``acme:write``, ``acme:write:advertiser_id=~3f...``) and fits the key columns
(:data:`KEY_MAX_CHARS`).

Token requests (``[auth]``) draw on limits of their own::

    acme:auth                          [auth] rate_limit = "1/s"
    acme:auth + acme                   ... and shares_provider_limit = true
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice import errors
from sluice.domain import DIGEST_MARK, Access, Operation, value_digest
from sluice.providers.config import ProviderConfig
from sluice.providers.templating import scalar_at
from sluice.ratelimit.quota import Quota, QuotaSpec
from sluice.ratelimit.rate import LimitSpec, Rate
from sluice.units import format_duration

KEY_MAX_CHARS = 255
"""The longest limit or quota key: the width of the key columns (``limiter_pauses``,
``limit_pins``, ``learned_rates``, ``quota_usage``, ``usage_counts``)."""

ACCOUNT_VALUE_MAX = 64
"""The longest ``per`` value written into a key as it is; a longer one takes its digest form."""

_PLAIN_VALUE = re.compile(rf"[A-Za-z0-9_.@+=\-]{{1,{ACCOUNT_VALUE_MAX}}}")


def account_value(value: str) -> str:
    """A ``per`` value as its keys hold it: itself when plain, else its digest form."""
    return value if _PLAIN_VALUE.fullmatch(value) else value_digest(value)


_DIGEST_FORM = re.compile(rf"{re.escape(DIGEST_MARK)}[0-9a-f]{{32}}")


def in_key_form(value: str) -> bool:
    """Whether ``value`` is an account as keys name it: plain, or a digest form."""
    return bool(_PLAIN_VALUE.fullmatch(value) or _DIGEST_FORM.fullmatch(value))


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
            # As keys hold it: a value that is not plain names no key but its digest form.
            and in_key_form(value)
        )

    def current_key(self, stored: str) -> str | None:
        """The key Sluice now spends from for ``stored``, one account's key written before
        digest forms with its value as it was (``advertiser_id=a b``); None when ``stored``
        is in key form already or is no account key of this limit."""
        if self.per is None:
            return None
        prefix, _, suffix = self.key.partition("*")
        if not (stored.startswith(prefix) and stored.endswith(suffix)):
            return None
        if len(stored) < len(prefix) + len(suffix):
            return None
        value = stored[len(prefix) : len(stored) - len(suffix)] if suffix else stored[len(prefix) :]
        if in_key_form(value) or ":" in value:  # a ':' never named one account (no pin had it)
            return None
        return prefix + account_value(value) + suffix


@dataclass(frozen=True)
class _Rule:
    scope: str
    per: str | None
    rate: Rate
    suffix: str
    configured: Rate
    costs: Mapping[str, int] = field(default_factory=dict)
    burst: int = 0
    quota: Quota | None = None

    def key(self, provider: str, value: str | None) -> str:
        parts = [provider]
        if self.scope != "all":
            parts.append(self.scope)
        if self.per is not None:
            parts.append(f"{self.per}={value}")
        return ":".join(parts) + self.suffix

    def applies(self, access: Access) -> bool:
        return self.scope in ("all", access)

    def cost(self, operation: Operation | None, kinds: Sequence[str | None]) -> int:
        """What one request of ``operation`` on ``kinds`` costs here (1 unless configured)."""
        if operation is None or not self.costs:
            return 1
        op = operation.value
        return max(
            (self.costs.get(f"{kind}.{op}", self.costs.get(op, 1)) for kind in kinds or (None,)),
            default=1,
        )


def _with_cost_room(rule: _Rule) -> _Rule:
    """The rule with its burst raised to its heaviest cost less one."""
    heaviest = max(rule.costs.values(), default=1)
    burst = max(rule.burst, heaviest - 1)
    return rule if burst == rule.burst else _Rule(**{**rule.__dict__, "burst": burst})


class LimitRules:
    """The limits of one provider, evaluated per request."""

    def __init__(self, provider: str, config: ProviderConfig) -> None:
        self._provider = provider
        raw: list[tuple[str, str | None, Rate, Mapping[str, int], int]] = [
            ("all", None, rate, config.cost, config.burst) for rate in config.rate_limit or ()
        ]
        raw += [
            (limit.scope, limit.per, limit.rate, limit.cost, limit.burst)
            for limit in config.limits
            if limit.rate is not None
        ]
        # Limits sharing scope and field differ only by window: the window names them apart.
        shared = Counter((scope, per) for scope, per, *_ in raw)
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
            _with_cost_room(
                _Rule(
                    scope=scope,
                    per=per,
                    rate=Rate(rate.limit, rate.window_s * stretch) if stretch != 1.0 else rate,
                    suffix=f":{format_duration(rate.window_s)}" if shared[(scope, per)] > 1 else "",
                    configured=rate,
                    costs=costs,
                    burst=burst,
                )
            )
            for scope, per, rate, costs, burst in raw
        )
        quotas: list[_Rule] = []
        if config.quota is not None:
            quota = Quota(config.quota, config.quota_reset, config.quota_pace)
            quotas.append(self._quota_rule("all", None, quota, config.cost))
        for limit in config.limits:
            if limit.quota is not None:
                quota = Quota(limit.quota, limit.reset, limit.pace)
                quotas.append(self._quota_rule(limit.scope, limit.per, quota, limit.cost))
        self._quota_rules = tuple(quotas)
        for rule in (*self._rules, *self._quota_rules):
            longest = rule.key(provider, "x" * ACCOUNT_VALUE_MAX if rule.per else None)
            if len(longest) > KEY_MAX_CHARS:
                # InvalidValue: load_providers names the file and provider, and reports it
                # beside the other providers' problems, as for every provider problem.
                raise errors.InvalidValue(
                    f"the limit key {rule.key(provider, '*')} is longer than {KEY_MAX_CHARS} "
                    f"characters for an account value of {ACCOUNT_VALUE_MAX} characters; "
                    "shorten the provider name or the per path"
                )

    @staticmethod
    def _quota_rule(scope: str, per: str | None, quota: Quota, costs: Mapping[str, int]) -> _Rule:
        suffix = f":{format_duration(quota.rate.window_s)}"
        return _Rule(scope, per, quota.rate, suffix, quota.rate, costs, 0, quota)

    def configured(self) -> list[ConfiguredLimit]:
        """Every limit as configured (token limits included), one entry per rule."""
        return [
            ConfiguredLimit(
                rule.key(self._provider, "*"), rule.scope, rule.per, rule.configured, rule.rate
            )
            for rule in (*self._rules, *self._token_rules)
        ]

    def limits_for(
        self,
        access: Access,
        payload: Mapping[str, Any] | None,
        *,
        operation: Operation | None = None,
        kinds: Sequence[str | None] = (),
    ) -> list[LimitSpec]:
        """Every limit a request of ``access`` with ``payload`` must fit in.

        With ``operation`` (and the ``kinds`` of its tasks) each limit charges its cost.
        """
        return [
            LimitSpec(key, rule.rate, rule.cost(operation, kinds), rule.burst)
            for rule, key in self._keyed(self._rules, access, payload)
        ]

    def quotas_for(
        self,
        operation: Operation,
        payload: Mapping[str, Any] | None,
        kinds: Sequence[str | None] = (),
    ) -> list[QuotaSpec]:
        """Every quota one request of ``operation`` draws on, with its cost."""
        return [
            QuotaSpec(key, rule.quota, rule.cost(operation, kinds))
            for rule, key in self._keyed(self._quota_rules, operation.access, payload)
            if rule.quota is not None
        ]

    def shared_cost(self, operation: Operation, kind: str | None) -> int:
        """What one request of ``operation`` on ``kind`` costs the provider's shared budget:
        the heaviest cost among the provider-wide limits and quotas it draws on (not those
        kept ``per`` account), 1 when none charges more."""
        return max(
            (
                rule.cost(operation, (kind,))
                for rule in (*self._rules, *self._quota_rules)
                if rule.per is None and rule.applies(operation.access)
            ),
            default=1,
        )

    def _keyed(
        self, rules: Sequence[_Rule], access: Access, payload: Mapping[str, Any] | None
    ) -> Iterator[tuple[_Rule, str]]:
        """Each rule that applies to ``access`` with its key; a rule ``per`` a path the payload
        lacks is left out."""
        for rule in rules:
            if not rule.applies(access):
                continue
            value: str | None = None
            if rule.per is not None:
                value = scalar_at(payload or {}, rule.per)
                if value is None:
                    continue
            yield rule, rule.key(self._provider, None if value is None else account_value(value))

    def quotas(self) -> list[tuple[str, Quota, str, str | None]]:
        """Every configured quota: its key (``per`` values as ``*``), quota, scope, per."""
        return [
            (rule.key(self._provider, "*"), rule.quota, rule.scope, rule.per)
            for rule in self._quota_rules
            if rule.quota is not None
        ]

    def token_limits(self) -> list[LimitSpec]:
        """Every limit a token request must fit in (none: token requests are not limited)."""
        specs = [LimitSpec(rule.key(self._provider, None), rule.rate) for rule in self._token_rules]
        if self._token_shares:
            specs += [
                LimitSpec(rule.key(self._provider, None), rule.rate, 1, rule.burst)
                for rule in self._rules
                if rule.scope == "all" and rule.per is None
            ]
        return specs
