"""The SQL an engine sends while a block runs, for the tests that EXPLAIN the real statements."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event


class Captured:
    """The statements an engine sends while a block runs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.statements: list[tuple[str, Any]] = []

    def __enter__(self) -> Captured:
        event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if isinstance(params, list | tuple) and params and isinstance(params[0], dict):
            params = params[0]  # executemany: one row's parameters stand for all
        self.statements.append((statement, params))

    def touching_tasks(self, verb: str) -> list[tuple[str, Any]]:
        return [
            (s, p)
            for s, p in self.statements
            if s.lstrip().upper().startswith(verb) and "tasks" in s.split("WHERE")[0]
        ]
