"""How an over-limit request is refused, in each profile's style.

Every style tells the truth about when the call would be admitted (rounded up, never
down), except ``bare`` and ``resource_exhausted``, which like LinkedIn and DV360 say
nothing about when.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sluice.sandbox.limit import LimitState
from sluice.sandbox.limiter import Refusal, Verdict
from sluice.sandbox.profiles import ThrottleStyle
from sluice.sandbox.reveal import ceil_to, google_duration, ratelimit_fields

META_RATE_LIMIT_CODE = 17
"""Meta's "User request limit reached" error code."""

GOOGLE_EXHAUSTED_MESSAGE = "Resource has been exhausted (e.g. check quota)."
"""The message of Google's gRPC status RESOURCE_EXHAUSTED (HTTP 429)."""

GOOGLE_ADS_FAILURE = "type.googleapis.com/google.ads.googleads.v17.errors.GoogleAdsFailure"


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
                "X-RateLimit-Reset": f"{ceil_to(now + wait_s, 3):.3f}",
            },
        )
    if style is ThrottleStyle.META:
        usage = {
            app_key: [
                {
                    "type": "ads_management",
                    "call_count": 100,
                    "estimated_time_to_regain_access": ceil_to(wait_s / 60.0, 4),
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
    if style is ThrottleStyle.RESOURCE_EXHAUSTED:
        return ThrottleAnswer(429, _google_error(), {})
    if style is ThrottleStyle.QUOTA_ERROR:
        return ThrottleAnswer(429, _quota_error(verdict, now), {})
    if style is ThrottleStyle.RATELIMIT_FIELDS:
        state = LimitState(binding.limit, 0, binding.free_at, binding.window_s)
        return ThrottleAnswer(
            429,
            {"error": {"code": "RATE_LIMITED", "message": "rate limit reached"}},
            ratelimit_fields(state, now),
        )
    return ThrottleAnswer(429, None, {})


def _google_error() -> dict[str, Any]:
    """Google's JSON error for gRPC status RESOURCE_EXHAUSTED, as DV360 answers it."""
    return {
        "error": {"code": 429, "message": GOOGLE_EXHAUSTED_MESSAGE, "status": "RESOURCE_EXHAUSTED"}
    }


def _quota_error(verdict: Verdict, now: float) -> dict[str, Any]:
    """A Google Ads ``QuotaError``: the daily quota is spent, or the short rate is exceeded.

    A refusal by any quota limit is ``RESOURCE_EXHAUSTED`` (wait for the window to end);
    one by rate limits only is ``RESOURCE_TEMPORARILY_EXHAUSTED``. Either way
    ``retry_delay`` says how long until the call would be admitted.
    """
    quota_refusals = [refusal for refusal in verdict.refusals if refusal.quota]
    binding: Refusal = max(quota_refusals or verdict.refusals, key=lambda r: r.free_at)
    wait_s = max(0.0, verdict.free_at - now)
    error = {
        "error_code": {
            "quota_error": "RESOURCE_EXHAUSTED"
            if quota_refusals
            else "RESOURCE_TEMPORARILY_EXHAUSTED"
        },
        "message": f"Too many requests. Retry in {max(1, math.ceil(wait_s))} seconds.",
        "details": {
            "quota_error_details": {
                "rate_scope": "ACCOUNT" if binding.per == "advertiser" else "DEVELOPER",
                "rate_name": binding.limit_key.partition(":")[0],
                "retry_delay": google_duration(wait_s),
            }
        },
    }
    failure = {"@type": GOOGLE_ADS_FAILURE, "errors": [error]}
    body = _google_error()
    body["error"]["details"] = [failure]
    return body
