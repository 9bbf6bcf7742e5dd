"""How an over-limit request is refused, in each profile's style.

Every style tells the truth about when a slot frees (rounded up, never down), except
``bare``, which like LinkedIn or DV360 says nothing at all.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sluice.sandbox.limiter import Verdict
from sluice.sandbox.profiles import ThrottleStyle

META_RATE_LIMIT_CODE = 17
"""Meta's "User request limit reached" error code."""


@dataclass(frozen=True)
class ThrottleAnswer:
    """The status, body (None for empty) and headers of a refusal."""

    status_code: int
    body: dict[str, Any] | None
    headers: dict[str, str]


def refuse(style: ThrottleStyle, verdict: Verdict, now: float, app_key: str) -> ThrottleAnswer:
    """The answer to a request the limiter refused at ``now``."""
    binding = verdict.binding
    assert binding is not None, "refuse() needs a refused verdict"
    wait_s = max(0.0, verdict.free_at - now)
    message = f"rate limit {binding.limit_key} reached: {binding.limit} per {binding.window_s:g}s"
    if style is ThrottleStyle.RETRY_AFTER:
        return ThrottleAnswer(
            429,
            {"error": {"code": "RATE_LIMITED", "message": message}},
            {"Retry-After": str(max(1, math.ceil(wait_s)))},
        )
    if style is ThrottleStyle.RATE_HEADERS:
        return ThrottleAnswer(
            429,
            {"error": {"code": "RATE_LIMITED", "message": message}},
            {
                "X-RateLimit-Limit": str(binding.limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{_ceil_to(now + wait_s, 3):.3f}",
            },
        )
    if style is ThrottleStyle.META:
        usage = {
            app_key: [
                {
                    "type": "ads_management",
                    "call_count": 100,
                    "estimated_time_to_regain_access": _ceil_to(wait_s / 60.0, 4),
                }
            ]
        }
        return ThrottleAnswer(
            400,
            {
                "error": {
                    "message": "User request limit reached",
                    "type": "OAuthException",
                    "code": META_RATE_LIMIT_CODE,
                    "is_transient": True,
                }
            },
            {"X-Business-Use-Case-Usage": json.dumps(usage, separators=(",", ":"))},
        )
    return ThrottleAnswer(429, None, {})


def _ceil_to(value: float, decimals: int) -> float:
    """``value`` rounded up to ``decimals`` places, so a client never retries too early."""
    scale: float = 10.0**decimals
    return math.ceil(value * scale - 1e-9) / scale
