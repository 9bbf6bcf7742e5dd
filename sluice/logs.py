"""Logging set-up: stable event names with fields, and secrets masked on the way out.

The formatter masks, in the whole line (message, fields and any traceback), the value of
every field whose name marks a secret (``token``, ``password``, ``authorization``...) and
the password of every URL (``redis://:pw@host`` -> ``redis://:***@host``). Provider
tokens and keys are also redacted where they are known, before they reach a log call
(:class:`sluice.providers.redaction.Redactor`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
MASK = "***"
SECRET_FIELD = re.compile(
    r"token|secret|password|passwd|authorization|api_?key|cookie|credential", re.I
)
URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^@/\s]+)(?=@)")


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` replaced."""
    return URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


class FieldsFormatter(logging.Formatter):
    """``time level logger event key=value ...`` with the record's extra fields, masked."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields: dict[str, Any] = {
            k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")
        }
        if fields:
            base += " " + " ".join(
                f"{k}={MASK if SECRET_FIELD.search(k) else repr(v)}"
                for k, v in sorted(fields.items())
            )
        return mask_url_passwords(base)


def configure(level: str = "INFO") -> None:
    """Send Sluice's logs to stderr at ``level``; quiet chatty libraries."""
    handler = logging.StreamHandler()
    handler.setFormatter(FieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
