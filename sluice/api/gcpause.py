"""ASGI middleware pausing Python's cyclic garbage collector while a bulk create runs.

A 10,000-task batch allocates a few hundred thousand objects that all stay alive until the
response (parsed JSON, request models, submissions, row values). The collector counts
them as they arrive and walks them again and again (young generations every few hundred
allocations, the whole heap when the survivors pass a quarter of it): about 15-30% of a
bulk call's CPU (docs/scaling.md, ingest). None of them is in a reference cycle, so
reference counting frees them all when the call ends; the collector runs again at the
first allocation after the last paused request, as it would have.

Pausing is process-wide (``gc.disable``), counted so overlapping bulk calls resume it only
when the last one ends, and only ever resumes a collector that was running before.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_lock = threading.Lock()
_paused = 0
_resume = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside (reference counting still frees as usual)."""
    global _paused, _resume
    with _lock:
        if _paused == 0:
            _resume = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _lock:
            _paused -= 1
            if _paused == 0 and _resume:
                gc.enable()


class CollectorPausedFor:
    """Run requests to ``path`` (exactly) with the collector paused from the moment their
    body has fully arrived (a slow client cannot hold it paused) to their response."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        with ExitStack() as paused:
            complete = False

            async def receive_then_pause() -> Message:
                nonlocal complete
                message = await receive()
                if (
                    not complete
                    and message["type"] == "http.request"
                    and not message.get("more_body", False)
                ):
                    complete = True
                    paused.enter_context(collector_paused())
                return message

            await self.app(scope, receive_then_pause, send)
