"""The console's browser security: session cookie, CSRF tokens, security headers.

- **Session cookie** ``sluice_session`` (``__Host-sluice_session`` under HTTPS): a random
  token for a session kept on the server (:mod:`sluice.store.sessions`), ``HttpOnly``,
  ``SameSite=Strict``, ``Path=/``, ``Secure`` when the request came over HTTPS (behind a
  TLS proxy, uvicorn takes the scheme from ``X-Forwarded-Proto`` of trusted proxies). No
  ``Max-Age``: the browser forgets it when it closes; the server ends it sooner.
- **CSRF**, two kinds, both compared in constant time, and a foreign ``Origin`` refused:
  the sign-in form (no session yet) uses a *double-submit* token, a random value in a
  ``SameSite=Strict`` cookie that the form must repeat; forms of a signed-in page carry a
  *synchronizer* token derived from the session token (HMAC-SHA256), which a page of
  another site can neither read nor compute.
- **Headers** on every console answer: a Content-Security-Policy allowing only the
  console's own files (no inline script or style, no frames, forms post to itself),
  ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
  same-origin`` and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SESSION_COOKIE = "sluice_session"
LOGIN_CSRF_COOKIE = "sluice_csrf"
CSRF_FIELD = "csrf_token"
_CSRF_CONTEXT = b"sluice-console-csrf"


def over_https(request: Request) -> bool:
    """Whether the browser reached us over HTTPS (directly or through a trusted proxy)."""
    return request.url.scheme == "https"


def cookie_name(request: Request, base: str) -> str:
    """``__Host-<base>`` under HTTPS (the browser then insists on Secure, Path=/, no
    Domain), ``<base>`` over plain HTTP, where that prefix is not allowed."""
    return f"__Host-{base}" if over_https(request) else base


def set_cookie(response: Response, request: Request, base: str, value: str) -> None:
    """Set a console cookie with the flags every console cookie carries."""
    response.set_cookie(
        cookie_name(request, base),
        value,
        path="/",
        httponly=True,
        samesite="strict",
        secure=over_https(request),
    )


def clear_cookie(response: Response, request: Request, base: str) -> None:
    """Tell the browser to forget a console cookie."""
    response.delete_cookie(
        cookie_name(request, base),
        path="/",
        httponly=True,
        samesite="strict",
        secure=over_https(request),
    )


def read_cookie(request: Request, base: str) -> str | None:
    """The value of a console cookie, or None."""
    value = request.cookies.get(cookie_name(request, base))
    return value or None


def new_login_csrf() -> str:
    """A fresh double-submit token for the sign-in form."""
    return secrets.token_urlsafe(32)


def session_csrf(session_token: str) -> str:
    """The synchronizer token of a session's forms (derived, so nothing more is stored)."""
    return hmac.new(session_token.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def same_token(given: str | None, expected: str | None) -> bool:
    """Constant-time equality of two tokens; a missing one never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def secured(response: Response) -> Response:
    """``response`` with the console's security headers."""
    response.headers.update(SECURITY_HEADERS)
    return response
