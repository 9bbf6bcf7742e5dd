"""Header fields that reveal a limit's state: ``X-RateLimit-*`` and the IETF draft's fields.

Criteo-like APIs send ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset``; the IETF httpapi draft sends ``RateLimit-Policy: 40;w=1`` and
``RateLimit: limit=40, remaining=12, reset=1``. Both describe one limit, the one with the
fewest units remaining among those the call was judged by:

* limit: the limit in force now (a scheduled limit shows its current value);
* remaining: units that could be admitted right now;
* reset: when ``remaining`` next grows (for a sliding window, when the oldest counted
  call leaves it; on a refusal, when the refused call would be admitted).
  ``X-RateLimit-Reset`` gives it as POSIX seconds with 3 decimals, ``RateLimit`` as whole
  seconds from now; both are rounded up, so a client that waits that long is admitted.
"""

from __future__ import annotations

import math

from sluice.sandbox.limit import LimitState


def ratelimit_fields(state: LimitState, now: float) -> dict[str, str]:
    """The five header fields describing ``state`` at ``now``."""
    reset_in_s = max(0, math.ceil(state.reset_at - now - 1e-9))
    return {
        "X-RateLimit-Limit": str(state.limit),
        "X-RateLimit-Remaining": str(state.remaining),
        "X-RateLimit-Reset": f"{ceil_to(state.reset_at, 3):.3f}",
        "RateLimit-Policy": f"{state.limit};w={seconds_text(state.window_s)}",
        "RateLimit": f"limit={state.limit}, remaining={state.remaining}, reset={reset_in_s}",
    }


def ceil_to(value: float, decimals: int) -> float:
    """``value`` rounded up to ``decimals`` places, so a client never retries too early."""
    scale: float = 10.0**decimals
    return math.ceil(value * scale - 1e-9) / scale


def seconds_text(seconds: float) -> str:
    """Seconds as the shortest exact text: ``1``, ``86400``, ``0.5``."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return f"{seconds:.6f}".rstrip("0")


def google_duration(seconds: float) -> str:
    """A protobuf ``Duration`` in its JSON form, rounded up to the millisecond (``"1.250s"``)."""
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    whole, part = divmod(millis, 1000)
    return f"{whole}s" if part == 0 else f"{whole}.{part:03d}s"
