"""Every metric, label and alert rule the documentation names exists as written: an
operator who copies a PromQL expression or an alert from the docs gets a query over real
series, not an empty answer that never fires."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sluice import metrics
from tests.unit.metrics.test_metrics_naming import INSTRUMENTS

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TARGET_LABELS = {"instance", "job"}
"""Labels Prometheus adds to every series it scrapes."""


def exposed() -> dict[str, set[str]]:
    """Every sample name /metrics can show, with its labels."""
    names: dict[str, set[str]] = {}
    for instrument in INSTRUMENTS:
        labels = set(instrument._labelnames)
        if instrument._type == "counter":
            names[f"{instrument._name}_total"] = labels
        elif instrument._type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[instrument._name + suffix] = labels | (
                    {"le"} if suffix == "_bucket" else set()
                )
        else:
            names[instrument._name] = labels
    state = metrics.State(
        tasks={("sbx", "Completed"): 3},
        oldest_due_s={"sbx": 1.5},
        pauses=[metrics.Pause("sbx:write", 4.0)],
        providers=["sbx"],
        rates=[metrics.RateInForce("sbx:write", 10.0, 5.0, "pinned")],
        shares=[metrics.FairShare("sbx", "tenant-a", 1.0, 3)],
        quotas=[metrics.QuotaUse("sbx:1d", 100, 7)],
    )
    for family in metrics.state_families(state):
        names[family.name] = {label for sample in family.samples for label in sample.labels}
    return names


def alert_rules() -> list[dict[str, object]]:
    yaml = pytest.importorskip("yaml")
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Alert rules worth having", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    rules: list[dict[str, object]] = yaml.safe_load(block)["groups"][0]["rules"]
    return rules


def test_every_sluice_metric_the_docs_name_is_exposed() -> None:
    """Each ``sluice_...`` name in README.md and docs/*.md is a sample name /metrics shows
    (a counter with its ``_total``, a histogram's ``_bucket``/``_sum``/``_count``)."""
    known = exposed()
    prefixes = {name.removesuffix("_total") for name in known} | {
        name.rsplit("_", 1)[0] for name in known if name.endswith(("_bucket", "_count"))
    }
    # Names that share the prefix but are not metrics: a cookie, a benchmark file's name.
    not_metrics = {"sluice_session", "sluice_adaptive"}
    unknown = [
        f"{doc.name}: {name}"
        for doc in DOCS
        for name in re.findall(r"\bsluice_[a-z_]+[a-z]\b", doc.read_text())
        if name not in known and name not in prefixes and name not in not_metrics
    ]
    assert unknown == []


def test_every_alert_rule_selects_real_series_and_labels() -> None:
    """Each alert in docs/operations.md names exposed metrics, matches only their labels,
    and groups only by labels its metrics carry (or Prometheus's instance and job)."""
    known = exposed()
    rules = alert_rules()
    assert rules
    for rule in rules:
        expr = str(rule["expr"])
        names = re.findall(r"\b(sluice_[a-z_]+)\b", expr)
        assert names, rule["alert"]
        carried = set(TARGET_LABELS)
        for name in names:
            assert name in known, (rule["alert"], name)
            carried |= known[name]
        for name, matchers in re.findall(r"\b(sluice_[a-z_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in known[name], (rule["alert"], name, label)
        for grouping in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
            for label in (part.strip() for part in grouping.split(",")):
                assert label in carried, (rule["alert"], label)
