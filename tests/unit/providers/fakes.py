"""A small stateful fake DSP for ``httpx.MockTransport``, and helpers to build providers."""

from __future__ import annotations

import errno
import itertools
import json
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from sluice.clock import Clock
from sluice.providers.base import TaskRef
from sluice.providers.http import HttpProvider
from sluice.providers.registry import build_http_client, load_providers
from sluice.ratelimit.base import Limiter
from sluice.settings import Settings

Scripted = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class FakeDsp:
    """Creates objects, answers their statuses and finds them by client_ref.

    Routes: ``POST /{collection}``, ``GET /{collection}/{id}/status``,
    ``GET /{collection}?client_ref=X`` and ``GET /statuses?ids=a,b``. Tests queue
    one-off answers (or exceptions) with :meth:`script`; they are used first.
    """

    ID_FIELDS: dict[str, str] = {"campaigns": "campaign_id", "ad-groups": "ad_group_id"}

    def __init__(self, initial_status: str = "pending") -> None:
        self.initial_status = initial_status
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self._scripted: deque[Scripted] = deque()
        self._ids = itertools.count(1)

    def script(self, *answers: Scripted) -> None:
        """Answer the next requests with ``answers``, in order."""
        self._scripted.extend(answers)

    def add(self, object_id: str, **fields: Any) -> None:
        """Put an object in place, as if created earlier."""
        self.objects[object_id] = {"id": object_id, **fields}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self._scripted:
            answer = self._scripted.popleft()
            if isinstance(answer, Exception):
                raise answer
            return answer(request) if callable(answer) else answer
        parts = [p for p in request.url.path.split("/") if p]
        if request.method == "POST" and len(parts) == 1:
            body = json.loads(request.content)
            object_id = f"{parts[0].replace('-', '')[:3]}-{next(self._ids)}"
            self.objects[object_id] = {"id": object_id, "status": self.initial_status, **body}
            id_field = self.ID_FIELDS.get(parts[0], "id")
            return httpx.Response(201, json={id_field: object_id, "status": "pending"})
        if parts == ["statuses"]:
            ids = request.url.params.get("ids", "").split(",")
            return httpx.Response(
                200,
                json=[
                    {k: v for k, v in self.objects[i].items() if k in {"id", "status", "error"}}
                    for i in ids
                    if i in self.objects
                ],
            )
        if request.method == "GET" and len(parts) == 3 and parts[2] == "status":
            found = self.objects.get(parts[1])
            if found is None:
                return httpx.Response(404, json={"error": {"message": f"{parts[1]} not found"}})
            return httpx.Response(200, json=found)
        if request.method == "GET" and len(parts) == 1 and "client_ref" in request.url.params:
            ref = request.url.params["client_ref"]
            data = [o for o in self.objects.values() if o.get("client_ref") == ref]
            return httpx.Response(200, json={"data": data})
        return httpx.Response(404, json={"error": {"message": "no such route"}})

    def sent_json(self, index: int = -1) -> Any:
        """The JSON body of a request the fake received."""
        return json.loads(self.requests[index].content)


ACME: dict[str, Any] = {
    "base_url": "http://acme.test",
    "rate_limit": "10/s",
    "kinds": {
        "campaign": {
            "submit": "POST /campaigns",
            "external_id_field": "campaign_id",
            "status": "GET /campaigns/{external_id}/status",
            "status_field": "status",
            "error_field": "error",
            "status_map": {"success": "Completed", "failed": "Error", "pending": "In Progress"},
        },
        "ad_group": {
            "submit": "POST /ad-groups",
            "external_id_field": "ad_group_id",
            "parent_field": "campaign_id",
            "client_ref_field": "client_ref",
            "status": "GET /ad-groups/{external_id}/status",
            "status_field": "status",
            "error_field": "error",
            "status_map": {"success": "Completed", "failed": "Error", "pending": "In Progress"},
            "lookup": "GET /ad-groups?client_ref={client_ref}",
            "lookup_items_field": "data",
            "lookup_id_field": "id",
        },
        "note": {"submit": "POST /notes"},
    },
}
"""A per-object provider shaped like the issue's ``acme`` example (``campaign_id`` answers)."""

BATCH_POLL: dict[str, Any] = {
    "request": "GET /statuses?ids={ids}",
    "batch_size": 2,
    "interval": "2s",
    "status_map": {
        "pending": "In Progress",
        "Not Started": "Not Started",
        "In Progress": "In Progress",
        "Completed": "Completed",
        "Error": "Error",
        "success": "Completed",
        "failed": "Error",
    },
    "error_field": "error",
}


def make_provider(
    table: Mapping[str, Any],
    *,
    name: str = "acme",
    environ: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    limiter: Limiter | None = None,
) -> HttpProvider:
    """One provider built the way Sluice builds it at start."""
    settings = Settings(providers={name: dict(table)}, default_provider=name)
    provider = load_providers(settings, environ=environ or {}, clock=clock, limiter=limiter)[name]
    assert isinstance(provider, HttpProvider)
    return provider


def client_for(provider: HttpProvider, dsp: FakeDsp) -> httpx.Client:
    """The provider's real client, with the fake DSP in place of the network."""
    return build_http_client(provider, transport=httpx.MockTransport(dsp))


def task(
    task_id: int = 1,
    kind: str | None = "campaign",
    payload: Mapping[str, Any] | None = None,
    external_id: str | None = None,
    client_ref: str = "sluice-1",
    parent_external_id: str | None = None,
) -> TaskRef:
    """A task view with sensible defaults."""
    return TaskRef(
        task_id=task_id,
        kind=kind,
        payload=dict(payload or {"name": "Spring sale"}),
        external_id=external_id,
        client_ref=client_ref,
        parent_external_id=parent_external_id,
    )


def with_changes(base: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``base`` with top-level keys replaced."""
    return {**base, **changes}


def refused(message: str = "connection refused") -> httpx.ConnectError:
    """A ConnectError as httpx raises it for a refused connection (the OSError as cause)."""
    error = httpx.ConnectError(message)
    error.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    return error
