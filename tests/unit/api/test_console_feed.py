"""The console's live feed: one poller renders for every open stream, sends only changes,
newest wins for a slow reader, and stops polling when nobody listens."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sluice.api.console import feed as feed_module
from sluice.api.console.feed import LiveFeed, sse_message


def test_one_render_reaches_every_subscriber_and_only_changes_are_sent() -> None:
    state = {"html": "<p>one</p>"}
    renders = threading.Semaphore(0)

    def render() -> str:
        renders.release()
        return state["html"]

    feed = LiveFeed(render, poll_s=0.01)

    async def scenario() -> tuple[list[str], int]:
        subscribers = [feed.subscribe() for _ in range(50)]
        first = [await asyncio.wait_for(s.queue.get(), 5) for s in subscribers]
        state["html"] = "<p>two</p>"
        second = [await asyncio.wait_for(s.queue.get(), 5) for s in subscribers]
        rendered = feed.renders
        # Unchanged HTML is not sent again.
        await asyncio.sleep(0.1)
        assert all(s.queue.empty() for s in subscribers)
        for s in subscribers:
            feed.unsubscribe(s)
        return first + second, rendered

    try:
        seen, rendered = asyncio.run(scenario())
    finally:
        feed.stop()
    assert seen == ["<p>one</p>"] * 50 + ["<p>two</p>"] * 50
    # One poller: renders follow time, not the number of streams (50 streams, a few renders).
    assert rendered < 50
    assert feed.listeners == 0


def test_a_slow_reader_gets_the_newest_state_only() -> None:
    async def scenario() -> list[str]:
        subscriber = LiveFeed(lambda: "", poll_s=1).subscribe()
        for n in range(5):
            subscriber.offer(f"state {n}")
        return [subscriber.queue.get_nowait()]

    assert asyncio.run(scenario()) == ["state 4"]


def test_the_poller_stops_when_nobody_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "IDLE_STOP_S", 0.05)
    feed = LiveFeed(lambda: "x", poll_s=0.01)

    async def scenario() -> None:
        subscriber = feed.subscribe()
        await asyncio.wait_for(subscriber.queue.get(), 5)
        feed.unsubscribe(subscriber)

    asyncio.run(scenario())
    thread = feed._thread
    assert thread is not None
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_an_event_carries_every_line_as_data() -> None:
    assert sse_message("live", "<a>\n<b>") == "event: live\ndata: <a>\ndata: <b>\n\n"
