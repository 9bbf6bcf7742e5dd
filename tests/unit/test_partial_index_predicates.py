"""A fair claim's reads repeat the predicates of the partial indexes they walk, word for
word: SQLite uses a partial index only when the query's WHERE holds its predicate with the
same literals (``=`` for one phase, ``IN`` for several); a bound value, or ``IN`` of one,
would not match, and the read would fall back to another index and a sort."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import ColumnElement
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from sluice.domain import Phase
from sluice.store.fairshare import in_poll_stream, in_ready_stream
from sluice.store.rows import in_active_phase, in_phases, tasks
from sluice.store.tables import ACTIVE_PHASES


def _index_predicate(name: str, dialect: str) -> str:
    (index,) = [index for index in tasks.indexes if index.name == name]
    return str(index.dialect_options[dialect]["where"])


@pytest.mark.parametrize(
    "dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "postgresql"]
)
@pytest.mark.parametrize(
    ("predicate", "index"),
    [(in_ready_stream, "ix_tasks_fair_order"), (in_poll_stream, "ix_tasks_due_polls")],
)
def test_each_stream_repeats_its_index_predicate(
    predicate: Callable[[], ColumnElement[bool]], index: str, dialect: Dialect
) -> None:
    written = str(predicate().compile(dialect=dialect))

    assert written == "tasks." + _index_predicate(index, dialect.name)


def test_one_phase_is_an_equality_and_several_a_list() -> None:
    one = str(in_phases([Phase.READY.value]).compile(dialect=sqlite.dialect()))
    several = str(in_active_phase().compile(dialect=sqlite.dialect()))

    assert one == "tasks.phase = 'ready'"
    assert several == "tasks.phase IN (" + ", ".join(f"'{p}'" for p in ACTIVE_PHASES) + ")"
