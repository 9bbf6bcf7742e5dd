"""Small helpers every benchmark shares: ports, start-up waits, TOML values, machine facts."""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from datetime import UTC, datetime
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(url: str, timeout_s: float = 20.0) -> None:
    """Wait until ``url`` answers 200, or raise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered at {url} within {timeout_s:g}s")


def toml_value(value: Any) -> str:
    """A value as inline TOML (tables and arrays inline, scalars as JSON)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def machine_info() -> dict[str, Any]:
    """Where and when the figures were taken, and how busy the machine was."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
