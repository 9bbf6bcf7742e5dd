"""Sluice's API served by uvicorn on a spare loopback port, in a thread of this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from harness.cluster import free_port, wait_until
from sluice.api.app import build_api
from sluice.runtime import Runtime
from sluice.settings import Settings


def api_only_settings(database_url: str, **overrides: object) -> Settings:
    """Settings for serving the API alone: a ``sandbox`` provider (the demo preset, 20/s)
    at a port nothing answers, so nothing is sent anywhere."""
    values: dict[str, object] = {
        "database_url": database_url,
        "providers": {
            "sandbox": {
                "preset": "sandbox-demo",
                "base_url": "http://127.0.0.1:9",
                "rate_limit": "20/s",
            }
        },
    }
    return Settings(**{**values, **overrides})  # type: ignore[arg-type]


@contextmanager
def serve_api(runtime: Runtime, start_timeout_s: float = 60.0) -> Iterator[str]:
    """Serve ``runtime``'s API until the block ends; its base URL. The runtime stays the
    caller's to close."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_api(runtime), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, start_timeout_s, "the API server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
