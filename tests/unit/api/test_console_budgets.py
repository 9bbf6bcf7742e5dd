"""The console's provider page over a real runtime (SQLite, keys required): each quota's use,
reset on its own clock, forecast and spent state; each fairness key's weight, share and
waiting count; a tenant's key sees only its own line; the live part follows the database."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from sluice import apikeys
from sluice.api.app import build_api
from sluice.api.console import pages
from sluice.clock import FakeClock
from sluice.domain import Submission
from sluice.engine.quotas import local_time, window_of
from sluice.runtime import Runtime, build_runtime
from sluice.settings import Settings
from sluice.store.keys import KeyStore
from sluice.store.queue import WorkQueue
from sluice.store.quotas import QuotaStore, Window

ZONE = "America/Los_Angeles"
PROVIDERS = {
    "gads": {
        "preset": "sandbox-demo",
        "base_url": "http://127.0.0.1:9",
        "rate_limit": "20/s",
        "quota": "100/d",
        "quota_reset": ZONE,
        "fairness_weights": {"acme": 3},
    },
    "dv": {
        "preset": "sandbox-demo",
        "base_url": "http://127.0.0.1:9",
        "rate_limit": "20/s",
        "fairness_field": "advertiser_id",
    },
}
ROLES = {"operator": ("operator", None), "acme": ("viewer", "acme"), "globex": ("viewer", "globex")}


@dataclass
class Ui:
    app: object
    runtime: Runtime
    clock: FakeClock
    tokens: dict[str, str]
    client: TestClient

    def as_(self, label: str) -> TestClient:
        """A fresh browser signed in with the key of ``label``."""
        browser = TestClient(self.client.app, base_url="http://localhost")
        form = browser.get("/ui/login").text
        answer = browser.post(
            "/ui/login",
            data={"api_key": self.tokens[label], "csrf_token": _token(form)},
            follow_redirects=False,
        )
        assert answer.status_code == 303, answer.text
        return browser

    def quota_window(self) -> Window:
        provider = self.runtime.providers["gads"]
        ((key, quota, _scope, _per),) = provider.quotas()
        return window_of(key, quota, self.clock.now())

    def tasks(self, provider: str, tenant: str, n: int, fairness_key: str | None = None) -> None:
        """``n`` tasks of ``tenant`` (the API would take ``fairness_key`` from the payload)."""
        spec = Submission(
            provider, "campaign", {"name": "c"}, tenant=tenant, fairness_key=fairness_key
        )
        self.runtime.repo.create_many([spec] * n)


def _token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Ui]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'budgets.db'}",
        auth="required",
        providers=PROVIDERS,
        default_provider="gads",
    )
    runtime = build_runtime(settings)
    # Four hours into the quota's day (midnight in Los Angeles), whatever day the test runs.
    quota = runtime.providers["gads"].quotas()[0][1]
    day_start, _ = quota.window(datetime.now(UTC))
    clock = FakeClock(day_start + timedelta(hours=4))
    runtime.repo.clock = clock
    store = KeyStore(runtime.repo.engine, clock)
    tokens = {
        label: apikeys.create_key(store, name=label, role=role, tenant=tenant).token
        for label, (role, tenant) in ROLES.items()
    }
    app = build_api(runtime)
    with TestClient(app, base_url="http://localhost") as client:
        yield Ui(app, runtime, clock, tokens, client)
    runtime.close()


def test_the_provider_page_shows_a_quota_its_reset_in_its_zone_and_the_forecast(ui: Ui) -> None:
    """40 of 100 used in the first 4 h of the Los Angeles day: 60 left last 6 h more at
    that pace, and the reset is the next midnight there, shown on that clock."""
    window = ui.quota_window()
    QuotaStore(ui.runtime.repo.engine).reserve(window, 40, ui.clock.now())

    page = ui.as_("operator").get("/ui/providers/gads")

    assert page.status_code == 200, page.text
    row = re.search(r'<tr data-quota="gads:1d" data-spent="false">(.*?)</tr>', page.text, re.S)
    assert row, page.text
    assert "40 / 100" in row.group(1)
    assert local_time(window.end, ZONE) in row.group(1)
    assert local_time(window.end, ZONE).endswith(("PST", "PDT"))
    assert local_time(window.start + timedelta(hours=10), ZONE) in row.group(1)
    assert "Quota spent" not in page.text
    # The overview's card shows it too, and the API's overview carries the same state.
    overview = ui.as_("operator").get("/ui").text
    assert 'data-quota="gads:1d" data-spent="false"' in overview
    assert 'href="/ui/providers/gads"' in overview
    bearer = {"Authorization": f"Bearer {ui.tokens['operator']}"}
    api = ui.client.get("/api/overview", headers=bearer).json()
    (gads,) = [p for p in api["providers"] if p["name"] == "gads"]
    (quota,) = gads["quotas"]
    assert (quota["used"], quota["limit"], quota["zone"], quota["waiting"]) == (
        40,
        100,
        ZONE,
        False,
    )
    assert quota["resets_at_local"] == local_time(window.end, ZONE)


def test_a_spent_quota_says_work_waits_for_the_reset(ui: Ui) -> None:
    """All 100 used: the page says the quota is spent and work waits for the reset at the
    next Los Angeles midnight; the task's own page says it waits for that reset."""
    ui.tasks("gads", "acme", 1)
    window = ui.quota_window()
    assert QuotaStore(ui.runtime.repo.engine).reserve(window, 100, ui.clock.now()) == 100
    reset = local_time(window.end, ZONE)

    page = ui.as_("operator").get("/ui/providers/gads").text

    assert 'data-quota="gads:1d" data-spent="true"' in page
    spent = re.search(r'<p class="pause quota-spent"[^>]*>(.*?)</p>', page, re.S)
    assert spent, page
    text = " ".join(spent.group(1).split())
    assert "Quota spent" in text
    assert f"Work waits for the reset at <strong>{reset}" in text
    assert "100 of 100 used" in text
    task = ui.as_("acme").get("/ui/tasks/1").text
    assert "waiting for quota gads:1d" in task
    assert reset in task


