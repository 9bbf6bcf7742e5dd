"""GET /metrics follows the API's auth: open on loopback, else an operator's key or the
scrape token, which opens /metrics and nothing else; the token never shows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice import masking
from tests.unit.api.conftest import SecuredApi, secured_api

TOKEN = "scrape-0123456789abcdef"


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[SecuredApi]:
    yield from secured_api(tmp_path, metrics_token=TOKEN)


def test_the_scrape_token_opens_metrics_only(keyed: SecuredApi) -> None:
    """The scrape token reads /metrics; it is no API key anywhere else."""
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    response = keyed.client.get("/metrics", headers=bearer)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "sluice_limiter_grants_total" in response.text or "# HELP" in response.text
    assert TOKEN not in response.text
    assert keyed.client.get("/api/tasks", headers=bearer).status_code == 401
    assert keyed.client.get("/api/audit", headers=bearer).status_code == 401


def test_a_wrong_token_or_a_tenant_key_is_refused(keyed: SecuredApi) -> None:
    """A near-miss token is 401; a viewer's key is 403 naming the operator role."""
    wrong = {"Authorization": f"Bearer {TOKEN[:-1]}x"}
    assert keyed.client.get("/metrics", headers=wrong).status_code == 401
    assert keyed.client.get("/metrics").status_code == 401
    refused = keyed.client.get("/metrics", headers=keyed.auth("viewer"))
    assert refused.status_code == 403
    assert refused.json()["required_role"] == "operator"
    assert keyed.client.get("/metrics", headers=keyed.auth("operator")).status_code == 200


def test_the_token_is_masked_in_logs_and_settings(keyed: SecuredApi) -> None:
    """Settings holding the token remember it as a secret: logs mask it, repr hides it."""
    from sluice.settings import Settings

    settings = Settings(metrics_token=TOKEN)
    assert TOKEN not in repr(settings)
    assert TOKEN not in masking.mask(f"token={TOKEN}")


def test_metrics_is_open_on_loopback_in_auto_mode(api: object) -> None:
    """With no keys on loopback (the `make run` mode), a local Prometheus scrapes freely."""
    response = api.client.get("/metrics")  # type: ignore[attr-defined]
    assert response.status_code == 200
