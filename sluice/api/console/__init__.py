"""The operator console's web pages (``/ui``): sign-in with an API key, sessions, pages.

:func:`install` adds the console to an app; see :mod:`.routes` for what every console
route checks and :mod:`.session` for cookies, CSRF and security headers.
"""

from __future__ import annotations

from fastapi import FastAPI

from sluice.api.console import pages  # noqa: F401  (its routes join the router)
from sluice.api.console.routes import Authenticate, Console, Meter, OpenTo, router
from sluice.store.sessions import SessionStore

__all__ = ["Console", "install"]


def install(
    app: FastAPI,
    sessions: SessionStore,
    authenticate: Authenticate,
    open_to: OpenTo,
    over_limit: Meter | None = None,
) -> None:
    """Serve the console at ``/ui`` from ``app``; ``over_limit`` meters each signed-in
    page against its key's ``SLUICE_API_RATE_LIMIT`` (None: no limit)."""
    app.state.console = Console(sessions, authenticate, open_to, over_limit)
    app.include_router(router)