def test_fair_shares_show_weight_share_granted_and_waiting(ui: Ui) -> None:
    """acme (weight 3) and globex (1) each have 30 tasks due; a claim of 20 gives 15 and 5:
    shares 75 % and 25 %, 15 and 25 still waiting, entitled 75 % and 25 %."""
    ui.tasks("gads", "acme", 30)
    ui.tasks("gads", "globex", 30)
    ui.clock.advance(1)
    WorkQueue(ui.runtime.repo.engine).claim_fair(ui.clock.now(), 20, "w", 60, "gads", {"acme": 3.0})

    page = ui.as_("operator").get("/ui/providers/gads").text

    rows = dict(re.findall(r'<tr data-fairness-key="([^"]+)">(.*?)</tr>', page, re.S))
    assert set(rows) == {"acme", "globex"}
    cells = {
        key: re.findall(r'<td class="num[^"]*">([^<]*)</td>', row) for key, row in rows.items()
    }
    assert cells["acme"] == ["3", "75.0%", "15", "15"]
    assert cells["globex"] == ["1", "25.0%", "5", "25"]
    assert '<span class="share">75.0%</span>' in rows["acme"]


def test_a_tenant_sees_only_its_own_fairness_line_and_no_quotas(ui: Ui) -> None:
    """A viewer of acme sees acme's line (not globex's), no quota and no live stream; a
    provider whose fairness key is a payload field shows a tenant no line at all."""
    ui.tasks("gads", "acme", 3)
    ui.tasks("gads", "globex", 4)
    ui.tasks("dv", "acme", 2, fairness_key="adv-1")
    ui.clock.advance(1)

    acme = ui.as_("acme")
    page = acme.get("/ui/providers/gads").text
    assert 'data-fairness-key="acme"' in page
    assert "globex" not in page
    assert "data-quota" not in page
    assert "data-stream" not in page
    assert acme.get("/ui/providers/gads/events").status_code == 403
    globex = ui.as_("globex").get("/ui/providers/gads").text
    assert 'data-fairness-key="globex"' in globex
    assert 'data-fairness-key="acme"' not in globex
    dv = acme.get("/ui/providers/dv").text
    assert "data-fairness-key" not in dv
    assert "may span tenants" in dv
    staff = ui.as_("operator").get("/ui/providers/dv").text
    assert 'data-fairness-key="adv-1"' in staff


