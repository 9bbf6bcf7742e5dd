"""Recognising "slow down" answers and reading how long to pause.

A response is a rate-limit signal when its HTTP status is one of ``statuses`` (429 by
default) or, for any non-2xx answer, when the body's error code is one of ``codes``
(Meta's 17 / 613 / 80000-80004 arrive with HTTP 400). The pause comes from the first of:
``Retry-After`` (seconds or an HTTP date), the reset header (epoch seconds, epoch
milliseconds or a delta), the usage header (Meta's ``estimated_time_to_regain_access``),
else ``default_pause``; it is clamped to ``[0, max_pause]``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from sluice.providers.base import RateLimited
from sluice.providers.config import SignalConfig
from sluice.providers.templating import scalar_at
from sluice.units import UNIT_S, format_duration

# Below this a reset value cannot be an epoch time (it would be before 2001).
_EPOCH_THRESHOLD_S = 1_000_000_000.0


def detect(
    response: httpx.Response, body: Any, config: SignalConfig, now_s: float
) -> RateLimited | None:
    """The rate-limit decision for ``response``, or None when it is not a signal."""
    status = response.status_code
    code = _body_code(body, config)
    if status in config.statuses:
        reason = f"HTTP {status}"
    elif status >= 300 and code is not None and code in config.codes:
        reason = f"HTTP {status} with error code {code}"
    else:
        return None
    pause, source = pause_for(response.headers, config, now_s)
    return RateLimited(
        retry_after_s=pause, detail=f"{reason}; pause {format_duration(pause)} ({source})"
    )


def kind(response: httpx.Response, body: Any, config: SignalConfig) -> str:
    """What made ``response`` a signal, as a metrics label: ``http_429``, ``error_code_613``."""
    if response.status_code in config.statuses:
        return f"http_{response.status_code}"
    return f"error_code_{_body_code(body, config)}"


def pause_for(headers: httpx.Headers, config: SignalConfig, now_s: float) -> tuple[float, str]:
    """Seconds to pause and where that number came from."""
    candidates: list[tuple[float | None, str]] = []
    if config.retry_after_header:
        candidates.append(
            (
                retry_after_seconds(headers.get(config.retry_after_header), now_s),
                config.retry_after_header,
            )
        )
    if config.reset_header:
        candidates.append(
            (
                reset_seconds(headers.get(config.reset_header), config.reset_kind, now_s),
                config.reset_header,
            )
        )
    if config.usage_header:
        candidates.append(
            (
                usage_seconds(
                    headers.get(config.usage_header), config.usage_field, UNIT_S[config.usage_unit]
                ),
                config.usage_header,
            )
        )
    for seconds, source in candidates:
        if seconds is not None:
            return _clamp(seconds, config.max_pause), source
    return _clamp(config.default_pause, config.max_pause), "default pause"


def retry_after_seconds(value: str | None, now_s: float) -> float | None:
    """Seconds in a ``Retry-After`` value (delay seconds or an HTTP date), else None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    number = _number(text)
    if number is not None:
        return max(0.0, number)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_s)


def reset_seconds(value: str | None, kind: str, now_s: float) -> float | None:
    """Seconds until a reset header's time (``epoch``, ``epoch_ms``, ``delta`` or ``auto``)."""
    number = _number(value.strip()) if value else None
    if number is None:
        return None
    if kind == "auto":
        kind = "epoch" if number >= _EPOCH_THRESHOLD_S else "delta"
        if number >= _EPOCH_THRESHOLD_S * 1000:
            kind = "epoch_ms"
    if kind == "epoch":
        return max(0.0, number - now_s)
    if kind == "epoch_ms":
        return max(0.0, number / 1000.0 - now_s)
    return max(0.0, number)


def usage_seconds(value: str | None, field: str, unit_s: float) -> float | None:
    """The largest ``field`` anywhere in a JSON usage header, in seconds, else None."""
    if not value:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    found = [n for n in _numbers_named(data, field) if math.isfinite(n)]
    return max(found) * unit_s if found else None


def _numbers_named(data: Any, field: str) -> Iterator[float]:
    if isinstance(data, dict):
        for key, item in data.items():
            if key == field and isinstance(item, int | float) and not isinstance(item, bool):
                yield float(item)
            else:
                yield from _numbers_named(item, field)
    elif isinstance(data, list):
        for item in data:
            yield from _numbers_named(item, field)


def _body_code(body: Any, config: SignalConfig) -> str | None:
    if not config.codes:
        return None
    return scalar_at(body, config.code_field)


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _clamp(seconds: float, max_pause: float) -> float:
    return min(max(0.0, seconds), max_pause)
