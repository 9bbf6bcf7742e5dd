"""The console's live streams end when their viewer may no longer see them."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.api_server import api_only_settings, serve_api
from sluice import apikeys
from sluice.domain import Actor
from sluice.runtime import Runtime, build_runtime
from sluice.store.keys import KeyStore


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Runtime, KeyStore]]:
    """The API with keys required, served by uvicorn on a spare loopback port."""
    settings = api_only_settings(f"sqlite:///{tmp_path / 'streams.db'}", auth="required")
    runtime = build_runtime(settings)
    try:
        with serve_api(runtime) as base_url:
            yield base_url, runtime, KeyStore(runtime.repo.engine, runtime.repo.clock)
    finally:
        runtime.close()


def _signed_in(base: str, token: str) -> httpx.Client:
    browser = httpx.Client(base_url=base, timeout=10)
    form = browser.get("/ui/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert csrf is not None
    answer = browser.post("/ui/login", data={"api_key": token, "csrf_token": csrf.group(1)})
    assert answer.status_code == 303
    return browser


def _read(browser: httpx.Client, lines: list[tuple[float, str]], ended: threading.Event) -> None:
    with browser.stream("GET", "/ui/events", timeout=httpx.Timeout(10, read=60)) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            lines.append((time.monotonic(), line))
    ended.set()


@pytest.mark.parametrize("how", ["revoked", "signed out"])
def test_a_live_stream_ends_when_its_key_is_revoked_or_its_session_ends(
    served: tuple[str, Runtime, KeyStore], how: str
) -> None:
    """An operator's /ui/events kept streaming provider-wide changes (here a pause and its
    reason) after the key was revoked or the user signed out: the session was checked only
    when the stream opened. Now nothing more is sent and the stream ends."""
    base, runtime, keys = served
    operator = apikeys.create_key(keys, name="op", role="operator", tenant=None)
    admin = apikeys.create_key(keys, name="admin", role="admin", tenant=None)
    browser = _signed_in(base, operator.token)
    lines: list[tuple[float, str]] = []
    ended = threading.Event()
    threading.Thread(target=_read, args=(browser, lines, ended), daemon=True).start()
    deadline = time.monotonic() + 10
    while not any(line.startswith("data:") for _, line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first state arrives once the stream is open
    assert any(line.startswith("data:") for _, line in lines)

    if how == "revoked":
        keys.revoke(operator.key.id)
    else:
        page = browser.get("/ui").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf is not None
        assert browser.post("/ui/logout", data={"csrf_token": csrf.group(1)}).status_code == 303
    cut = time.monotonic()
    runtime.controls.pause(
        "sandbox", reason="AFTER-THE-END", until=None, actor=Actor.of_key(admin.key)
    )

    assert ended.wait(15), "the stream is still open"
    after: list[Any] = [line for at, line in lines if at > cut]
    assert not any("AFTER-THE-END" in line for line in after)
