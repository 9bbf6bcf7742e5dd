"""Per-tenant credentials: a tenant's tasks go out on its own account, never on another's."""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import pytest

from sluice import errors
from sluice.clock import FakeClock
from sluice.providers.base import Accepted, TaskRef, Transient
from sluice.providers.registry import load_providers
from sluice.settings import Settings

from .fakes import ACME, BATCH_POLL, FakeDsp, client_for, make_provider, task, with_changes

ENV = {
    "ACME_TOKEN": "default-TOKEN-0000",
    "ACME_TOKEN_A": "tenant-a-TOKEN-1111",
    "ACME_SECRET": "default-SECRET-2222",
    "ACME_SECRET_C": "tenant-c-SECRET-3333",
}
STATIC = with_changes(
    ACME,
    headers={"Authorization": "Bearer ${ACME_TOKEN}", "Accept-Language": "en"},
    tenants={"agency-a": {"headers": {"Authorization": "Bearer ${ACME_TOKEN_A}"}}},
)
TOKENS = with_changes(
    ACME,
    auth={
        "request": "POST /oauth/token",
        "body": {"client_id": "agency", "client_secret": "${ACME_SECRET}"},
    },
    tenants={
        "agency-c": {
            "auth": {"body": {"client_id": "client-c", "client_secret": "${ACME_SECRET_C}"}}
        }
    },
)


def of(tenant: str, ref: TaskRef | None = None) -> TaskRef:
    return replace(ref or task(), tenant=tenant)


class AccountsDsp(FakeDsp):
    """Issues one token per client_id and remembers which account each request used."""

    def __init__(self) -> None:
        super().__init__()
        self.token_bodies: list[dict[str, str]] = []
        self.token_headers: list[httpx.Headers] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            body = json.loads(request.content)
            self.token_bodies.append(body)
            self.token_headers.append(request.headers)
            return httpx.Response(200, json={"access_token": f"tok-for-{body['client_id']}"})
        return super().__call__(request)


def test_a_tenant_with_its_own_headers_sends_them_instead_of_the_providers() -> None:
    """Tenant agency-a's requests carry its token; others carry the provider's; plain
    headers go with both."""
    dsp = FakeDsp()
    provider = make_provider(STATIC, environ=ENV)
    client = client_for(provider, dsp)
    provider.submit(client, of("agency-a"))
    provider.submit(client, of("someone-else"))
    provider.submit(client, task())
    sent = [r.headers for r in dsp.requests]
    assert sent[0]["Authorization"] == "Bearer tenant-a-TOKEN-1111"
    assert sent[1]["Authorization"] == "Bearer default-TOKEN-0000"
    assert sent[2]["Authorization"] == "Bearer default-TOKEN-0000"
    assert all(h["Accept-Language"] == "en" for h in sent)
    assert all(h.get_list("Authorization") == [h["Authorization"]] for h in sent)


def test_a_tenant_with_its_own_token_auth_fetches_its_own_token() -> None:
    """agency-c logs in with its own client secret; the provider's secret and token never
    go out on agency-c's requests, and each account keeps its own token."""
    dsp = AccountsDsp()
    provider = make_provider(TOKENS, environ=ENV, clock=FakeClock())
    client = client_for(provider, dsp)
    assert isinstance(provider.submit(client, of("agency-c")), Accepted)
    assert isinstance(provider.submit(client, of("default")), Accepted)
    assert isinstance(provider.submit(client, of("agency-c")), Accepted)
    assert dsp.token_bodies == [
        {"client_id": "client-c", "client_secret": "tenant-c-SECRET-3333"},
        {"client_id": "agency", "client_secret": "default-SECRET-2222"},
    ]
    used = [r.headers["Authorization"] for r in dsp.requests]
    assert used == ["Bearer tok-for-client-c", "Bearer tok-for-agency", "Bearer tok-for-client-c"]


