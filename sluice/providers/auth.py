"""Token authentication: fetch a token with a request, send it on every call, refresh it.

The token is fetched lazily on the first call, reused until ``refresh_margin`` (at most half
its lifetime) before it expires (``expires_in`` from the answer, else the configured
``lifetime``), and dropped
when the provider answers 401 so the next attempt fetches a new one. Neither the token
nor the request body ever reaches a message or a log.

With ``[auth] rate_limit`` the token request takes a limiter grant of its own first
(waiting for it on this thread, at most the provider's timeout: token requests are rare)
and is sent under that grant's send window. Without it, token requests are not limited.
Either way the token request never uses the grant of the call it is fetched for.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from sluice import errors, metrics
from sluice.clock import Clock
from sluice.masking import Redactor
from sluice.providers.config import AuthConfig
from sluice.providers.outage import says_unreachable
from sluice.providers.templating import MISSING, get_path
from sluice.ratelimit import sendgate
from sluice.ratelimit.base import Limiter
from sluice.ratelimit.rate import LimitSpec

log = logging.getLogger(__name__)


class TokenUnavailable(errors.ProviderError):
    """The token request failed; the call it was for should be retried later."""

    def __init__(self, message: str, *, ambiguous: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous
        self.unreachable = unreachable
        """No connection could be made to the token endpoint (refused or timed out)."""


class TokenAuth:
    """Holds one provider's current token; shared by every worker thread.

    Args:
        limits: what a token request must fit in; empty means unlimited.
        limiter: where token requests take their grants (none: they are not limited).
        wait_s: how long a token request may wait for its grant before giving up.
        base_headers: headers every token request carries (a tenant's account headers).
    """

    def __init__(
        self,
        provider: str,
        config: AuthConfig,
        clock: Clock,
        redactor: Redactor,
        *,
        limits: Sequence[LimitSpec] = (),
        limiter: Limiter | None = None,
        wait_s: float = 10.0,
        base_headers: Mapping[str, str] | None = None,
    ) -> None:
        self._provider = provider
        self._base_headers = dict(base_headers or {})
        self._config = config
        self._clock = clock
        self._redactor = redactor
        self._limits = list(limits)
        self._limiter = limiter
        self._wait_s = wait_s
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        for secret in (*config.body.values(), *config.headers.values()):
            redactor.add(*secret.sensitive)

    def header(self, client: httpx.Client) -> tuple[str, str]:
        """The auth header to send, fetching a token first when needed.

        Raises:
            TokenUnavailable: the token request failed or its answer had no token.
        """
        with self._lock:
            if self._token is None or self._clock.time() >= self._expires_at:
                self._fetch(client)
            assert self._token is not None
            return self._config.header, self._config.value.replace("{token}", self._token)

    def invalidate(self, header_value: str | None) -> None:
        """Forget the token that produced ``header_value`` (after a 401)."""
        with self._lock:
            if self._token is None:
                return
            current = self._config.value.replace("{token}", self._token)
            if header_value is None or header_value == current:
                self._token = None
                log.info("provider.token_dropped", extra={"provider": self._provider})

    def _fetch(self, client: httpx.Client) -> None:
        line = self._config.request
        values = {key: secret.value for key, secret in self._config.body.items()}
        headers = self._base_headers | {k: s.value for k, s in self._config.headers.items()}
        kwargs: dict[str, Any] = {"headers": headers}
        if line.method != "GET":
            kwargs["json" if self._config.body_format == "json" else "data"] = values
        try:
            with sendgate.bound(self._token_permit()), metrics.operation("token"):
                response = client.request(line.method, line.target, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TokenUnavailable(
                f"could not reach the token endpoint of {self._provider}: {type(exc).__name__}",
                unreachable=says_unreachable(exc),
            ) from exc
        except httpx.HTTPError as exc:
            raise TokenUnavailable(
                f"token request to {self._provider} failed: {type(exc).__name__}"
            ) from exc
        if response.status_code >= 300:
            raise TokenUnavailable(
                f"token request to {self._provider} answered HTTP {response.status_code}"
                f"{self._oauth_error(response)}"
            )
        try:
            body = response.json()
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse
            body = None
        token = get_path(body, self._config.token_field)
        if not isinstance(token, str) or not token:
            raise TokenUnavailable(
                f"token answer from {self._provider} has no {self._config.token_field}"
            )
        self._redactor.add_rotating(token)
        lifetime = self._config.lifetime
        if self._config.expires_in_field:
            expires_in = _seconds(get_path(body, self._config.expires_in_field))
            if expires_in is not None:
                lifetime = expires_in
        now = self._clock.time()
        self._token = token
        # A token shorter-lived than the margin is still kept for half its life: refreshing
        # "margin before expiry" would fetch a new one before every call.
        margin = min(self._config.refresh_margin, lifetime / 2)
        self._expires_at = now + max(0.0, lifetime - margin)
        log.info(
            "provider.token_fetched",
            extra={"provider": self._provider, "lifetime_s": lifetime},
        )

    def _token_permit(self) -> sendgate.SendPermit | None:
        """A grant for one token request, waited for here; ``None`` when not limited.

        Raises:
            TokenUnavailable: no grant within ``wait_s``, or the limiter failed.
        """
        if not self._limits or self._limiter is None:
            return None
        deadline = self._clock.monotonic() + self._wait_s
        while True:
            asked_at = self._clock.monotonic()
            try:
                grant = self._limiter.acquire(self._limits)
            except errors.LimiterError as exc:
                raise TokenUnavailable(
                    f"no grant for the token request of {self._provider}: {exc}"
                ) from exc
            if grant.granted:
                # Written late, a token request pushes its keys back as any request does;
                # a send thread asks for it, so no dispatcher waits for that (sendgate).
                return sendgate.SendPermit(
                    asked_at,
                    grant.send_within_s,
                    self._clock.monotonic,
                    on_written=functools.partial(
                        sendgate.push_back_if_late, self._limiter, grant, provider=self._provider
                    ),
                )
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                raise TokenUnavailable(
                    f"token request of {self._provider} held back ({grant.reason}) "
                    f"for more than {self._wait_s:g}s"
                )
            self._clock.sleep(min(grant.retry_after_s, remaining))

    def _oauth_error(self, response: httpx.Response) -> str:
        """OAuth's short ``error`` word (``invalid_client``), never the raw body."""
        try:
            body = response.json()
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse
            return ""
        code = get_path(body, "error")
        if code is MISSING or not isinstance(code, str) or len(code) > 64:
            code = get_path(body, "error.code")
        if isinstance(code, str) and len(code) <= 64:
            return f" ({self._redactor.redact(code)})"
        return ""

    def __repr__(self) -> str:
        return f"TokenAuth({self._provider!r})"


def _seconds(value: Any) -> float | None:
    """``expires_in`` as a number of seconds: a JSON number, or text holding one (some
    OAuth servers send ``"3600"``); None when it is neither, negative or not finite."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)
