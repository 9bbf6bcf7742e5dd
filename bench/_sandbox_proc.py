"""The sandbox DSP in its own process, with every API arrival timestamped (benchmarks only).

Serves the unmodified sandbox app (configured exactly as ``sluice sandbox`` does it: flags
over the ``[sandbox]`` table of ``$SLUICE_CONFIG``) behind a thin ASGI wrapper that notes
the wall-clock time, method and answer status of every ``/v1/*`` request. The sandbox keeps
no arrival times of its own (its sliding logs are pruned), so the benchmarks read them
from the wrapper:

* ``GET /_bench/arrivals``: ``[[posix_seconds, method, status], ...]`` since the last
  clear (status 0 while the answer has not started);
* ``DELETE /_bench/arrivals``: clear them.

Everything else (``/_sandbox/stats``, ``/_sandbox/reset``, ``/_sandbox/config``, ``/v1``)
is the sandbox's own. Run: ``python -m bench._sandbox_proc --port P --profile standard``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ARRIVALS_PATH = "/_bench/arrivals"


class ArrivalRecorder:
    """ASGI wrapper: timestamps ``/v1/*`` requests, serves them at :data:`ARRIVALS_PATH`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.arrivals: list[list[Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/v1/"):
                arrival = [time.time(), scope["method"], 0]
                self.arrivals.append(arrival)

                async def noting_status(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        arrival[2] = message["status"]
                    await send(message)

                await self.app(scope, receive, noting_status)
                return
            if path == ARRIVALS_PATH:
                await self._answer(scope["method"], send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, method: str, send: Send) -> None:
        body: Any = self.arrivals
        if method == "DELETE":
            self.arrivals = []
            body = {"cleared": True}
        raw = json.dumps(body, separators=(",", ":")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(raw)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": raw})


def serve(argv: list[str] | None = None) -> None:
    """Parse ``sluice sandbox``-like flags and serve until killed."""
    import uvicorn

    from sluice.sandbox.app import create_sandbox_app
    from sluice.sandbox.cli import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--profile", default="standard")
    parser.add_argument("--config", type=Path, default=None, help="else $SLUICE_CONFIG")
    args = parser.parse_args(argv)
    config = load_config(args.config, port=args.port, profile=args.profile)
    uvicorn.run(
        ArrivalRecorder(create_sandbox_app(config)),
        host=config.host,
        port=config.port,
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    serve()
