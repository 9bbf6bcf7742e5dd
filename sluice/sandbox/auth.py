"""Bearer tokens: issued with a short lifetime (an OAuth2 client-credentials flow), or static.

Every token stands for an account (the app key): an issued token for the ``client_id``
that asked for it, a static token (``tokens = {token = "account"}``, like a DSP's
long-lived API token) for the account it is configured for. Limits ``per = "app"`` count
each account on its own.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sluice.sandbox.errors import InvalidRequest, Unauthorized


@dataclass
class TokenIssuer:
    """Issues tokens and resolves a request's ``Authorization`` header to its app key."""

    lifetime_s: float
    credentials: Mapping[str, str]
    """client_id -> client_secret; empty accepts any non-empty pair."""
    static: Mapping[str, str] = field(default_factory=dict)
    """Static token -> the account it stands for; never expires."""
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)

    def issue(self, body: Any, now: float) -> dict[str, Any]:
        """Answer a token request ``{"client_id", "client_secret"}``.

        Raises:
            InvalidRequest: the body is not an object with both strings.
            Unauthorized: the pair is not among the configured credentials.
        """
        if not isinstance(body, dict):
            raise InvalidRequest("request body must be a JSON object")
        for name in ("client_id", "client_secret"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise InvalidRequest(f"'{name}' must be a non-empty string", field=name)
        client_id, secret = body["client_id"], body["client_secret"]
        if self.credentials and self.credentials.get(client_id) != secret:
            raise Unauthorized(f"unknown client {client_id!r} or wrong secret")
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (client_id, now + self.lifetime_s)
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": max(1, math.floor(self.lifetime_s)),
        }

    def app_key(self, authorization: str | None, now: float) -> str:
        """The account behind a valid ``Bearer`` header (issued token's client_id, or the
        account a static token is configured for).

        Raises:
            Unauthorized: the header is missing, malformed, unknown or expired.
        """
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <token>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Authorization must be 'Bearer <token>'")
        account = self.static.get(token.strip())
        if account is not None:
            return account
        entry = self._tokens.get(token.strip())
        if entry is None:
            raise Unauthorized("unknown access token")
        client_id, expires_at = entry
        if now >= expires_at:
            del self._tokens[token.strip()]
            raise Unauthorized("access token expired; request a new one at /oauth/token")
        return client_id

    def clear(self) -> None:
        """Forget every token."""
        self._tokens.clear()
