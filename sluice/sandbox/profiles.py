"""Profiles: the status vocabulary and rate-limit style of each imitated DSP family.

A profile fixes what a client sees (status words, how an over-limit call is refused) and
supplies configuration defaults that the ``[sandbox]`` section may override.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ThrottleStyle(StrEnum):
    """How an over-limit request is refused."""

    RETRY_AFTER = "retry_after"
    """429 with ``Retry-After: <whole seconds>`` (TTD, Amazon)."""
    RATE_HEADERS = "rate_headers"
    """429 with ``X-RateLimit-Limit/Remaining/Reset`` (Criteo)."""
    META = "meta"
    """HTTP 400, error code 17 and ``X-Business-Use-Case-Usage`` (Meta)."""
    BARE = "bare"
    """429 with no headers and no body (LinkedIn)."""
    RESOURCE_EXHAUSTED = "resource_exhausted"
    """429 with Google's ``RESOURCE_EXHAUSTED`` error body and no headers (DV360)."""
    QUOTA_ERROR = "quota_error"
    """429 with a Google Ads ``QuotaError``: short rate or daily quota, and ``retry_delay``."""
    RATELIMIT_FIELDS = "ratelimit_fields"
    """429; every limited answer carries ``X-RateLimit-*`` and the IETF ``RateLimit`` fields."""

    @property
    def reveals(self) -> bool:
        """Whether every limited answer, not only a refusal, tells the limit's state."""
        return self is ThrottleStyle.RATELIMIT_FIELDS


@dataclass(frozen=True)
class StatusWords:
    """The four words an object's status goes through."""

    initial: str
    processing: str
    approved: str
    rejected: str


@dataclass(frozen=True)
class Profile:
    """One imitated DSP family."""

    name: str
    words: StatusWords
    throttle: ThrottleStyle
    defaults: Mapping[str, Any] = field(default_factory=dict)


DEMO_FIXTURES: dict[str, dict[str, Any]] = {
    "1": {"status": "In Progress"},
    "2": {"status": "Completed"},
    "3": {"status": "Error", "error_message": "Invalid IP range: 192.168.1.256"},
}
"""The prototype's three external ids, answered by the batch status endpoint."""

DEMO_FAULTS: dict[str, Any] = {
    "error_5xx": 0.01,
    "unavailable_503": 0.005,
    "reset": 0.005,
    "commit_then_timeout": 0.005,
    "hang_s": 3.0,
}
"""Low fault rates, so the demo shows Sluice recovering without drowning in errors."""

# The profiles added for costs, quotas, hidden limits and spacing reuse these three sets of
# words, so the shipped presets (sandbox-standard, -headers, -bare) describe them as they are.
STANDARD_WORDS = StatusWords("pending", "processing", "active", "rejected")
HEADERS_WORDS = StatusWords("QUEUED", "RUNNING", "DONE", "FAILED")
BARE_WORDS = StatusWords("BUILDING", "BUILDING", "READY", "FAILED")

DV360_DEFAULTS: dict[str, Any] = {
    "limits": [
        {"name": "project", "per": "app", "limit": 1500, "window_s": 60},
        {
            "name": "project_writes",
            "per": "app",
            "scope": "write",
            "limit": 700,
            "window_s": 60,
            "weighted": True,
        },
        {"name": "advertiser", "per": "advertiser", "limit": 300, "window_s": 60},
        {
            "name": "advertiser_writes",
            "per": "advertiser",
            "scope": "write",
            "limit": 150,
            "window_s": 60,
            "weighted": True,
        },
    ],
    # DV360 counts firstAndThirdPartyAudiences.create as a write-intensive method (5 writes).
    "costs": {"POST /v1/audiences": 5},
}
"""DV360's published budgets: per project and per advertiser, writes inside them."""

GOOGLE_ADS_DEFAULTS: dict[str, Any] = {
    "limits": [
        {
            "name": "daily_operations",
            "kind": "fixed",
            "limit": 15_000,
            "window_s": 86_400,
            "timezone": "America/Los_Angeles",
        },
        {"name": "short_rate", "kind": "bucket", "limit": 50, "window_s": 1, "burst": 10},
    ],
}
"""Basic access: 15,000 operations a day (Pacific midnight), paced by a token bucket."""

HIDDEN_DEFAULTS: dict[str, Any] = {
    "limits": [
        {"name": "hidden", "limit": 40, "window_s": 1, "schedule": [[30, 40], [60, 20]]},
    ],
}
"""40/s for 30 s, then 20/s for a minute, then 40/s for good."""

LEAKY_DEFAULTS: dict[str, Any] = {
    "limits": [{"name": "spacing", "kind": "bucket", "limit": 50, "window_s": 1, "burst": 1}],
}
"""One call every 20 ms, one call of burst tolerated, judged to the millisecond."""

PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile("standard", STANDARD_WORDS, ThrottleStyle.RETRY_AFTER),
        Profile("headers", HEADERS_WORDS, ThrottleStyle.RATE_HEADERS),
        Profile(
            "meta",
            StatusWords("PENDING", "IN_PROGRESS", "SUCCESS", "ERROR"),
            ThrottleStyle.META,
        ),
        Profile("bare", BARE_WORDS, ThrottleStyle.BARE),
        Profile(
            "demo",
            StatusWords("Not Started", "In Progress", "Completed", "Error"),
            ThrottleStyle.RETRY_AFTER,
            defaults={"faults": DEMO_FAULTS, "fixtures": DEMO_FIXTURES},
        ),
        Profile("dv360", HEADERS_WORDS, ThrottleStyle.RESOURCE_EXHAUSTED, DV360_DEFAULTS),
        Profile("google-ads", HEADERS_WORDS, ThrottleStyle.QUOTA_ERROR, GOOGLE_ADS_DEFAULTS),
        Profile("hidden", BARE_WORDS, ThrottleStyle.BARE, HIDDEN_DEFAULTS),
        Profile("hidden-headers", HEADERS_WORDS, ThrottleStyle.RATELIMIT_FIELDS, HIDDEN_DEFAULTS),
        Profile("leaky", STANDARD_WORDS, ThrottleStyle.RETRY_AFTER, LEAKY_DEFAULTS),
    )
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``.

    Raises:
        ValueError: no such profile; the message lists the known ones.
    """
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown sandbox profile {name!r}; known: {known}") from None
