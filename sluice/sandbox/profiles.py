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
    """429 with no headers and no body (LinkedIn, DV360)."""


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

PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "standard",
            StatusWords("pending", "processing", "active", "rejected"),
            ThrottleStyle.RETRY_AFTER,
        ),
        Profile(
            "headers",
            StatusWords("QUEUED", "RUNNING", "DONE", "FAILED"),
            ThrottleStyle.RATE_HEADERS,
        ),
        Profile(
            "meta",
            StatusWords("PENDING", "IN_PROGRESS", "SUCCESS", "ERROR"),
            ThrottleStyle.META,
        ),
        Profile(
            "bare",
            StatusWords("BUILDING", "BUILDING", "READY", "FAILED"),
            ThrottleStyle.BARE,
        ),
        Profile(
            "demo",
            StatusWords("Not Started", "In Progress", "Completed", "Error"),
            ThrottleStyle.RETRY_AFTER,
            defaults={"faults": DEMO_FAULTS, "fixtures": DEMO_FIXTURES},
        ),
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
