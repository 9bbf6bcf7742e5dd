"""The bulk route runs with the cyclic collector paused once its body is in, and resumes it."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from sluice.api.gcpause import CollectorPausedFor, collector_paused


def run(path: str, chunks: list[bytes]) -> list[bool]:
    """Drive the middleware over ``chunks``; returns gc.isenabled() after each receive."""
    seen: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(gc.isenabled())
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    messages = iter(
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    )

    async def receive() -> Message:
        return next(messages)

    async def send(_: Message) -> None:
        seen.append(gc.isenabled())

    scope: dict[str, Any] = {"type": "http", "path": path}
    asyncio.run(CollectorPausedFor(app, "/api/tasks/bulk")(scope, receive, send))
    return seen


def test_the_bulk_path_is_paused_from_its_last_chunk_to_its_response() -> None:
    assert gc.isenabled()
    assert run("/api/tasks/bulk", [b'{"tasks": [', b"{}", b"]}"]) == [
        True,
        True,
        False,  # the last chunk is in: paused
        False,  # response start
        False,  # response body
    ]
    assert gc.isenabled()


def test_other_paths_are_left_alone() -> None:
    assert run("/api/tasks", [b"{}"]) == [True, True, True]
    assert gc.isenabled()


def test_overlapping_pauses_resume_once_the_last_ends_and_never_a_disabled_collector() -> None:
    with collector_paused():
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
