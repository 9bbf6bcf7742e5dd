"""The body limits count while the body arrives: a bulk batch over 10,000 items or 64 MiB is
refused with 413 before the rest of it is read, and the count is exact however the body
is cut into chunks."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.api.limits import BodySizeLimit, ItemCounter

# Strings that look like JSON structure: braces, brackets, quotes and backslashes inside.
tricky_text = st.text(alphabet=st.sampled_from(list('{}[]",\\ab:é\n')), max_size=12)
items = st.fixed_dictionaries(
    {"kind": tricky_text},
    optional={
        "payload": st.recursive(
            st.none() | st.integers() | tricky_text,
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3)
            ),
            max_leaves=6,
        ),
        "parent_index": st.integers(min_value=0, max_value=5),
    },
)


def cut(body: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(body), *(p % (len(body) + 1) for p in points)})
    return [body[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300, deadline=None)
@given(
    tasks=st.lists(items, max_size=12),
    other=st.dictionaries(st.sampled_from(["x", "y"]), tricky_text, max_size=2),
    points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
    indent=st.sampled_from([None, 0, 2]),
)
def test_item_counter_counts_the_tasks_however_the_body_is_cut(
    tasks: list[dict[str, Any]], other: dict[str, str], points: list[int], indent: int | None
) -> None:
    body = json.dumps({**other, "tasks": tasks}, indent=indent, ensure_ascii=False).encode()
    counter = ItemCounter()
    for chunk in cut(body, points):
        counter.feed(chunk)
    assert counter.count == len(tasks)


class Recorder:
    """An ASGI app that reads the whole body, and what the middleware sent back."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


def post(middleware: BodySizeLimit, recorder: Recorder, chunks: list[bytes]) -> int:
    """Stream ``chunks`` to the middleware; returns how many it pulled."""
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        index = pulled - 1
        return {
            "type": "http.request",
            "body": chunks[index],
            "more_body": index < len(chunks) - 1,
        }

    scope = {"type": "http", "path": "/api/tasks/bulk", "headers": []}
    asyncio.run(middleware(scope, receive, recorder.send))
    return pulled


def chunked_batch(count: int, per_chunk: int = 100) -> list[bytes]:
    item = json.dumps({"kind": "campaign", "payload": {"name": 'a {[ \\" b'}}).encode()
    chunks = [b'{"tasks": [']
    for start in range(0, count, per_chunk):
        n = min(per_chunk, count - start)
        chunks.append(b",".join([item] * n) + (b"," if start + n < count else b""))
    chunks.append(b"]}")
    return chunks


def test_a_batch_of_10001_items_is_refused_before_the_rest_is_read() -> None:
    recorder = Recorder()
    middleware = BodySizeLimit(
        recorder.app, max_bytes=1 << 20, bulk_max_bytes=64 << 20, bulk_max_items=10_000
    )
    chunks = chunked_batch(20_000)

    pulled = post(middleware, recorder, chunks)

    assert recorder.sent[0]["status"] == 413
    assert b"at most 10000 tasks" in recorder.sent[1]["body"]
    assert pulled == 102  # the opening, then 101 chunks of 100 items: 10,100 > 10,000
    assert pulled < len(chunks)


def test_a_batch_of_10000_items_goes_through() -> None:
    recorder = Recorder()
    middleware = BodySizeLimit(
        recorder.app, max_bytes=1 << 20, bulk_max_bytes=64 << 20, bulk_max_items=10_000
    )
    chunks = chunked_batch(10_000)

    assert post(middleware, recorder, chunks) == len(chunks)
    assert recorder.sent[0]["status"] == 201


def test_a_streamed_bulk_body_over_64_mib_stops_being_read_at_the_limit() -> None:
    recorder = Recorder()
    middleware = BodySizeLimit(
        recorder.app, max_bytes=1 << 20, bulk_max_bytes=64 << 20, bulk_max_items=10_000
    )
    chunk = b'{"tasks": [{"kind": "' + b"x" * (1 << 20)  # one string, never closed
    chunks = [chunk] + [b"x" * (1 << 20)] * 99

    pulled = post(middleware, recorder, chunks)

    assert recorder.sent[0]["status"] == 413
    assert pulled == 64  # 64 MiB and 21 bytes seen: the other 36 chunks are never read


# --- the body must be UTF-8 ----------------------------------------------------------------

NOT_UTF8 = ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]


def rechunk(body: bytes, size: int) -> list[bytes]:
    return [body[start : start + size] for start in range(0, len(body), size)]


@pytest.mark.parametrize("encoding", NOT_UTF8)
def test_a_bulk_body_in_utf16_or_utf32_is_refused_at_its_first_bytes(encoding: str) -> None:
    """A batch of 20,000 items in UTF-16 or UTF-32 is refused (415, naming UTF-8) after its
    first chunk: the item count reads UTF-8 bytes, so such a body went past the 10,000-item
    limit unseen and was read whole."""
    recorder = Recorder()
    middleware = BodySizeLimit(
        recorder.app, max_bytes=1 << 20, bulk_max_bytes=64 << 20, bulk_max_items=10_000
    )
    chunks = rechunk(b"".join(chunked_batch(20_000)).decode().encode(encoding), 1 << 16)

    pulled = post(middleware, recorder, chunks)

    assert recorder.sent[0]["status"] == 415
    detail = json.loads(recorder.sent[1]["body"])["detail"]
    assert detail.startswith("request body must be UTF-8 JSON; this one is UTF-"), detail
    assert pulled == 1


@settings(max_examples=200, deadline=None)
@given(
    tasks=st.lists(items, max_size=4),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", *NOT_UTF8]),
    points=st.lists(st.integers(min_value=0, max_value=2_000), max_size=6),
    leading=st.sampled_from(["", " ", "\n\t "]),
)
def test_a_body_is_refused_exactly_when_it_is_not_utf8_however_it_is_cut(
    tasks: list[dict[str, Any]], encoding: str, points: list[int], leading: str
) -> None:
    """Whatever the body and however it arrives in chunks (its first bytes split too), UTF-16
    and UTF-32 are refused with 415, and UTF-8 (a byte order mark allowed) goes through."""
    body = (leading + json.dumps({"tasks": tasks}, ensure_ascii=False)).encode(encoding)
    recorder = Recorder()
    middleware = BodySizeLimit(
        recorder.app, max_bytes=1 << 20, bulk_max_bytes=64 << 20, bulk_max_items=10_000
    )

    post(middleware, recorder, cut(body, points))

    assert recorder.sent[0]["status"] == (201 if encoding.startswith("utf-8") else 415)
