"""Time units as written in configuration, in one table for durations and rate windows.

Durations: ``"500ms"``, ``"2s"``, ``"5min"``, ``"1h"``, ``"1d"``; a bare number means
seconds. Rates (:func:`sluice.ratelimit.rate.parse_rate`) use the same units for their
window (``"40/min"``), and so does a provider's usage header (``usage_unit``). ``"m"`` is
refused everywhere: minutes or milliseconds is a guess Sluice does not make. Values are
kept as float seconds; :func:`format_duration` writes them back in the shortest exact unit,
and :func:`format_window` a rate's window (``Rate.__str__``: ``40/min``, ``5/2s``).
"""

from __future__ import annotations

import math
import re

from sluice import errors

UNIT_S: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
"""Seconds per unit; the short forms (ms, s, min, h, d) are the documented ones."""

MAX_DURATION_S = 3650 * 86400.0
"""The longest duration anything accepts: ten years (``"3650d"``). Times are computed as
``now +/- duration``; a longer one is a typo, and one past about 8,000 years did not fit a
date at all (the pruning command and key expiries failed with a traceback)."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")


def parse_duration(value: object) -> float:
    """Seconds in ``value`` (``"2s"``, ``"1.5min"``, ``"1h"`` or a number of seconds).

    Raises:
        errors.InvalidValue: the text is not a non-negative duration with a known unit, or
            it is longer than :data:`MAX_DURATION_S`.
    """
    if isinstance(value, bool):
        raise errors.InvalidValue(f"must be a duration like '2s', '5min' or '1h', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value.lower())
        if match is None or match.group(2) not in UNIT_S:
            raise errors.InvalidValue(
                f"must be a duration like '500ms', '2s', '5min', '1h' or '1d', got {value!r}"
            )
        seconds = float(match.group(1)) * UNIT_S[match.group(2)]
    else:
        raise errors.InvalidValue(f"must be a duration like '2s', '5min' or '1h', got {value!r}")
    if seconds < 0 or not math.isfinite(seconds):
        raise errors.InvalidValue(f"must be a non-negative duration, got {value!r}")
    if seconds > MAX_DURATION_S:
        raise errors.InvalidValue(f"must be at most 3650d (ten years), got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Short human text for ``seconds``: ``"1h"``, ``"90s"``, ``"250ms"``."""
    for unit in ("d", "h", "min", "s"):
        size = UNIT_S[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


def format_window(seconds: float) -> str:
    """A rate's window as written after its slash: ``s``, ``min``, ``h`` or ``d`` for one of
    a unit, else a duration (``2s``, ``90s``, ``500ms``); :func:`parse_duration` reads both."""
    for unit in ("s", "min", "h", "d"):
        if seconds == UNIT_S[unit]:
            return unit
    return format_duration(seconds)
