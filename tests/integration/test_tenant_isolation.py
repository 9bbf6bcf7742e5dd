"""Tenant isolation as a Hypothesis state machine over the real API, on SQLite and
PostgreSQL: whatever several tenants create, list, read and cancel, each sees exactly its
own tasks, another tenant's task always answers like a missing one, and an admin sees all."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine

from sluice import apikeys
from sluice.api.app import create_app
from sluice.catalog import Catalog, ProviderInfo
from sluice.settings import Settings
from sluice.store.keys import KeyStore
from sluice.store.repository import TaskRepository

CATALOG = Catalog({"sandbox": ProviderInfo(frozenset({"campaign"}), True)}, "sandbox")
TENANTS = ("acme", "globex", "initech")
MISSING = 10**12


def test_tenants_never_see_each_other(engine: Engine) -> None:
    """Random creates (with parents), lists, reads, event reads and cancels by three tenants
    keep every tenant's view equal to its own tasks."""
    client = TestClient(
        create_app(Settings(auth="required"), TaskRepository(engine), CATALOG),
        base_url="http://localhost",
    )

    class Tenants(RuleBasedStateMachine):
        tasks = Bundle("tasks")

        def __init__(self) -> None:
            super().__init__()
            # Each run gets its own tenants, so runs on one database stay apart.
            run = uuid.uuid4().hex[:8]
            store = KeyStore(engine)
            self.tenants = {name: f"{name}-{run}" for name in TENANTS}
            self.headers = {
                name: self._header(store, "submitter", tenant)
                for name, tenant in self.tenants.items()
            }
            self.admin = self._header(store, "admin", None)
            self.owner: dict[int, str] = {}
            self.parent: dict[int, int | None] = {}
            self.cancelled: set[int] = set()

        @staticmethod
        def _header(store: KeyStore, role: str, tenant: str | None) -> dict[str, str]:
            made = apikeys.create_key(store, name=f"{role}-{tenant}", role=role, tenant=tenant)
            return {"Authorization": f"Bearer {made.token}"}

        def _descendants(self, task_id: int) -> set[int]:
            found: set[int] = set()
            frontier = {task_id}
            while frontier:
                frontier = {c for c, p in self.parent.items() if p in frontier}
                found |= frontier
            return found

        @rule(target=tasks, tenant=st.sampled_from(TENANTS), data=st.data())
        def create(self, tenant: str, data: st.DataObject) -> int:
            body: dict[str, Any] = {"kind": "campaign", "payload": {"n": len(self.owner)}}
            parent = None
            if self.owner and data.draw(st.booleans(), label="with parent"):
                parent = data.draw(st.sampled_from(sorted(self.owner)), label="parent")
                body["parent_id"] = parent
            response = client.post("/api/tasks", json=body, headers=self.headers[tenant])
            if parent is not None and self.owner[parent] != tenant:
                assert response.status_code == 422, response.text
                assert f"parent task(s) {parent} do not exist" in response.text
                return MISSING
            assert response.status_code == 201, response.text
            task = response.json()
            assert task["tenant"] == self.tenants[tenant]
            self.owner[task["id"]] = tenant
            self.parent[task["id"]] = parent
            if parent is not None and parent in self.cancelled:
                self.cancelled.add(task["id"])
            return int(task["id"])

        @rule(
            task_id=tasks, tenant=st.sampled_from(TENANTS), suffix=st.sampled_from(["", "/events"])
        )
        def read(self, task_id: int, tenant: str, suffix: str) -> None:
            response = client.get(f"/api/tasks/{task_id}{suffix}", headers=self.headers[tenant])
            if self.owner.get(task_id) == tenant:
                assert response.status_code == 200, response.text
            else:
                assert response.status_code == 404
                assert response.json() == {"detail": f"task {task_id} not found"}

        @rule(task_id=tasks, tenant=st.sampled_from(TENANTS))
        def cancel(self, task_id: int, tenant: str) -> None:
            response = client.post(f"/api/tasks/{task_id}/cancel", headers=self.headers[tenant])
            if self.owner.get(task_id) != tenant:
                assert response.status_code == 404
                assert response.json() == {"detail": f"task {task_id} not found"}
            elif task_id in self.cancelled:
                assert response.status_code == 409
            else:
                assert response.status_code == 200, response.text
                self.cancelled |= {task_id} | self._descendants(task_id)

        @invariant()
        def each_tenant_lists_exactly_its_own(self) -> None:
            for name in TENANTS:
                listed = client.get(
                    "/api/tasks", params={"limit": 1000}, headers=self.headers[name]
                ).json()["items"]
                own = sorted(t for t, owner in self.owner.items() if owner == name)
                assert [t["id"] for t in listed] == own
                cancelled = {t["id"] for t in listed if t["status"] == "Cancelled"}
                assert cancelled == self.cancelled & set(own)

        @invariant()
        def the_admin_sees_every_tenant(self) -> None:
            for name, tenant in self.tenants.items():
                listed = client.get(
                    "/api/tasks", params={"tenant": tenant, "limit": 1000}, headers=self.admin
                ).json()["items"]
                assert [t["id"] for t in listed] == sorted(
                    t for t, owner in self.owner.items() if owner == name
                )

    with client:
        run_state_machine_as_test(
            Tenants,
            settings=settings(max_examples=10, stateful_step_count=12, deadline=None),
        )
