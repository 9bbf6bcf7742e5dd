"""What the API needs to know of providers to validate a submission."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProviderInfo:
    """The kinds a provider accepts and whether it can track tasks by id alone."""

    kinds: frozenset[str]
    can_track: bool


@dataclass(frozen=True)
class Catalog:
    """Known providers, and the one used for tasks created without a provider."""

    providers: Mapping[str, ProviderInfo] = field(default_factory=dict)
    default_provider: str = "sandbox"

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
