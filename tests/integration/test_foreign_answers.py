"""Whatever a third party answers, the task's outcome is written: any status code, any JSON
(or bytes that are not JSON) at the fields Sluice reads, any text in them (U+0000, lone
surrogates, very long ids), any ``Retry-After``. Through the real provider adapter and the
real store on SQLite and PostgreSQL: a create, then a status read of what it made."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from sluice.domain import Submission, TaskStatus
from sluice.engine import decide
from sluice.engine.execute import policy_of, task_ref
from sluice.providers.base import Accepted
from sluice.providers.registry import build_http_client
from sluice.store.queue import WorkQueue
from sluice.store.repository import TaskRepository
from tests.unit.providers.fakes import ACME, BATCH_POLL, make_provider, with_changes

TEXT = st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfffy", "x" * 300, ""]) | st.text(
    max_size=12
)
SCALAR = TEXT | st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
READ_FIELDS = [
    "id",
    "campaign_id",
    "status",
    "error",
    "message",
    "errors",
    "validation_errors",
    "code",
    "field",
]


@st.composite
def answers(draw: st.DrawFn) -> httpx.Response:
    """An answer as a third party might send it."""
    status = draw(st.sampled_from([200, 201, 202, 400, 401, 404, 409, 422, 429, 500, 503]))
    headers: dict[str, Any] = {}
    if draw(st.booleans()):
        headers["Retry-After"] = draw(
            st.sampled_from(["1", "0", "-5", "soon", "1e9", "nan"])
            | st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=12)
        ).encode("latin-1")
    if draw(st.integers(0, 9)) == 0:
        return httpx.Response(status, content=draw(st.binary(max_size=40)), headers=headers)
    body = draw(st.fixed_dictionaries({}, optional={field: TEXT | JSON for field in READ_FIELDS}))
    content = json.dumps(body).encode()  # ASCII: a lone surrogate goes as "\ud800"
    headers["content-type"] = "application/json"
    return httpx.Response(status, content=content, headers=headers)


PROVIDERS = {
    "per-object status": {**ACME, "retry_base": "1s"},
    "the prototype's sandbox": {"preset": "sandbox-standard", "base_url": "http://dsp.test"},
}
CLAIM_ALL = 100_000
"""Claims take every due task: earlier examples leave theirs in the same database."""


@pytest.mark.parametrize("table", list(PROVIDERS.values()), ids=list(PROVIDERS))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(create=answers(), status=answers())
def test_any_answer_a_provider_gives_is_written(
    engine: Engine, table: dict[str, Any], create: httpx.Response, status: httpx.Response
) -> None:
    provider = make_provider(table)
    repo, queue = TaskRepository(engine), WorkQueue(engine)
    (task_id,) = repo.create_many(
        [Submission(provider="acme", kind="campaign", payload={"name": "n"})]
    )
    policy = policy_of(provider, "campaign")

    def reply(answer: httpx.Response) -> Any:
        return lambda request: answer

    now = datetime.now(UTC)
    client = build_http_client(provider, transport=httpx.MockTransport(reply(create)))
    (due,) = [d for d in queue.claim_due(now, CLAIM_ALL, "w", 60.0) if d.id == task_id]
    decision = provider.submit(client, task_ref(due))
    outcome = decide.after_submit(due, decision, policy, now)
    assert queue.apply([outcome], now) == 1

    task = repo.get(task_id)
    if task.status is not TaskStatus.IN_PROGRESS or task.external_id is None:
        return
    later = now + timedelta(days=1)
    client = build_http_client(provider, transport=httpx.MockTransport(reply(status)))
    (due,) = [d for d in queue.claim_due(later, CLAIM_ALL, "w", 60.0) if d.id == task_id]
    polled = provider.poll(client, [task_ref(due)])
    outcome = decide.after_poll(due, polled[task_id], policy, later)
    assert queue.apply([outcome], later) == 1


@st.composite
def batch_answers(draw: st.DrawFn, our_id: str) -> httpx.Response:
    """A batch status answer: an item for our id (any status, any error) among others with
    any values, or any JSON at all."""
    status = draw(st.sampled_from([200, 200, 200, 400, 404, 429, 500]))
    ours = draw(
        st.fixed_dictionaries(
            {"id": st.just(our_id)},
            optional={
                "status": st.sampled_from(["failed", "success", "pending", "Error"]) | JSON,
                "error": TEXT | JSON,
            },
        )
    )
    others = draw(st.lists(st.dictionaries(st.sampled_from(["id", "status", "error"]), JSON)))
    items = draw(st.permutations([ours, *others[:3]]))
    body = draw(st.just(items) | JSON) if draw(st.integers(0, 9)) == 0 else items
    return httpx.Response(
        status, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_batch_status_answer_is_written(engine: Engine, data: st.DataObject) -> None:
    provider = make_provider(with_changes(ACME, poll=with_changes(BATCH_POLL, batch_size=10)))
    repo, queue = TaskRepository(engine), WorkQueue(engine)
    (task_id,) = repo.create_many(
        [Submission(provider="acme", kind="campaign", payload={"name": "n"})]
    )
    our_id = f"cam-{task_id}"
    policy = policy_of(provider, "campaign")
    now = datetime.now(UTC)
    (due,) = [d for d in queue.claim_due(now, CLAIM_ALL, "w", 60.0) if d.id == task_id]
    created = decide.after_submit(due, Accepted(our_id, completed=False), policy, now)
    assert queue.apply([created], now) == 1

    answer = data.draw(batch_answers(our_id))
    client = build_http_client(provider, transport=httpx.MockTransport(lambda request: answer))
    later = now + timedelta(days=1)
    (due,) = [d for d in queue.claim_due(later, CLAIM_ALL, "w", 60.0) if d.id == task_id]
    polled = provider.poll(client, [task_ref(due)])
    outcome = decide.after_poll(due, polled[task_id], policy, later)
    assert queue.apply([outcome], later) == 1
