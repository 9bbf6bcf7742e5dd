"""GET /api/providers/{name}/quotas: each quota's use, reset and forecast, operators only."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from sluice.api.routes.quotas import QuotaView
from sluice.engine.quotas import window_of
from sluice.providers.registry import load_providers
from sluice.settings import load_settings
from sluice.store.quotas import QuotaStore

if TYPE_CHECKING:
    from conftest import SecuredApi


def with_quotas(api: SecuredApi) -> QuotaStore:
    settings = load_settings(
        default_provider="gads",
        providers={
            "gads": {
                "base_url": "http://gads.test",
                "rate_limit": "50/s",
                "quota": "15000/d",
                "quota_reset": "America/Los_Angeles",
                "kinds": {"campaign": {"submit": "POST /c"}},
            }
        },
    )
    store = QuotaStore(api.repo.engine)
    api.client.app.state.quotas = QuotaView(load_providers(settings), store)  # type: ignore[attr-defined]
    return store


def test_quotas_show_use_reset_and_forecast(secured: SecuredApi) -> None:
    """6,000 of 15,000 used in the first 4 h of the Pacific day: 9,000 left, which at that
    pace lasts 6 h more; the reset is the next Pacific midnight."""
    store = with_quotas(secured)
    now = secured.repo.clock.now()
    quota = secured.client.app.state.quotas.providers["gads"].quotas()[0][1]  # type: ignore[attr-defined]
    window = window_of("gads:1d", quota, now)
    secured.repo.clock.advance((window.start + timedelta(hours=4) - now).total_seconds())
    store.reserve(window, 6000, now)
    answer = secured.client.get("/api/providers/gads/quotas", headers=secured.auth("operator"))
    assert answer.status_code == 200
    (entry,) = answer.json()["quotas"]
    assert (entry["key"], entry["used"], entry["remaining"], entry["waiting"]) == (
        "gads:1d",
        6000,
        9000,
        False,
    )
    assert entry["resets_at"].startswith(window.end.strftime("%Y-%m-%dT%H:%M"))
    runs_out = (window.start + timedelta(hours=10)).strftime("%Y-%m-%dT%H:%M")
    assert entry["runs_out_at"].startswith(runs_out)


def test_unknown_provider_is_404_and_viewers_are_refused(secured: SecuredApi) -> None:
    with_quotas(secured)
    missing = secured.client.get("/api/providers/nope/quotas", headers=secured.auth("operator"))
    assert (missing.status_code, missing.json()["detail"]) == (404, "unknown provider 'nope'")
    viewer = secured.client.get("/api/providers/gads/quotas", headers=secured.auth("viewer"))
    assert viewer.status_code == 403
