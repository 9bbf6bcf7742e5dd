"""Recognising "slow down" answers, reading how long to pause and what the limit is.

A response is a rate-limit signal when its HTTP status is one of ``statuses`` (429 by
default) or, for any non-2xx answer, when the body's error code is one of ``codes``
(Meta's 17 / 613 / 80000-80004 arrive with HTTP 400). The pause comes from the first of:
``Retry-After`` (seconds or an HTTP date), the reset header (epoch seconds, epoch
milliseconds or a delta), the usage header (Meta's ``estimated_time_to_regain_access``),
a retry delay in the error body (Google's ``retry_delay``: ``"1.5s"``, seconds, or
``{"seconds": 1, "nanos": 5e8}``), else ``default_pause``; it is clamped to
``[0, max_pause]``.

:func:`read_limits` reads, from any answer, what it says of the limit's state: the
``limit_header`` / ``remaining_header`` / ``reset_header`` trio (``X-RateLimit-*``), the
IETF draft's ``RateLimit`` and ``RateLimit-Policy`` fields, and Meta's usage percentages.
A value that is not a finite number, is negative, or is absurd (a limit or remaining above
:data:`MAX_COUNT`, a reset more than :data:`MAX_RESET_S` away) is ignored and reported
once per provider and header through the ``warn`` callback: it never raises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from sluice.providers.base import LimitReading, RateLimited
from sluice.providers.config import SignalConfig
from sluice.providers.templating import scalar_at
from sluice.units import UNIT_S, format_duration

# Below this a reset value cannot be an epoch time (it would be before 2001).
_EPOCH_THRESHOLD_S = 1_000_000_000.0
MAX_COUNT = 1_000_000_000.0
"""A limit or remaining count above this is not believed (10^12 is a broken header)."""
MAX_RESET_S = 7 * 86_400.0
"""A reset further away than this is not believed (a year away is a broken header)."""

Warn = Callable[[str, str], None]
"""``warn(header, reason)``: report a value that was ignored."""


def _no_warn(header: str, reason: str) -> None:
    return None


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
    pause, source = pause_for(response.headers, config, now_s, body)
    return RateLimited(
        retry_after_s=pause,
        detail=f"{reason}; pause {format_duration(pause)} ({source})",
        said_when=source != DEFAULT_SOURCE,
    )


def kind(response: httpx.Response, body: Any, config: SignalConfig) -> str:
    """What made ``response`` a signal, as a metrics label: ``http_429``, ``error_code_613``."""
    if response.status_code in config.statuses:
        return f"http_{response.status_code}"
    return f"error_code_{_body_code(body, config)}"


def kinds(config: SignalConfig) -> list[str]:
    """Every label :func:`kind` can give under ``config``."""
    return [f"http_{status}" for status in sorted(config.statuses)] + [
        f"error_code_{code}" for code in sorted(config.codes)
    ]


DEFAULT_SOURCE = "default pause"


def pause_for(
    headers: httpx.Headers, config: SignalConfig, now_s: float, body: Any = None
) -> tuple[float, str]:
    """Seconds to pause and where that number came from."""
    candidates: list[tuple[float | None, str]] = []
    if config.retry_after_header:
        raw = headers.get(config.retry_after_header)
        seconds = retry_after_seconds(raw, now_s)
        if seconds == 0 and _long_past(_http_date_s(raw), now_s):
            seconds = None
        candidates.append((seconds, config.retry_after_header))
    if config.reset_header:
        raw = headers.get(config.reset_header)
        seconds = reset_seconds(raw, config.reset_kind, now_s)
        if seconds == 0 and _long_past(_reset_epoch_s(raw, config.reset_kind), now_s):
            seconds = None
        candidates.append((seconds, config.reset_header))
    if config.usage_header:
        regain = usage_seconds(
            headers.get(config.usage_header), config.usage_field, UNIT_S[config.usage_unit]
        )
        # Meta counts whole minutes: a refusal with under a minute left says 0, which is
        # no time to wait (a 0 s pause sends every call again at once, each refused).
        candidates.append((regain or None, config.usage_header))
    if config.retry_delay_field and body is not None:
        found = [
            d
            for d in (duration_seconds(v) for v in _values_named(body, config.retry_delay_field))
            if d is not None
        ]
        candidates.append((max(found) if found else None, config.retry_delay_field))
    for seconds, source in candidates:
        if seconds is not None:
            return _clamp(seconds, config.max_pause), source
    return _clamp(config.default_pause, config.max_pause), DEFAULT_SOURCE


PAST_TOLERANCE_S = 1.0
"""A reset time further in the past than this, on a refusal, is a provider's clock running
behind, not "come back now": it is no time, and the next source or the default pause
applies. Closer, it is the answer's own travel time, and reads as 0."""


