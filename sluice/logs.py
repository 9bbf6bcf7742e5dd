"""Logging set-up: stable event names with fields, secrets never printed.

Every line is masked after it is formatted, traceback included: the secrets Sluice knows
(:data:`sluice.masking.KNOWN`: database, broker and Redis passwords, provider credentials,
fetched tokens), any per-task values being masked in the current context, and the password
of any URL. Extra fields whose names look like credentials (``authorization``,
``api_key``, ``password``...) are printed as ``***`` whatever they hold.
"""

from __future__ import annotations

import logging
from typing import Any

from sluice import masking

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class FieldsFormatter(logging.Formatter):
    """``time level logger event key=value ...`` with the record's extra fields, masked."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields: dict[str, Any] = {
            k: v for k, v in record.__dict__.items() if k not in _RESERVED and not k.startswith("_")
        }
        if fields:
            base += " " + " ".join(_field(k, v) for k, v in sorted(fields.items()))
        return masking.mask(base)


def _field(name: str, value: Any) -> str:
    if masking.sensitive_name(name):
        return f"{name}={masking.MASK}"
    return f"{name}={masking.scrub(value)!r}"


class MaskingFormatter(logging.Formatter):
    """Wraps another formatter (Celery's, uvicorn's) and masks what it produces."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return masking.mask(self.inner.format(record))


def mask_handlers(logger: logging.Logger) -> None:
    """Make every handler of ``logger`` mask secrets (for handlers others installed)."""
    for handler in logger.handlers:
        if not isinstance(handler.formatter, FieldsFormatter | MaskingFormatter):
            handler.setFormatter(MaskingFormatter(handler.formatter))


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (a driver's message may span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


class FailureStreak:
    """A loop's repeated failure (the database or Redis down), logged without flooding.

    The first failure of a streak logs ``event`` with its traceback (at ``first_level``);
    the next ones log ``event`` on one line each, with ``failures`` (the streak's count so
    far) and ``error`` (:func:`one_line`); the first success after a streak logs
    ``recovered`` once, with the streak's count. The streak lives as long as this object,
    so a loop run in rounds (a worker's pumps) keeps one streak across them.
    """

    def __init__(
        self,
        logger: logging.Logger,
        event: str,
        recovered: str,
        *,
        first_level: int = logging.WARNING,
    ) -> None:
        self.logger = logger
        self.event = event
        self.recovered = recovered
        self.first_level = first_level
        self.failures = 0

    def failed(self, exc: BaseException, **extra: Any) -> None:
        self.failures += 1
        if self.failures == 1:
            self.logger.log(self.first_level, self.event, exc_info=exc, extra=extra)
        else:
            fields = {**extra, "failures": self.failures, "error": one_line(exc)}
            self.logger.warning(self.event, extra=fields)

    def succeeded(self) -> None:
        if self.failures:
            self.logger.info(self.recovered, extra={"failures": self.failures})
            self.failures = 0


def configure(level: str = "INFO") -> None:
    """Send Sluice's logs to stderr at ``level``; quiet chatty libraries."""
    handler = logging.StreamHandler()
    handler.setFormatter(FieldsFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
