"""Liveness, readiness and the prototype's health check: public, they show no data."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from sluice.api.auth import PUBLIC, GuardedRoute
from sluice.api.deps import Context
from sluice.api.readiness import BoundedChecks
from sluice.api.schemas import Message
from sluice.masking import mask

_checks = BoundedChecks()
"""This process's readiness checks in flight (one run of each at a time)."""

router = APIRouter(tags=["health"], route_class=GuardedRoute, dependencies=[Depends(PUBLIC)])


@router.get("/api/healthchecker", response_model=Message)
def healthchecker() -> Message:
    """The prototype's health check."""
    return Message(message="The API is up.")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(context: Context) -> JSONResponse:
    """Readiness: the database (and Redis/broker when configured) answer."""
    results: dict[str, Any] = {}
    ready = True
    # Each check has CHECK_TIMEOUT_S to answer: a hung server is "not ready", not a probe
    # left without an answer.
    for name, failure in _checks.run(context.checks).items():
        if failure is None:
            results[name] = "ok"
        else:  # any failure means not ready; the reason is reported
            ready = False
            results[name] = f"error: {reason(failure)}"
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": results},
        status_code=200 if ready else 503,
    )


def reason(exc: Exception) -> str:
    """Why a check failed, in one line, with any URL password masked."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return mask(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