def test_a_tenants_token_auth_replaces_the_providers_static_credentials() -> None:
    """With a static provider header and a tenant on token auth, the static credential is
    not sent on the tenant's requests nor on its token request."""
    table = with_changes(
        STATIC,
        tenants={
            "agency-c": {
                "auth": {
                    "request": "POST /oauth/token",
                    "body": {"client_id": "client-c", "client_secret": "${ACME_SECRET_C}"},
                }
            }
        },
    )
    dsp = AccountsDsp()
    provider = make_provider(table, environ=ENV, clock=FakeClock())
    provider.submit(client_for(provider, dsp), of("agency-c"))
    assert dsp.requests[-1].headers["Authorization"] == "Bearer tok-for-client-c"
    assert "default-TOKEN-0000" not in str(dsp.token_headers[0])
    assert dsp.token_headers[0]["Accept-Language"] == "en"


def test_a_401_drops_only_that_accounts_token() -> None:
    """A refused token is fetched again for its own account only."""
    dsp = AccountsDsp()
    provider = make_provider(TOKENS, environ=ENV, clock=FakeClock())
    client = client_for(provider, dsp)
    provider.submit(client, of("agency-c"))
    provider.submit(client, of("default"))
    dsp.script(httpx.Response(401, json={"error": {"message": "token revoked"}}))
    assert isinstance(provider.submit(client, of("agency-c")), Transient)
    provider.submit(client, of("agency-c"))
    provider.submit(client, of("default"))
    assert [b["client_id"] for b in dsp.token_bodies] == ["client-c", "agency", "client-c"]


def test_batch_polls_never_mix_accounts() -> None:
    """Tasks of different accounts are polled in separate requests, each with its own token;
    tenants without credentials share the provider's account."""
    table = with_changes(STATIC, poll=BATCH_POLL | {"batch_size": 10})
    provider = make_provider(table, environ=ENV)
    refs = [
        of("agency-a", task(task_id=1, external_id="e1")),
        of("x", task(task_id=2, external_id="e2")),
        of("agency-a", task(task_id=3, external_id="e3")),
        of("y", task(task_id=4, external_id="e4")),
    ]
    groups = provider.poll_groups(refs)
    assert sorted([r.task_id for r in g] for g in groups) == [[1, 3], [2, 4]]
    dsp = FakeDsp()
    for ref in refs:
        dsp.add(str(ref.external_id), status="pending")
    client = client_for(provider, dsp)
    for group in groups:
        provider.poll(client, group)
    by_token = {r.headers["Authorization"]: r.url.params["ids"] for r in dsp.requests}
    assert by_token == {
        "Bearer tenant-a-TOKEN-1111": "e1,e3",
        "Bearer default-TOKEN-0000": "e2,e4",
    }


@pytest.mark.parametrize(
    ("tenants", "problem"),
    [
        ({"agency-a": {}}, "providers.acme.tenants.agency-a: give the tenant's credentials"),
        (
            {"bad name": {"headers": {"X-Key": "v"}}},
            "providers.acme.tenants: 'bad name' is not a tenant name",
        ),
        (
            {"agency-a": {"auth": {"body": {"client_id": "a"}}}},
            "providers.acme.tenants.agency-a.auth.request: required",
        ),
        (
            {"agency-a": {"headers": {"Authorization": "Bearer ${MISSING_VAR}"}}},
            "providers.acme.tenants.agency-a.headers.Authorization: environment variable "
            "MISSING_VAR is not set",
        ),
    ],
)
def test_bad_tenant_tables_are_refused_by_key(tenants: object, problem: str) -> None:
    """A tenant table without credentials, with a bad name or an incomplete auth is named."""
    bad = with_changes(ACME, tenants=tenants)
    with pytest.raises(errors.ConfigError) as info:
        load_providers(Settings(providers={"acme": bad}, default_provider="acme"), environ={})
    assert problem in str(info.value)


def test_tenant_secrets_are_masked_when_echoed() -> None:
    """A provider echoing a tenant's token back: the message shows ``***``."""
    dsp = FakeDsp()
    dsp.script(
        lambda request: httpx.Response(
            400, json={"error": {"message": f"rejected {request.headers['Authorization']}"}}
        )
    )
    provider = make_provider(STATIC, environ=ENV)
    decision = provider.submit(client_for(provider, dsp), of("agency-a"))
    assert "tenant-a-TOKEN-1111" not in str(decision)
