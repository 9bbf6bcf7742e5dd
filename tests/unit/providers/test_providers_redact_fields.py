"""``redact_fields``: payload fields sent to the provider as they are, masked everywhere shown."""

from __future__ import annotations

import logging

import httpx
import pytest

from sluice import errors, logs
from sluice.providers.base import Failed, StatusReport, Transient
from sluice.providers.registry import load_providers
from sluice.settings import Settings

from .fakes import ACME, FakeDsp, client_for, make_provider, task, with_changes

CARD = "4111222233334444"
TABLE = with_changes(ACME, redact_fields=["card.number", "cvv"])
PAYLOAD = {"name": "Spring", "card": {"number": CARD, "holder": "A. Person"}, "cvv": "9876"}


def test_sensitive_fields_reach_the_provider_unmasked() -> None:
    """The provider receives the real values: masking is for display only."""
    dsp = FakeDsp()
    provider = make_provider(TABLE)
    provider.submit(client_for(provider, dsp), task(payload=PAYLOAD))
    assert dsp.sent_json()["card"]["number"] == CARD
    assert dsp.sent_json()["cvv"] == "9876"


def test_echoed_sensitive_values_are_masked_in_decisions_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A provider echoing a sensitive field back: messages and log lines show ``***``."""
    dsp = FakeDsp()
    dsp.script(
        httpx.Response(400, json={"error": {"message": f"card {CARD} declined (cvv 9876)"}}),
        httpx.Response(503, text=f"<html>upstream choked on {CARD}</html>"),
        httpx.Response(200, json={"status": "failed", "error": f"card {CARD} expired"}),
    )
    provider = make_provider(TABLE)
    client = client_for(provider, dsp)
    formatter = logs.FieldsFormatter("%(message)s")
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(formatter.format(record))

    handler = Capture(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG):
            refused = provider.submit(client, task(payload=PAYLOAD))
            unavailable = provider.submit(client, task(payload=PAYLOAD))
            polled = provider.poll(client, [task(payload=PAYLOAD, external_id="cam-1")])[1]
    finally:
        logging.getLogger().removeHandler(handler)
    assert isinstance(refused, Failed)
    assert refused.message == "card *** declined (cvv ***)"
    assert isinstance(unavailable, Transient)
    assert CARD not in unavailable.message
    assert isinstance(polled, StatusReport)
    assert polled.message == "card *** expired"
    assert lines
    for line in lines:
        assert CARD not in line
    for record in caplog.records:
        assert CARD not in record.getMessage()
        assert CARD not in repr(record.__dict__)


def test_other_tasks_values_are_not_masked() -> None:
    """Masking is per task: a value is only secret for the task whose payload holds it."""
    dsp = FakeDsp()
    dsp.script(httpx.Response(400, json={"error": {"message": "name Spring is taken"}}))
    provider = make_provider(TABLE)
    decision = provider.submit(client_for(provider, dsp), task(payload=PAYLOAD))
    assert isinstance(decision, Failed)
    assert decision.message == "name Spring is taken"


def test_redact_fields_must_be_dotted_paths() -> None:
    """A malformed ``redact_fields`` entry is refused at start, naming the key."""
    bad = with_changes(ACME, redact_fields=["card number"])
    with pytest.raises(errors.ConfigError) as info:
        load_providers(Settings(providers={"acme": bad}, default_provider="acme"), environ={})
    assert "providers.acme.redact_fields: 'card number' is not a dotted payload path" in str(
        info.value
    )


def test_a_base_url_error_never_quotes_its_password() -> None:
    """A base_url with credentials that fails validation is reported with the password masked."""
    bad = with_changes(ACME, base_url="ftp://user:base-PW-77@acme.test")
    with pytest.raises(errors.ConfigError) as info:
        load_providers(Settings(providers={"acme": bad}, default_provider="acme"), environ={})
    assert "base-PW-77" not in str(info.value)
    assert "ftp://user:***@acme.test" in str(info.value)
