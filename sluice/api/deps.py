"""What routes get from the application: the stores, the catalog, readiness checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from sluice.catalog import Catalog
from sluice.controls import Controls
from sluice.engine.adaptive import Learner
from sluice.engine.bulkjobs import BulkJobRunner
from sluice.explain import Explainer
from sluice.overview import OverviewService
from sluice.store.audit import AuditLog
from sluice.store.bulkjobs import BulkJobs
from sluice.store.keys import KeyStore
from sluice.store.repository import TaskRepository

ReadinessCheck = Callable[[], None]

STORE_RETRY_AFTER_S = 5
"""How long a client should wait before retrying while the database is unavailable (the
503's ``Retry-After``; a console page reloads itself after as long)."""


@dataclass
class ApiContext:
    """Everything the routes need, built once by ``create_app``."""

    repo: TaskRepository
    catalog: Catalog
    keys: KeyStore
    audit: AuditLog
    controls: Controls
    explainer: Explainer
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    overview: OverviewService | None = None
    bulk: BulkJobs | None = None
    bulk_runner: BulkJobRunner | None = None
    learner: Learner | None = None
    """The adaptive limiter's learned rates (``GET /api/rates`` lists their keys)."""


async def get_context(request: Request) -> ApiContext:
    # async: a plain function would be run on the thread pool, a hop for an attribute read.
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(get_context)]
