"""Keeping secrets out of messages, logs and reprs.

A :class:`Redactor` knows every secret a provider holds (expanded ``${VAR}`` values,
credential headers, auth bodies, fetched tokens) and masks them in any text Sluice
produces from a provider's answers, in case the provider echoes them back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

MASK = "***"
_MIN_LEN = 4
_SNIPPET_CHARS = 300


class Redactor:
    """Replaces known secret strings with ``***``; safe to share between threads."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Remember more secrets (short strings are ignored: they would mask everything)."""
        fresh = {s for s in secrets if len(s) >= _MIN_LEN}
        if not fresh:
            return
        with self._lock:
            merged = set(self._secrets) | fresh
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def redact(self, text: str) -> str:
        """``text`` with every known secret masked."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def snippet(self, raw: bytes | str) -> str:
        """A short, redacted, single-line excerpt of an answer body for logs and messages."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        text = " ".join(text.split())
        if len(text) > _SNIPPET_CHARS:
            text = text[:_SNIPPET_CHARS] + "..."
        return self.redact(text) if text else "(empty body)"

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"
