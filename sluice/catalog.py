"""What the API needs to know of providers to validate a submission."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sluice import masking
from sluice.domain import FAIRNESS_KEY_MAX, value_digest


@dataclass(frozen=True)
class ProviderInfo:
    """The kinds a provider accepts, whether it can track tasks by id alone, what to mask."""

    kinds: frozenset[str]
    can_track: bool
    redact_fields: tuple[str, ...] = ()
    fairness_field: str | None = None
    fairness_weights: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Catalog:
    """Known providers, and the one used for tasks created without a provider."""

    providers: Mapping[str, ProviderInfo] = field(default_factory=dict)
    default_provider: str = "sandbox"

    def shown_payload(
        self, provider: str, payload: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        """``payload`` as Sluice shows it: the provider's ``redact_fields`` masked."""
        info = self.providers.get(provider)
        return masking.mask_paths(payload, info.redact_fields if info else ())

    def fairness_key(self, provider: str, tenant: str, payload: Mapping[str, Any] | None) -> str:
        """Whose share of ``provider``'s budget a task draws on: the value at the provider's
        ``fairness_field`` in ``payload`` (text), else ``tenant``. Text over 128 characters keeps
        its first 95 and ends with its digest (``~`` and 32 hex digits of its SHA-256), so
        long values stay apart and fit the fairness key columns.

        A payload without that field (or with an object or list there) falls back to the
        tenant, so every task has a key.
        """
        info = self.providers.get(provider)
        field_path = info.fairness_field if info else None
        if field_path is None:
            return tenant
        value: Any = payload
        for part in field_path.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return tenant
            value = value[part]
        if value is None or isinstance(value, Mapping | list | bool):
            return tenant
        text = str(value)
        if len(text) > FAIRNESS_KEY_MAX:
            # Merely cut, values sharing their first 128 characters would share one key.
            digest = value_digest(text)
            text = text[: FAIRNESS_KEY_MAX - len(digest)] + digest
        return text or tenant

    def known(self) -> str:
        return ", ".join(sorted(self.providers)) or "(none configured)"

    def check(self, provider: str, kind: str | None) -> tuple[str, str] | None:
        """Return (field, problem) for an unknown ``provider``/``kind``, else None."""
        info = self.providers.get(provider)
        if info is None:
            return "provider", f"unknown provider {provider!r}; known: {self.known()}"
        if kind is None:
            if not info.can_track:
                return "kind", (
                    f"provider {provider!r} has no batch status poll, so it cannot track a task "
                    "by id alone; give a kind and a payload"
                )
            return None
        if kind not in info.kinds:
            known = ", ".join(sorted(info.kinds)) or "(none)"
            return "kind", f"unknown kind {kind!r} for provider {provider!r}; known: {known}"
        return None
