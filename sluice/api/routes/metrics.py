"""``GET /metrics``: Prometheus's scrape of this host's processes and the cluster's state.

Who may scrape: the API's auth mode as for every route (open on loopback in ``auto``),
else an operator's or admin's API key, or the scrape token ``SLUICE_METRICS_TOKEN``, which
opens this route and no other. What is in it: :mod:`sluice.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute

from sluice import metrics
from sluice.api.auth import OPERATOR, GuardedRoute, Principal
from sluice.domain import Actor, Role
from sluice.metrics_host import token_matches

SCRAPER = Principal(Role.OPERATOR, None, Actor("system:metrics-scrape"))
"""Who a request with the scrape token is, on this route only."""


class ScrapeRoute(GuardedRoute):
    """A guarded route that also lets in the scrape token (``app.state.scrape_token``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        guarded = super().get_route_handler()
        plain = APIRoute.get_route_handler(self)

        async def handler(request: Request) -> Response:
            token: str | None = getattr(request.app.state, "scrape_token", None)
            if token_matches(request.headers.get("authorization"), token):
                request.state.principal = SCRAPER
                return await plain(request)
            return await guarded(request)

        return handler


router = APIRouter(tags=["metrics"], route_class=ScrapeRoute)


@router.get("/metrics", response_class=Response)
def scrape(request: Request, _: Annotated[Principal, Depends(OPERATOR)]) -> Response:
    """Prometheus text format: counters of this host's Sluice processes, summed, and the
    cluster's tasks, pauses and rates (docs/operations.md lists every metric)."""
    collectors = getattr(request.app.state, "metrics_collectors", ())
    return Response(metrics.exposition(collectors), media_type=metrics.CONTENT_TYPE)
