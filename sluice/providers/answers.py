"""Reading a provider's error answers: which decision, and what message for the user.

Defaults (each configurable under ``[providers.NAME.errors]``):

- 5xx, 408 and 425 are transient (ambiguous for writes: the create may have happened);
  ``Retry-After`` on them becomes the retry delay (at most the signal's ``max_pause``).
- A 4xx whose code (``code_field``) is in ``transient_codes``, or whose
  ``transient_flag_field`` is true, is transient and not ambiguous (nothing was created).
- 401 is transient (credentials are refreshed or fixed, then the task goes on).
- Any other 4xx is permanent: ``Failed`` with the provider's message, prefixed with the
  field path when the answer names one (``include[3]: Invalid IP range: 192.168.1.256``).
- A 2xx whose JSON object carries a non-empty object at ``error_body_field`` is transient
  (ambiguous for writes). A plain string there is not an error body: status answers often
  carry the object's own error message as ``"error": "..."``.
"""

from __future__ import annotations

from typing import Any

import httpx

from sluice.masking import Redactor
from sluice.providers.base import Failed, Transient
from sluice.providers.config import ErrorsConfig
from sluice.providers.signals import retry_after_seconds
from sluice.providers.templating import MISSING, get_path, scalar_at, scalar_text

NOT_JSON: Any = MISSING


def json_body(response: httpx.Response) -> Any:
    """The decoded JSON body, or :data:`NOT_JSON` when it is empty or not JSON (nested too
    deeply for the parser included: a provider's answer must never raise out of here)."""
    if not response.content:
        return NOT_JSON
    try:
        return response.json()
    except (ValueError, RecursionError):
        return NOT_JSON


class AnswerReader:
    """Classifies refusals and extracts messages for one provider."""

    def __init__(
        self, config: ErrorsConfig, redactor: Redactor, max_wait_s: float = 3600.0
    ) -> None:
        self._config = config
        self._redactor = redactor
        self._max_wait_s = max_wait_s

    def refusal(
        self, response: httpx.Response, body: Any, *, write: bool, now_s: float
    ) -> Transient | Failed:
        """The decision for a non-2xx answer that is not a rate-limit signal."""
        status = response.status_code
        message = self.message(response, body)
        retry_after = retry_after_seconds(response.headers.get("Retry-After"), now_s)
        if retry_after is not None:
            # A broken header (years away) must not strand the task: capped like a pause.
            retry_after = min(retry_after, self._max_wait_s)
        if status >= 500 or status in self._config.transient_statuses:
            return Transient(
                f"HTTP {status}: {message}", ambiguous=write, retry_after_s=retry_after
            )
        code = self.code(body)
        if code is not None and code in self._config.transient_codes:
            return Transient(f"HTTP {status} {code}: {message}", retry_after_s=retry_after)
        flag = self._config.transient_flag_field
        if flag and get_path(body, flag) is True:
            return Transient(f"HTTP {status} (transient): {message}", retry_after_s=retry_after)
        if status == 401:
            return Transient(f"HTTP 401 unauthorized: {message}", retry_after_s=retry_after)
        return Failed(message)

    def error_in_body(self, response: httpx.Response, body: Any) -> str | None:
        """The message of an error object (a JSON object) inside a 2xx answer, else None."""
        field = self._config.error_body_field
        if not field or not isinstance(body, dict):
            return None
        value = get_path(body, field)
        if not isinstance(value, dict) or not value:
            return None
        return self.message(response, body)

    def code(self, body: Any) -> str | None:
        """The provider's error code, as text."""
        return scalar_at(body, self._config.code_field)

    def message(self, response: httpx.Response, body: Any) -> str:
        """The provider's own words for a refusal, with the field path when given."""
        text = _first_text(body, self._config.message_fields)
        if text is None:
            return f"HTTP {response.status_code}: {self._redactor.snippet(response.content)}"
        field = _first_field_path(body, self._config.field_path_fields)
        if field and not text.startswith(field):
            text = f"{field}: {text}"
        return self._redactor.redact(text)


def _first_text(body: Any, fields: tuple[str, ...]) -> str | None:
    for field in fields:
        value = get_path(body, field)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _first_field_path(body: Any, fields: tuple[str, ...]) -> str | None:
    for field in fields:
        value = get_path(body, field)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, list):
            parts = [_flatten(item) for item in value]
            joined = ", ".join(p for p in parts if p)
            if joined:
                return joined
    return None


_FIELD_PATH_DEPTH = 8
"""Lists nested deeper than this in a field path are ignored: a path is one list of names,
and a deeper one must not run out of stack."""


def _flatten(value: Any, depth: int = 0) -> str:
    if isinstance(value, list):
        if depth >= _FIELD_PATH_DEPTH:
            return ""
        return ".".join(_flatten(v, depth + 1) for v in value)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return scalar_text(value)
    return ""
