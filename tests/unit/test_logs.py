"""The log formatter prints fields but never a secret: secret-named fields and URL passwords."""

from __future__ import annotations

import logging
import sys

from sluice.logs import FieldsFormatter


def formatted(message: str, exc: bool = False, **extra: object) -> str:
    record = logging.LogRecord("sluice.test", logging.WARNING, __file__, 1, message, None, None)
    if exc:
        try:
            raise RuntimeError("cannot reach postgresql://sluice:pg-secret@db:5432/sluice")
        except RuntimeError:
            record.exc_info = sys.exc_info()
    record.__dict__.update(extra)
    return FieldsFormatter("%(levelname)s %(name)s %(message)s").format(record)


def test_fields_are_printed_with_their_values() -> None:
    """Ordinary fields appear as key=repr(value), sorted by key."""
    line = formatted("worker.ready", pid=42, provider="sandbox")
    assert line == "WARNING sluice.test worker.ready pid=42 provider='sandbox'"


def test_secret_named_fields_are_masked() -> None:
    """Fields named like a token, password, key or authorization never show their value."""
    line = formatted(
        "auth.refreshed",
        access_token="tok-123456",
        password="hunter2",
        api_key="k-98765",
        Authorization="Bearer abcdef",
        provider="meta",
    )
    for secret in ("tok-123456", "hunter2", "k-98765", "abcdef"):
        assert secret not in line
    assert "provider='meta'" in line
    assert "access_token=***" in line


def test_url_passwords_are_masked_in_message_fields_and_tracebacks() -> None:
    """A password inside a URL is masked wherever it appears in the line."""
    line = formatted(
        "broker at redis://:redis-secret@127.0.0.1:6379/0",
        exc=True,
        broker="amqp://broker-user:amqp-secret@rabbit//",
    )
    for secret in ("redis-secret", "amqp-secret", "pg-secret"):
        assert secret not in line
    assert "redis://:***@127.0.0.1:6379/0" in line
    assert "amqp://broker-user:***@rabbit//" in line
    assert "postgresql://sluice:***@db:5432/sluice" in line
