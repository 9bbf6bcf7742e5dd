"""Run the sandbox with real uvicorn in a background thread (tests, benchmarks, ``up --demo``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

import uvicorn

from sluice.sandbox.app import create_sandbox_app
from sluice.sandbox.config import SandboxConfig

STARTUP_TIMEOUT_S = 10.0


class SandboxServer:
    """The sandbox DSP on a loopback port, served by uvicorn in a daemon thread.

    Example::

        with SandboxServer(SandboxConfig(profile="demo")) as sandbox:
            httpx.get(f"{sandbox.base_url}/healthz")
    """

    def __init__(
        self,
        config: SandboxConfig,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.app = create_sandbox_app(config, clock)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.base_url: str | None = None
        """``http://host:port`` once started."""

    def start(self) -> str:
        """Start serving and return the base URL once the server accepts connections.

        Raises:
            RuntimeError: already started, or uvicorn did not come up in time.
        """
        if self._server is not None:
            raise RuntimeError("sandbox server already started")
        # Binding here, not in uvicorn, tells us the port before the thread starts (port 0).
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            http="httptools",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="sandbox-dsp", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sandbox server did not start on {self.host}:{self.port}")
            time.sleep(0.005)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.base_url = f"http://{host}:{self.port}"
        return self.base_url

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=STARTUP_TIMEOUT_S)
        self._server = None
        self._thread = None

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
