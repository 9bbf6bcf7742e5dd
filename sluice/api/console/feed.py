"""The console's live feed: one poller per API process, broadcast to every open stream.

While at least one browser listens, a thread renders the overview's live part (pauses,
current windows, in-flight, creates/s and polls/s) every :data:`POLL_S` and, when the HTML
changed, hands it to every subscriber's queue. A stream (``GET /ui/events``) only waits on
its queue and writes what it gets, so fifty open pages cost one poller, not fifty: the
database sees the same two small queries four times a second however many watch.

A pause written by any worker (a 429 with Retry-After) therefore reaches every open page
within about ``POLL_S`` plus the time the worker takes to write it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("sluice.console.feed")

POLL_S = 0.25
IDLE_STOP_S = 30.0
"""The poller stops after this long with nobody listening (it starts again on demand)."""


class Subscriber:
    """One open stream: the latest HTML for it, newest wins (a slow reader skips states)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)

    def offer(self, html: str) -> None:
        """Called on the event loop: replace whatever is waiting with ``html``."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(html)


class LiveFeed:
    """Renders with ``render`` every ``poll_s`` while anyone listens; broadcasts changes."""

    def __init__(self, render: Callable[[], str], poll_s: float = POLL_S) -> None:
        self.render = render
        self.poll_s = poll_s
        self.renders = 0
        self._subscribers: set[Subscriber] = set()
        self._lock = threading.Lock()
        self._latest: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def subscribe(self) -> Subscriber:
        """A new stream; it gets the current state at once (rendered now if need be)."""
        subscriber = Subscriber(asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(subscriber)
            latest = self._latest
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._run, name="sluice-console-feed", daemon=True
                )
                self._thread.start()
        if latest is not None:
            subscriber.offer(latest)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(subscriber)

    @property
    def listeners(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        idle_since: float | None = None
        while not self._stop.is_set():
            with self._lock:
                subscribers = list(self._subscribers)
            if not subscribers:
                idle_since = idle_since or _now()
                if _now() - idle_since > IDLE_STOP_S:
                    with self._lock:
                        if not self._subscribers:
                            self._latest = None
                            self._thread = None
                            return
            else:
                idle_since = None
                self._tick()
            self._stop.wait(self.poll_s)

    def _tick(self) -> None:
        try:
            html = self.render()
        except Exception:
            log.warning("console.feed_failed", exc_info=True)
            return
        self.renders += 1
        # Who gets it is read with the new state set, under one lock: a stream that subscribes
        # meanwhile either is in the list or finds this state at subscribe (never neither).
        with self._lock:
            changed = html != self._latest
            self._latest = html
            subscribers = list(self._subscribers)
        if not changed:
            return
        for subscriber in subscribers:
            try:
                subscriber.loop.call_soon_threadsafe(subscriber.offer, html)
            except RuntimeError:  # its loop closed: the stream is gone
                self.unsubscribe(subscriber)


def _now() -> float:
    return time.monotonic()


def sse_message(event: str, html: str) -> str:
    """One Server-Sent Event carrying ``html`` (every line prefixed ``data:``)."""
    lines = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"event: {event}\n{lines}\n"
