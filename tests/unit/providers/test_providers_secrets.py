"""Secrets (header values, tokens, client secrets) never reach logs, messages or reprs."""

from __future__ import annotations

import logging

import httpx
import pytest

from sluice import errors
from sluice.providers.base import Failed, RateLimited, Transient
from sluice.providers.registry import load_providers
from sluice.settings import Settings

from .fakes import ACME, FakeDsp, client_for, make_provider, refused, task, with_changes

HEADER_SECRET = "hdr-SECRET-4242"
CLIENT_SECRET = "client-SECRET-9999"
TOKEN = "tok-SECRET-7777"
ENV = {"ACME_TOKEN": HEADER_SECRET, "ACME_CLIENT_SECRET": CLIENT_SECRET}
TABLE = with_changes(
    ACME,
    headers={"Authorization": "Bearer ${ACME_TOKEN}", "Accept-Language": "en"},
    auth={
        "request": "POST /oauth/token",
        "body": {"client_id": "sluice", "client_secret": "${ACME_CLIENT_SECRET}"},
        "header": "X-Session",
        "value": "{token}",
    },
)
SECRETS = (HEADER_SECRET, CLIENT_SECRET, TOKEN)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def echoing_handler(request: httpx.Request) -> httpx.Response:
    """A provider that echoes credentials back in its error answers (it happens)."""
    if request.url.path == "/oauth/token":
        return httpx.Response(200, json={"access_token": TOKEN, "expires_in": 3600})
    echo = f"{request.headers.get('Authorization')} {request.headers.get('X-Session')}"
    if request.url.path == "/campaigns":
        return httpx.Response(400, json={"error": {"message": f"bad request from {echo}"}})
    return httpx.Response(200, text=f"<html>{echo}</html>")


def test_reprs_hide_header_values_and_auth_body() -> None:
    """repr of the provider and its configuration shows no secret."""
    provider = make_provider(TABLE, environ=ENV)
    assert_no_secret(repr(provider))
    assert_no_secret(repr(provider.config))
    assert_no_secret(str(provider.config.headers))


def test_config_errors_never_quote_secret_values() -> None:
    """An invalid table around secrets is reported by key, never by value (nor chained)."""
    bad = with_changes(TABLE, timeout="later", headers={"Authorization": 12345})
    with pytest.raises(errors.ConfigError) as info:
        load_providers(Settings(providers={"acme": bad}, default_provider="acme"), environ=ENV)
    assert "providers.acme.headers.Authorization: must be a string, got int" in str(info.value)
    assert "12345" not in str(info.value)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_echoed_credentials_are_masked_in_messages_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failed/Transient messages and every log record mask credentials the provider echoes."""
    provider = make_provider(TABLE, environ=ENV)
    client = client_for(provider, FakeDsp())
    client = httpx.Client(
        base_url=provider.base_url,
        headers=dict(client.headers),
        transport=httpx.MockTransport(echoing_handler),
    )
    with caplog.at_level(logging.DEBUG):
        submitted = provider.submit(client, task())
        polled = provider.poll(client, [task(external_id="cam-1")])[1]
    assert isinstance(submitted, Failed)
    assert submitted.message == "bad request from *** ***"
    assert isinstance(polled, Transient)
    assert_no_secret(submitted.message)
    assert_no_secret(polled.message)
    assert caplog.records
    for record in caplog.records:
        assert_no_secret(record.getMessage())
        assert_no_secret(repr(record.__dict__))


def test_transport_errors_do_not_carry_secrets() -> None:
    """A failure while connecting produces a message without credentials."""
    dsp = FakeDsp()
    dsp.script(
        httpx.Response(200, json={"access_token": TOKEN}),
        refused(f"refused (sent {TOKEN})"),
    )
    provider = make_provider(TABLE, environ=ENV)
    decision = provider.submit(client_for(provider, dsp), task())
    assert isinstance(decision, RateLimited)
    assert decision.unreachable
    assert "refused" in decision.detail
    assert_no_secret(decision.detail)
