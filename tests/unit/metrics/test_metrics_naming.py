"""Metric names and labels follow Prometheus conventions and never carry ids or accounts."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sluice import metrics

ALLOWED_LABELS = {
    "provider",
    "operation",
    "status_class",
    "reason",
    "signal",
    "event",
    "scope",
    "status",
    "source",
    # Bounded by fold_shares: the keys with a configured weight, the top 10 others, _other.
    "fairness_key",
}
FORBIDDEN_LABELS = {
    "task_id",
    "task",
    "id",
    "external_id",
    "client_ref",
    "tenant",
    "account",
    "key",
    "advertiser_id",
    "advertiser",
    "url",
    "path",
}
INSTRUMENTS = [
    metrics.GRANTS,
    metrics.REFUSALS,
    metrics.GRANT_WAIT,
    metrics.GRANTS_EXPIRED,
    metrics.GRANTS_WRITTEN_LATE,
    metrics.UPSTREAM_REQUESTS,
    metrics.UPSTREAM_LATENCY,
    metrics.IN_FLIGHT,
    metrics.SIGNALS,
    metrics.RETRIES,
    metrics.VALIDATION_ERRORS,
    metrics.OUTCOMES,
]


def test_every_instrument_is_named_by_convention() -> None:
    """Each name starts with sluice_, counters end in _total, histograms in _seconds, and
    every label is one of the bounded ones, never an id or an account."""
    for instrument in INSTRUMENTS:
        kind = instrument._type
        name = instrument._name
        assert re.fullmatch(r"sluice_[a-z_]+", name), name
        if kind == "counter":
            assert not name.endswith("_total"), name  # prometheus_client adds it
            full = f"{name}_total"
            assert full.startswith("sluice_"), full
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        labels = set(instrument._labelnames)
        assert labels <= ALLOWED_LABELS, (name, labels)
        assert not labels & FORBIDDEN_LABELS, (name, labels)
        assert "provider" in labels, name


def test_the_state_gauges_are_named_by_convention() -> None:
    """The scrape-time gauges use base units and the same bounded labels."""
    state = metrics.State(
        tasks={("sbx", "Completed"): 3},
        oldest_due_s={"sbx": 1.5},
        pauses=[metrics.Pause("sbx:advertiser_id=adv-77", 4.0)],
        providers=["sbx"],
        rates=[metrics.RateInForce("sbx:write", 10.0, 5.0, "pinned")],
        shares=[metrics.FairShare("sbx", "tenant-a", 1.0, 3)],
        quotas=[metrics.QuotaUse("sbx:write:advertiser_id=adv-77:1d", 100, 7)],
    )
    for family in metrics.state_families(state):
        assert family.name.startswith("sluice_"), family.name
        assert family.type == "gauge"
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            assert "adv-77" not in "".join(sample.labels.values())


def test_registered_sluice_families_are_all_known() -> None:
    """No module registers a sluice_ metric outside sluice/metrics.py (one place to look)."""
    known = {i._name for i in INSTRUMENTS}
    found = {family.name for family in REGISTRY.collect() if family.name.startswith("sluice_")}
    assert found <= known, found - known


def test_an_exposition_scan_finds_planted_ids() -> None:
    """The scan used on real expositions flags an id in a label (so it can fail)."""
    text = 'sluice_x_total{provider="sbx",reason="task-123"} 1\n'
    assert planted_in(text, {"task-123"}) == ["task-123"]
    assert planted_in('sluice_x_total{provider="sbx"} 1\n', {"task-123"}) == []


def planted_in(exposition: str, planted: set[str]) -> list[str]:
    """Which ``planted`` strings appear in a label value (or anywhere) of ``exposition``."""
    found = set()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            for value in sample.labels.values():
                found |= {p for p in planted if p in value}
    found |= {p for p in planted if p in exposition}
    return sorted(found)


# --- keys folded into provider and scope -------------------------------------------------


def test_fold_key_examples() -> None:
    """Provider-wide, scoped, per-account and windowed keys fold as documented."""
    assert metrics.fold_key("sandbox") == ("sandbox", "all")
    assert metrics.fold_key("sandbox:write") == ("sandbox", "write")
    assert metrics.fold_key("sandbox:advertiser=adv-1") == ("sandbox", "advertiser")
    assert metrics.fold_key("sandbox:write:advertiser_id=42") == ("sandbox", "write:advertiser_id")
    assert metrics.fold_key("sandbox:write:advertiser_id=42:1h") == (
        "sandbox",
        "write:advertiser_id:1h",
    )
    assert metrics.fold_key("sandbox:in_flight") == ("sandbox", "in_flight")


NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
VALUE = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.", min_size=1, max_size=12)


@given(
    provider=NAME,
    scope=st.sampled_from([None, "read", "write"]),
    accounts=st.lists(st.tuples(NAME, VALUE), max_size=3),
)
def test_fold_key_drops_every_account_value(
    provider: str, scope: str | None, accounts: list[tuple[str, str]]
) -> None:
    """Folding keeps the provider, keeps the field names and drops every account's value,
    so two accounts of one scope fold together."""
    parts = [provider, *([scope] if scope else []), *(f"{f}={v}" for f, v in accounts)]
    folded_provider, folded_scope = metrics.fold_key(":".join(parts))
    assert folded_provider == provider
    for _, value in accounts:
        assert value not in folded_scope
    other = [provider, *([scope] if scope else []), *(f"{f}=X" for f, _ in accounts)]
    assert metrics.fold_key(":".join(other)) == (folded_provider, folded_scope)


def test_pauses_of_two_accounts_sum_into_one_scope() -> None:
    """Two paused accounts of one scope count 2 under that scope; the longest one is shown."""
    state = metrics.State(
        pauses=[
            metrics.Pause("sbx:advertiser_id=a1", 3.0),
            metrics.Pause("sbx:advertiser_id=a2", 7.0),
        ],
        providers=["sbx"],
    )
    families = {f.name: f for f in metrics.state_families(state)}
    paused = {tuple(s.labels.values()): s.value for s in families["sluice_paused"].samples}
    left = {
        tuple(s.labels.values()): s.value
        for s in families["sluice_pause_remaining_seconds"].samples
    }
    assert paused == {("sbx", "advertiser_id"): 2, ("sbx", "all"): 0}
    assert left[("sbx", "advertiser_id")] == 7.0


# --- fairness keys: bounded series ------------------------------------------------------

SHARE = st.builds(
    metrics.FairShare,
    provider=st.sampled_from(["p1", "p2"]),
    key=st.text(alphabet="abcdefghij", min_size=1, max_size=4),
    share=st.floats(min_value=0, max_value=1),
    waiting=st.integers(min_value=0, max_value=1000),
    weighted=st.booleans(),
)


@given(
    shares=st.lists(SHARE, max_size=60, unique_by=lambda s: (s.provider, s.key)),
    top=st.integers(min_value=0, max_value=12),
)
def test_fold_shares_bounds_the_series_and_keeps_the_totals(
    shares: list[metrics.FairShare], top: int
) -> None:
    """Per provider: every weighted key and at most ``top`` others keep their own series,
    the rest sum into one _other line; shares and waiting tasks add up as before, and no
    shown key has a smaller share than one folded away."""
    folded = metrics.fold_shares(shares, top=top)
    for provider in ("p1", "p2"):
        given_ = [s for s in shares if s.provider == provider]
        out = [s for s in folded if s.provider == provider]
        weighted = [s for s in given_ if s.weighted]
        assert len(out) <= len(weighted) + top + 1
        assert {s.key for s in weighted} <= {s.key for s in out}
        assert sum(s.waiting for s in out) == sum(s.waiting for s in given_)
        assert abs(sum(s.share for s in out) - sum(s.share for s in given_)) < 1e-3
        kept = {s.key for s in out}
        dropped = [s for s in given_ if s.key not in kept]
        shown = [s for s in given_ if s.key in kept and not s.weighted]
        if dropped and shown:
            assert min(s.share for s in shown) >= max(s.share for s in dropped)


def test_fold_shares_names_the_rest_other() -> None:
    """Twelve tenants, one weighted: the weighted one, the ten largest others, and _other."""
    shares = [metrics.FairShare("p", f"t{i:02d}", i / 100, i) for i in range(12)]
    shares.append(metrics.FairShare("p", "vip", 0.0, 0, weighted=True))
    folded = {s.key: s for s in metrics.fold_shares(shares)}
    assert set(folded) == {"vip", "_other", *(f"t{i:02d}" for i in range(2, 12))}
    assert (folded["_other"].share, folded["_other"].waiting) == (0.01, 1)
