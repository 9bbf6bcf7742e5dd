"""Whose account a request goes out on: the provider's own, or a tenant's.

An agency submits for many clients, each with an account of its own at the DSP. A tenant
listed under ``[providers.NAME.tenants.TENANT]`` has its requests sent with its own
``headers`` and/or token ``auth``; every other tenant's go out with the provider's. A
tenant's credentials *replace* the provider's: the provider's credential headers (a
``${VAR}`` value or a credential-like name) and its token are never sent on a tenant's
request, while its plain headers (``Accept-Language``...) are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sluice.clock import Clock
from sluice.masking import Redactor
from sluice.providers.auth import TokenAuth
from sluice.providers.config import ProviderConfig, Secret
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.rate import LimitSpec

DEFAULT_ACCOUNT = ""
"""The account key of requests sent with the provider's own credentials."""


@dataclass(frozen=True)
class Credentials:
    """The headers and the token (if any) one account's requests carry."""

    account: str
    """The tenant whose account this is, or :data:`DEFAULT_ACCOUNT`."""
    headers: Mapping[str, str]
    auth: TokenAuth | None


class Accounts:
    """The provider's credentials and each listed tenant's, by tenant."""

    def __init__(
        self,
        provider: str,
        config: ProviderConfig,
        clock: Clock,
        redactor: Redactor,
        *,
        token_limits: Sequence[LimitSpec] = (),
        limiter: Limiter | None = None,
    ) -> None:
        token_grants: dict[str, Any] = {
            "limits": token_limits,
            "limiter": limiter,
            "wait_s": config.timeout,
        }
        plain = {k: s.value for k, s in config.headers.items() if not _is_credential(s)}
        own = {k: s.value for k, s in config.headers.items()}
        for secret in config.headers.values():
            redactor.add(*secret.sensitive)
        self.default = Credentials(
            DEFAULT_ACCOUNT,
            own,
            TokenAuth(provider, config.auth, clock, redactor, base_headers=own, **token_grants)
            if config.auth
            else None,
        )
        self._tenants: dict[str, Credentials] = {}
        for tenant, table in config.tenants.items():
            for secret in table.headers.values():
                redactor.add(*secret.sensitive)
            headers = plain | {k: s.value for k, s in table.headers.items()}
            auth = (
                TokenAuth(
                    f"{provider} (tenant {tenant})",
                    table.auth,
                    clock,
                    redactor,
                    base_headers=headers,
                    **token_grants,
                )
                if table.auth
                else None
            )
            self._tenants[tenant] = Credentials(tenant, headers, auth)

    def of(self, tenant: str | None) -> Credentials:
        """The credentials a task of ``tenant`` is sent with."""
        found = self._tenants.get(tenant) if tenant is not None else None
        return found or self.default

    def account(self, tenant: str | None) -> str:
        """Which account a task of ``tenant`` goes out on (tasks of one account share polls)."""
        return self.of(tenant).account

    @property
    def tenants(self) -> frozenset[str]:
        """The tenants with accounts of their own."""
        return frozenset(self._tenants)


def _is_credential(secret: Secret) -> bool:
    """A header value that came from ``${VAR}`` or sits under a credential-like name."""
    return secret.credential