def test_an_unknown_provider_is_404(ui: Ui) -> None:
    """A provider that is not configured has no page."""
    answer = ui.as_("operator").get("/ui/providers/nosuch")
    assert answer.status_code == 404
    assert "unknown provider &#39;nosuch&#39;; known: dv, gads" in answer.text


def test_the_live_part_follows_the_quota_and_the_shares(ui: Ui) -> None:
    """The provider feed's next render shows what changed in the database: a quota spent
    by another worker, a fairness key's new waiting count."""
    request = SimpleNamespace(app=ui.client.app)
    feed = pages._provider_feed(request, "gads")  # type: ignore[arg-type]
    assert pages._provider_feed(request, "gads") is feed  # one per provider
    before = feed.render()
    assert 'data-spent="false"' in before
    assert "data-fairness-key" not in before
    ui.tasks("gads", "acme", 2)
    QuotaStore(ui.runtime.repo.engine).reserve(ui.quota_window(), 100, ui.clock.now())
    ui.clock.advance(1)
    # Shares are recounted in the background every few seconds: forget them to read now.
    ui.client.app.state.context.overview._shares.clear()  # type: ignore[attr-defined]

    after = feed.render()

    assert 'data-spent="true"' in after
    assert "Quota spent" in after
    assert re.search(r'data-fairness-key="acme">.*?<td class="num waiting">2</td>', after, re.S)


def test_stale_shares_answer_at_once_and_are_recounted_in_the_background(ui: Ui) -> None:
    """Once counted, a stale read of the shares returns the last count without waiting and
    starts a recount; the read after it finishes has the new waiting count."""
    overview = ui.client.app.state.context.overview  # type: ignore[attr-defined]
    ui.tasks("gads", "acme", 2)
    ui.clock.advance(1)
    assert [(s.key, s.waiting) for s in overview.shares("gads")] == [("acme", 2)]
    ui.tasks("gads", "acme", 3)
    overview.counts_ttl_s = 0.0  # everything is stale from now on

    assert [(s.key, s.waiting) for s in overview.shares("gads")] == [("acme", 2)]

    deadline = time.monotonic() + 30
    while "gads" in overview._sharing and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(s.key, s.waiting) for s in overview.shares("gads")] == [("acme", 5)]


def test_a_count_older_than_its_bound_is_redone_before_answering(ui: Ui) -> None:
    """A queue count or share nobody read for longer than ``counts_max_age_s`` is counted
    again before the answer, not served and recounted behind it: ``sluice status --once``
    (scripts) printed the queue of whoever looked last, 9 minutes old, and a first view of
    the console after a quiet spell showed it too."""
    overview = ui.client.app.state.context.overview  # type: ignore[attr-defined]
    ui.tasks("gads", "acme", 2)
    ui.clock.advance(1)

    def queued(tenant: str | None) -> int:
        rows, _counted_at = overview.queue_counts(tenant)
        return sum(r["count"] for r in rows if r["provider"] == "gads")

    assert (queued(None), queued("acme")) == (2, 2)
    assert [(s.key, s.waiting) for s in overview.shares("gads")] == [("acme", 2)]
    ui.tasks("gads", "acme", 3)
    overview.counts_ttl_s = 0.0
    overview.counts_max_age_s = 0.0  # every count is now older than its bound

    assert (queued(None), queued("acme")) == (5, 5)
    assert [(s.key, s.waiting) for s in overview.shares("gads")] == [("acme", 5)]


def test_the_overview_card_lists_eight_quotas_and_links_to_the_rest() -> None:
    """A per-account quota seen for twelve accounts: the card shows eight lines and a link
    to the provider's page for the other four (which shows them all)."""
    from sluice.api.console.routes import render_html

    quotas = [
        {
            "key": f"gads:advertiser_id=a{i:02d}:1d",
            "limit": 100,
            "used": i,
            "waiting": False,
            "resets_at": "2026-12-03T08:00:00+00:00",
            "resets_at_local": "2026-12-03 00:00 PST",
        }
        for i in range(12)
    ]
    card = {"name": "gads", "paused": False, "keys": [], "quotas": quotas}

    html = render_html("_live.html", providers=[card])

    assert html.count("data-quota=") == 8
    assert 'data-quota="gads:advertiser_id=a07:1d"' in html
    assert 'data-quota="gads:advertiser_id=a08:1d"' not in html
    assert '<a href="/ui/providers/gads">4 more quotas' in html
