"""Query strings: a route takes only the names it declares.

FastAPI ignores a query parameter no route declares, so a typo answered as if it were not
there: ``GET /api/tasks?stauts=Error`` listed every task, with nothing to say the filter
was not applied. Each API route now refuses a name it does not take with 422 naming it and
the names it does take, in the same ``detail`` shape as any other invalid request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from sluice import errors

_taken: dict[int, frozenset[str]] = {}
"""Per route (by id: routes live as long as their app), the query names it takes."""


def _query_names(dependant: Dependant) -> frozenset[str]:
    """The query names of a route's parameters and of all its dependencies' (by alias)."""
    names: set[str] = set()
    pending = [dependant]
    while pending:
        current = pending.pop()
        names.update(field.alias for field in current.query_params)
        pending.extend(current.dependencies)
    return frozenset(names)


async def declared_query_only(request: Request) -> None:
    """Refuse a query parameter the matched route does not take (422, naming it)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    taken = _taken.get(id(route))
    if taken is None:
        taken = _taken[id(route)] = _query_names(route.dependant)
    unknown = sorted(set(request.query_params.keys()) - taken)
    if not unknown:
        return
    raise UnknownQuery(unknown, taken)


class UnknownQuery(errors.SluiceError):
    """Query parameters the matched route does not take (answered 422 by the app)."""

    def __init__(self, names: Sequence[str], taken: Iterable[str]) -> None:
        self.names = [name[:64] for name in names[:10]]
        self.takes = ", ".join(sorted(taken)) or "no query parameters"
        super().__init__(f"unknown query parameter(s) {', '.join(self.names)}")

    def detail(self) -> list[dict[str, Any]]:
        """The 422's ``detail``, one entry per name, shaped as FastAPI's own."""
        return [
            {
                "loc": ["query", name],
                "msg": f"unknown query parameter (this route takes: {self.takes})",
                "type": "extra_forbidden",
            }
            for name in self.names
        ]
