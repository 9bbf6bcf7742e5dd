"""``submissions.check`` fills in provider, status and fairness key and keeps every other
field of the submission as it came (it spells the fields out for speed, so a field added
to ``Submission`` later must be added there too)."""

from __future__ import annotations

from dataclasses import fields, replace

from hypothesis import given
from hypothesis import strategies as st

from sluice import submissions
from sluice.catalog import Catalog, ProviderInfo
from sluice.domain import Submission, TaskStatus

CATALOG = Catalog(
    {
        "sandbox": ProviderInfo(frozenset({"campaign"}), can_track=True),
        "fair": ProviderInfo(frozenset({"campaign"}), can_track=False, fairness_field="advertiser"),
    },
    default_provider="sandbox",
)

names = st.text(alphabet="abc", min_size=1, max_size=5)
submitted = st.builds(
    Submission,
    provider=st.sampled_from([None, "sandbox", "fair"]),
    kind=st.just("campaign"),
    payload=st.fixed_dictionaries({}, optional={"advertiser": names, "n": st.integers(0, 9)}),
    id=st.none() | st.integers(1, 2**53),
    parent_id=st.none() | st.integers(1, 2**53),
    parent_index=st.none() | st.integers(0, 9),
    status=st.sampled_from([None, TaskStatus.NOT_STARTED]),
    idempotency_key=st.none() | names,
    request_hash=st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    tenant=names,
    priority=st.integers(-100, 100),
)


@given(submitted)
def test_check_changes_only_the_fields_it_fills_in(item: Submission) -> None:
    if item.parent_id is not None and item.parent_index is not None:
        item = replace(item, parent_index=None)  # one parent at most
    spec, problems = submissions.check(item, 10, CATALOG)

    assert problems == []
    assert spec is not None
    provider = item.provider or "sandbox"
    assert spec == replace(
        item,
        provider=provider,
        status=TaskStatus.NOT_STARTED,
        fairness_key=CATALOG.fairness_key(provider, item.tenant, item.payload),
    )


def test_every_field_of_a_submission_is_in_the_property_above() -> None:
    # A new Submission field needs a place in check()'s constructor call and here.
    assert {f.name for f in fields(Submission)} == {
        "provider",
        "kind",
        "payload",
        "id",
        "parent_id",
        "parent_index",
        "status",
        "idempotency_key",
        "request_hash",
        "tenant",
        "priority",
        "fairness_key",
    }


def nested(depth: int, shape: list[str]) -> object:
    """A value ``depth`` objects and lists deep, each level an object or a list by ``shape``."""
    value: object = "leaf"
    for level in range(depth):
        value = {"k": value, "n": 1} if shape[level % len(shape)] == "object" else [1, value]
    return value


@given(
    depth=st.integers(0, 200),
    shape=st.lists(st.sampled_from(["object", "list"]), min_size=1, max_size=4),
)
def test_a_value_is_refused_exactly_when_it_nests_past_the_cap(
    depth: int, shape: list[str]
) -> None:
    """Objects and lists nested up to MAX_NESTING levels are storable; one level more is
    refused, and the refusal names the cap and the value's depth."""
    value = nested(depth, shape)

    problem = submissions.unstorable(value)

    assert submissions.nesting(value) == depth
    if depth <= submissions.MAX_NESTING:
        assert problem is None
    else:
        assert problem == (
            f"objects and lists may nest at most {submissions.MAX_NESTING} levels deep, got {depth}"
        )


def test_nesting_counts_the_deepest_branch() -> None:
    """A value's depth is that of its deepest branch, whatever its siblings hold."""
    assert submissions.nesting({"flat": 1, "deep": [[{"x": []}]], "mid": {"a": {}}}) == 5
    assert submissions.nesting("text") == 0
