"""The CLI's way in (a JSON file through the importer) refuses exactly what the API refuses."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice import errors, importer, submissions
from sluice.submissions import SubmissionInvalid

if TYPE_CHECKING:
    from conftest import Api

from tests.unit.api.conftest import CATALOG

# Text with and without NUL or an unpaired surrogate, numbers finite and not, nested a little.
texts = st.text(alphabet=st.sampled_from("ab\x00é-\ud800"), max_size=4)
scalars = st.one_of(
    texts, st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True)
)
payloads = st.dictionaries(
    texts,
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=4),
    max_size=3,
)
kinds = st.one_of(st.just("campaign"), st.sampled_from(["", "camp\x00aign", "c" * 65]))


def via_api(api: Api, body: dict[str, Any]) -> bool:
    raw = json.dumps(body, allow_nan=True).encode()
    answer = api.client.post(
        "/api/tasks", content=raw, headers={"content-type": "application/json"}
    )
    assert answer.status_code in (201, 422), answer.text
    return answer.status_code == 201


def via_cli(api: Api, body: dict[str, Any]) -> bool:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tasks.json"
        path.write_text(json.dumps([body], allow_nan=True), encoding="utf-8")
        try:
            items = importer.load_file(path)
            submissions.create_tasks(api.repo, CATALOG, items)
        except (SubmissionInvalid, errors.InvalidTask):
            return False
    return True


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kind=kinds, payload=payloads)
def test_cli_and_api_accept_and_refuse_the_same_submissions(
    api: Api, kind: str, payload: dict[str, Any]
) -> None:
    """For any kind and payload, the API stores it if and only if `sluice submit` would."""
    body = {"kind": kind, "payload": payload}
    before_tasks, _ = api.written()

    accepted_by_api = via_api(api, body)
    accepted_by_cli = via_cli(api, body)

    assert accepted_by_api == accepted_by_cli, body
    assert api.written()[0] == before_tasks + 2 * accepted_by_api


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(depth=st.integers(1, 400), in_list=st.booleans())
def test_cli_and_api_share_the_nesting_cap_and_what_is_stored_is_shown(
    api: Api, depth: int, in_list: bool
) -> None:
    """For any nesting depth, the API stores a payload if and only if `sluice submit` would
    (64 levels at most), and every task stored is shown again (no 500 on the way out)."""
    leaf: Any = "x"
    for _ in range(depth - 1):
        leaf = [leaf] if in_list else {"a": leaf}
    body = {"kind": "campaign", "payload": {"a": leaf} if depth > 1 else {}}

    accepted_by_api = via_api(api, body)
    accepted_by_cli = via_cli(api, body)

    assert accepted_by_api == accepted_by_cli == (depth <= submissions.MAX_NESTING)
    assert api.client.get("/api/tasks", params={"limit": 1000}).status_code == 200
