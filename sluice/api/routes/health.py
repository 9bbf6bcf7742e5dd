"""Liveness, readiness and the prototype's health check: public, they show no data."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from sluice.api.auth import PUBLIC, GuardedRoute
from sluice.api.deps import Context
from sluice.api.readiness import BoundedChecks
from sluice.api.schemas import Message
from sluice.masking import mask, without_addresses

_checks = BoundedChecks()
"""This process's readiness checks in flight (one run of each at a time)."""

router = APIRouter(tags=["health"], route_class=GuardedRoute, dependencies=[Depends(PUBLIC)])


# The probes are async, on the event loop: a plain function runs on the thread pool that
# every route reading the database shares, and while the database's host was cut off the
# requests waiting on it filled that pool and the probes queued behind them (a liveness
# probe that fails restarts an API with nothing wrong with it).


@router.get("/api/healthchecker", response_model=Message)
async def healthchecker() -> Message:
    """The prototype's health check."""
    return Message(message="The API is up.")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


ADVISORY = frozenset({"broker", "redis"})
"""Checks reported by ``/readyz`` that do not make it 503: the API publishes nothing to the
broker (workers and beat do), so while the broker is away it still takes tasks, which wait
in the database. Failing the probe took every API out of its load balancer for a broker
outage, turning paused dispatch into refused submissions. Redis likewise: the API's
per-key limit lets requests through while it is away (docs/security.md), and the workers'
limiter's work waits in the database; a partition of Redis's host made every API
``not ready`` while each served every request."""


@router.get("/readyz")
async def readyz(context: Context) -> JSONResponse:
    """Readiness: the database answers; the states of Redis and the broker (when
    configured) are reported too, as ``degraded`` (200) when one does not answer."""
    results: dict[str, Any] = {}
    ready, degraded = True, False
    # Each check has CHECK_TIMEOUT_S to answer: a hung server is "not ready", not a probe
    # left without an answer.
    for name, failure in (await _checks.wait(context.checks)).items():
        if failure is None:
            results[name] = "ok"
            continue
        results[name] = f"error: {reason(failure)}"
        if name in ADVISORY:
            degraded = True
        else:
            ready = False
    status = "not ready" if not ready else "degraded" if degraded else "ready"
    return JSONResponse({"status": status, "checks": results}, status_code=200 if ready else 503)


def reason(exc: Exception) -> str:
    """Why a check failed, in one line, with any URL password masked and no host, address,
    port or socket path (``/readyz`` answers anyone: the layout is the operator's business)."""
    lines = str(exc).strip().splitlines()
    text = without_addresses(lines[0]) if lines else ""
    return mask(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