def _long_past(when_s: float | None, now_s: float) -> bool:
    return when_s is not None and when_s < now_s - PAST_TOLERANCE_S


def _http_date_s(value: str | None) -> float | None:
    """The POSIX time of a ``Retry-After`` HTTP date, None for delay seconds or garbage."""
    if value is None or _number(value.strip()) is not None:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return when.timestamp() if when.tzinfo is not None else None


def _reset_epoch_s(value: str | None, kind: str) -> float | None:
    """The POSIX time of an epoch reset header value, None for a delta or garbage."""
    number = _number(value.strip()) if value else None
    if number is None or kind == "delta":
        return None
    if kind == "epoch_ms" or (kind == "auto" and number >= _EPOCH_THRESHOLD_S * 1000):
        return number / 1000.0
    if kind == "epoch" or number >= _EPOCH_THRESHOLD_S:
        return number
    return None


def duration_seconds(value: Any) -> float | None:
    """A retry delay as Google writes it: ``"1.5s"``, a number of seconds, or
    ``{"seconds": 1, "nanos": 500000000}``; None when it is none of these."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number: float | None = float(value)
    elif isinstance(value, str):
        text = value.strip()
        number = _number(text[:-1] if text.endswith("s") else text)
    elif isinstance(value, dict) and ("seconds" in value or "nanos" in value):
        seconds = _number(str(value.get("seconds", 0)))
        nanos = _number(str(value.get("nanos", 0)))
        number = None if seconds is None or nanos is None else seconds + nanos / 1e9
    else:
        return None
    if number is None or not math.isfinite(number) or number < 0 or number > MAX_RESET_S:
        return None
    return number


# --- what an answer says of the limit ------------------------------------------------------


def read_limits(
    headers: httpx.Headers,
    config: SignalConfig,
    now_s: float,
    warn: Warn = _no_warn,
) -> list[LimitReading]:
    """Every limit state ``headers`` describe, by the configured fields (bad values dropped)."""
    readings: list[LimitReading] = []
    if config.limit_header or config.remaining_header:
        reading = _x_ratelimit(headers, config, now_s, warn)
        if reading is not None:
            readings.append(reading)
    if config.ietf_headers:
        readings.extend(_ietf(headers, warn))
    if config.usage_header and config.usage_percent_fields:
        reading = _usage(headers, config, warn)
        if reading is not None:
            readings.append(reading)
    return readings


def _x_ratelimit(
    headers: httpx.Headers, config: SignalConfig, now_s: float, warn: Warn
) -> LimitReading | None:
    limit = _count(headers, config.limit_header, warn)
    remaining = _count(headers, config.remaining_header, warn)
    reset: float | None = None
    if config.reset_header and remaining is not None:
        raw = headers.get(config.reset_header)
        if raw is not None:
            reset = reset_seconds(raw, config.reset_kind, now_s)
            reset = _checked_reset(config.reset_header, raw, reset, warn)
    if limit is None and remaining is None:
        return None
    source = config.remaining_header if remaining is not None else config.limit_header
    return LimitReading(source=source or "", limit=limit, remaining=remaining, reset_s=reset)


def _count(headers: httpx.Headers, name: str | None, warn: Warn) -> float | None:
    if not name:
        return None
    raw = headers.get(name)
    if raw is None:
        return None
    return _checked_count(name, raw, warn)


def _checked_count(name: str, raw: str, warn: Warn) -> float | None:
    number = _number(raw.strip())
    if number is None:
        warn(name, f"not a number: {raw[:40]!r}")
        return None
    if number < 0:
        warn(name, f"negative: {raw[:40]!r}")
        return None
    if number > MAX_COUNT:
        warn(name, f"absurdly large: {raw[:40]!r}")
        return None
    return number


def _checked_reset(name: str, raw: str, seconds: float | None, warn: Warn) -> float | None:
    if seconds is None:
        warn(name, f"not a time: {raw[:40]!r}")
        return None
    number = _number(raw.strip())
    if number is not None and number < 0:
        warn(name, f"negative: {raw[:40]!r}")
        return None
    if seconds > MAX_RESET_S:
        warn(name, f"too far away: {raw[:40]!r}")
        return None
    return seconds


def _ietf(headers: httpx.Headers, warn: Warn) -> list[LimitReading]:
    """``RateLimit-Policy`` and ``RateLimit``, in the draft's old form
    (``limit=40, remaining=12, reset=1``; ``40;w=1``) and its structured-field form
    (``"default";r=12;t=1``; ``"default";q=40;w=1``)."""
    policies: dict[str, tuple[float, float | None]] = {}
    policy_text = headers.get("RateLimit-Policy")
    if policy_text:
        for name, number, params in _items(policy_text):
            quota = number if number is not None else _param(params, "q")
            window = _param(params, "w")
            if quota is None or quota < 0 or quota > MAX_COUNT:
                warn("RateLimit-Policy", f"no usable quota in {policy_text[:60]!r}")
                continue
            if window is not None and not 0 < window <= MAX_RESET_S:
                warn("RateLimit-Policy", f"bad window in {policy_text[:60]!r}")
                window = None
            policies.setdefault(name, (quota, window))
    readings: list[LimitReading] = []
    text = headers.get("RateLimit")
    if text:
        if "=" in text and ";" not in text:
            fields = _old_fields(text)
            limit = fields.get("limit")
            remaining = fields.get("remaining")
            reset = fields.get("reset")
            window = next((w for _, w in policies.values() if w is not None), None)
            reading = _checked_ietf(text, limit, remaining, reset, window, warn)
            if reading is not None:
                readings.append(reading)
            policies.clear()
        else:
            for name, _number_value, params in _items(text):
                quota, window = policies.pop(name, (None, None))
                reading = _checked_ietf(
                    text, quota, _param(params, "r"), _param(params, "t"), window, warn
                )
                if reading is not None:
                    readings.append(reading)
    readings.extend(
        LimitReading(source="RateLimit-Policy", limit=quota, window_s=window)
        for quota, window in policies.values()
    )
    return readings


def _checked_ietf(
    text: str,
    limit: float | None,
    remaining: float | None,
    reset: float | None,
    window: float | None,
    warn: Warn,
) -> LimitReading | None:
    for value, what in ((limit, "limit"), (remaining, "remaining")):
        if value is not None and not 0 <= value <= MAX_COUNT:
            warn("RateLimit", f"bad {what} in {text[:60]!r}")
            return None
    if reset is not None and not 0 <= reset <= MAX_RESET_S:
        warn("RateLimit", f"bad reset in {text[:60]!r}")
        reset = None
    if limit is None and remaining is None:
        warn("RateLimit", f"no limit nor remaining in {text[:60]!r}")
        return None
    return LimitReading(
        source="RateLimit", limit=limit, window_s=window, remaining=remaining, reset_s=reset
    )


def _old_fields(text: str) -> dict[str, float]:
    fields: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        number = _number(value.strip())
        if number is not None:
            fields.setdefault(key.strip().lower(), number)
    return fields


def _items(text: str) -> Iterator[tuple[str, float | None, dict[str, float]]]:
    """Items of a structured-field list: ``name;k=v;k=v`` or ``40;w=1`` (name ``""``)."""
    for item in text.split(","):
        head, *params = (p.strip() for p in item.split(";"))
        number = _number(head) if head else None
        name = "" if number is not None else head.strip('"')
        values: dict[str, float] = {}
        for param in params:
            key, _, value = param.partition("=")
            parsed = _number(value.strip())
            if parsed is not None:
                values[key.strip().lower()] = parsed
        yield name, number, values


def _param(params: dict[str, float], key: str) -> float | None:
    return params.get(key)


def _usage(headers: httpx.Headers, config: SignalConfig, warn: Warn) -> LimitReading | None:
    """Meta's usage header: the highest percentage of the configured fields, over 100."""
    name = config.usage_header or ""
    raw = headers.get(name)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        warn(name, "not JSON")
        return None
    except RecursionError:
        warn(name, "not JSON (nested too deeply)")
        return None
    percents: list[float] = []
    for field in config.usage_percent_fields:
        for value in _numbers_named(data, field):
            if not math.isfinite(value) or value < 0 or value > 10_000:
                warn(name, f"bad {field}: {value!r}")
                continue
            percents.append(value)
    if not percents:
        return None
    regain = usage_seconds(raw, config.usage_field, UNIT_S[config.usage_unit])
    if regain is not None and not 0 <= regain <= MAX_RESET_S:
        warn(name, f"bad {config.usage_field}")
        regain = None
    return LimitReading(source=name, used_fraction=max(percents) / 100.0, reset_s=regain or None)


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
    except (ValueError, RecursionError):
        return None
    found = [n for n in _numbers_named(data, field) if math.isfinite(n)]
    return max(found) * unit_s if found else None


def _numbers_named(data: Any, field: str) -> Iterator[float]:
    """Every number under a key ``field`` anywhere in ``data``."""
    for key, value in _entries(data):
        if key == field and isinstance(value, int | float) and not isinstance(value, bool):
            yield float(value)


def _values_named(data: Any, field: str) -> Iterator[Any]:
    """Every value under a key ``field`` anywhere in ``data``, not looking inside it."""
    for key, value in _entries(data, stop_at=field):
        if key == field:
            yield value


def _entries(data: Any, stop_at: str | None = None) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of every object in ``data``, entries under ``stop_at`` left out.

    Walked with a list, not recursion: no depth the parser accepted can exhaust the stack.
    """
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                yield key, value
                if key != stop_at:
                    pending.append(value)
        elif isinstance(item, list):
            pending.extend(item)


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
