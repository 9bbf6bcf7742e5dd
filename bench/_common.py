"""Small helpers every benchmark shares: start-up waits and machine facts.

Ports, TOML values and whole clusters of processes come from :mod:`harness.cluster`.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

import httpx


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
