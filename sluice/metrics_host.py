"""Where one host's Sluice processes keep their metrics, and serving that host's sum.

prometheus_client's multiprocess mode is chosen when it is first imported, by
``PROMETHEUS_MULTIPROC_DIR``; so this module imports it only inside functions, and the
commands that start processes (``sluice worker``, ``sluice up``, ``sluice api``,
``sluice metrics-serve``) call :func:`prepare` before they import anything that records
metrics. When the variable is not given, every Sluice process of one deployment on a host
picks the same directory: ``<tmp>/sluice-metrics-<digest>``, the digest of the database URL
and limiter namespace (two deployments on one host never mix; no secret can be read back
from it). Worker processes started by ``sluice up --workers`` inherit it.

Counters of processes that ended stay in the directory (a sum over processes must never go
down); their "live" gauges (requests in flight) are removed (:func:`forget_dead_processes`,
at every scrape and when a Celery child exits). The directory may be emptied whenever no
Sluice process runs on the host, e.g. at boot.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sluice import errors

log = logging.getLogger("sluice.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def default_dir(database_url: str, namespace: str) -> Path:
    """This deployment's directory on this host (same for every process of it)."""
    digest = hashlib.sha256(f"{database_url}\n{namespace}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"sluice-metrics-{digest}"


def prepare(database_url: str, namespace: str) -> str | None:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` (unless given) and create it; returns it.

    Returns None, changing nothing, when prometheus_client was already imported without
    it: that process keeps its metrics in memory (tests that call commands in-process).
    """
    given = os.environ.get(MULTIPROC_ENV)
    if not given and "prometheus_client" in sys.modules:
        return None
    path = Path(given) if given else default_dir(database_url, namespace)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    return str(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_processes(path: str) -> list[int]:
    """Remove the live gauges (in-flight requests) of processes no longer running."""
    from prometheus_client.multiprocess import mark_process_dead

    dead: list[int] = []
    try:
        names = os.listdir(path)
    except OSError:
        return dead
    for name in names:
        match = _LIVE_FILE.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid not in dead and not _alive(pid):
            dead.append(pid)
    for pid in dead:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return dead


def process_ended(pid: int | None = None) -> None:
    """This process (or ``pid``) is ending: its in-flight gauge no longer counts."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(os.getpid() if pid is None else pid, path)  # type: ignore[no-untyped-call]


# --- serving a host's metrics -------------------------------------------------------------


def token_matches(header: str | None, token: str | None) -> bool:
    """Whether ``Authorization: Bearer <token>`` carries ``token`` (constant time)."""
    if not token or not header:
        return False
    scheme, _, given = header.partition(" ")
    # Bytes: compare_digest refuses str with non-ASCII characters (a header may carry any).
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), token.encode("utf-8", "replace")
    )


def metrics_app(token: str | None) -> Callable[..., Iterable[bytes]]:
    """A WSGI app answering ``GET /metrics`` with this host's metrics.

    With ``token``, a scrape must carry ``Authorization: Bearer <token>`` (else 401).
    """
    from sluice import metrics

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") not in ("/metrics", "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: scrape /metrics\n"]
        if token and not token_matches(environ.get("HTTP_AUTHORIZATION"), token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"a scrape token is required: Authorization: Bearer <token>\n"]
        body = metrics.exposition()
        start_response("200 OK", [("Content-Type", metrics.CONTENT_TYPE)])
        return [body]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


def serve(host: str, port: int, token: str | None) -> WSGIServer:
    """Start serving this host's metrics on a daemon thread; returns the server.

    An address it cannot listen on raises :class:`~sluice.errors.ConfigError`, one line.
    """
    try:
        server = make_server(
            host, port, metrics_app(token), server_class=_Server, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise errors.ConfigError(cannot_listen(host, port, exc)) from None
    thread = threading.Thread(target=server.serve_forever, name="sluice-metrics", daemon=True)
    thread.start()
    log.info("metrics.serving", extra={"address": f"http://{host}:{server.server_port}/metrics"})
    return server


def check_listen(host: str, port: int) -> None:
    """Raise :class:`~sluice.errors.ConfigError` now if ``host:port`` cannot be listened on
    (in use, or an address this host does not have), without keeping it."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise errors.ConfigError(cannot_listen(host, port, exc)) from None


def cannot_listen(host: str, port: int, exc: OSError) -> str:
    """``cannot listen on HOST:PORT for metrics: <the system's reason>``."""
    reason = exc.strerror or type(exc).__name__
    return f"cannot listen on {host}:{port} for metrics: {reason}"
