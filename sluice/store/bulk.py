"""Many-row inserts without per-row overhead: one JSON document on PostgreSQL, executemany
on SQLite.

SQLAlchemy's ``INSERT ... RETURNING`` for many rows runs one statement per row on SQLite
(it cannot promise RETURNING order there) and makes psycopg parse a huge statement on
PostgreSQL; a 10,000-task bulk call spent most of its time there. Instead the store
reserves the ids first (:func:`reserve_ids`) and writes rows whose ids are known.

On SQLite values go through the columns' own bind processors (UTC timestamps, JSON
payloads), so what lands in the database is exactly what a Core insert would have written;
PostgreSQL converts the JSON document's values to the column types itself.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BindParameter, Connection, Table, bindparam, insert, text

from sluice import errors


def reserve_ids(conn: Connection, table: Table, count: int, *, above: int = 0) -> list[int]:
    """``count`` new ids for ``table``, ascending, greater than ``above`` and than every id
    in use, that no other writer will be given.

    ``above`` is the highest explicit id the caller is about to insert: automatic ids, now
    and later, must stay clear of it. PostgreSQL moves the sequence past it (never
    backwards: uncommitted creates elsewhere may hold numbers above ``MAX(id)``, which
    this transaction cannot see) and draws from the sequence in one statement. SQLite
    continues from ``MAX(id)``, which is safe because Sluice opens every SQLite
    transaction with ``BEGIN IMMEDIATE`` (see ``db.make_engine``): no other writer runs
    until commit.
    """
    if conn.dialect.name == "postgresql":
        sequence = f"CAST(pg_get_serial_sequence('{table.name}', 'id') AS regclass)"
        if above > 0:
            conn.execute(
                text(
                    f"SELECT setval(seq, GREATEST((SELECT MAX(id) FROM {table.name}), "
                    f":above, pg_sequence_last_value(seq), 1)) FROM (SELECT {sequence} AS seq) s"
                ),
                {"above": above},
            )
        if count <= 0:
            return []
        drawn = conn.execute(
            text(f"SELECT nextval({sequence}) FROM generate_series(1, :count)"),
            {"count": count},
        ).scalars()
        return sorted(drawn)
    if count <= 0:
        return []
    last = conn.execute(text(f"SELECT COALESCE(MAX(id), 0) FROM {table.name}")).scalar_one()
    start = max(int(last), above) + 1
    return list(range(start, start + count))


def insert_rows(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (dicts with the same keys, in the caller's transaction) into ``table``.

    Columns holding one value in every row (timestamps, counters, most NULLs) are sent
    once, not once per row.
    """
    if len(rows) <= 1:
        # One row: a plain insert has the least overhead (and keeps single creates fast).
        if rows:
            conn.execute(insert(table), [dict(rows[0])])
        return
    constant: dict[str, Any] = {}
    varying: list[str] = []
    for name in rows[0]:
        values = list(map(operator.itemgetter(name), rows))
        if values.count(values[0]) == len(values):
            constant[name] = values[0]
        else:
            varying.append(name)
    if not varying:  # identical rows: still one row each
        varying, constant = list(constant), {}
    if conn.dialect.name == "postgresql":
        _insert_from_json(conn, table, varying, constant, rows)
    else:
        _insert_many(conn, table, varying, constant, rows)


def _insert_from_json(
    conn: Connection,
    table: Table,
    varying: list[str],
    constant: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """One statement: the varying columns of every row as one JSON array of arrays, the rest
    bound once. Encoding the batch with one ``json.dumps`` and letting PostgreSQL parse it
    costs far less than adapting each value of each row on the Python side."""
    dialect = conn.dialect

    def sql_type(name: str) -> str:
        return str(table.c[name].type.dialect_impl(dialect).compile(dialect))

    def element(position: int, name: str) -> str:
        if isinstance(table.c[name].type, JSON):
            # '->' keeps the JSON value; a JSON null means SQL NULL, as on insert.
            return f"NULLIF(CAST(r->{position} AS jsonb), 'null'::jsonb)"
        return f"CAST(r->>{position} AS {sql_type(name)})"

    values_of = _tuple_getter(varying)
    document = json.dumps(
        [values_of(row) for row in rows], default=_json_value, separators=(",", ":")
    )
    selected = [element(position, name) for position, name in enumerate(varying)]
    params: list[BindParameter[Any]] = [bindparam("rows", document)]
    for position, (name, value) in enumerate(constant.items()):
        selected.append(f"CAST(:c{position} AS {sql_type(name)})")
        params.append(bindparam(f"c{position}", value, type_=table.c[name].type))
    statement = text(
        f"INSERT INTO {table.name} ({', '.join([*varying, *constant])}) "
        f"SELECT {', '.join(selected)} FROM json_array_elements(CAST(:rows AS json)) AS r"
    ).bindparams(*params)
    conn.execute(statement)


def _tuple_getter(columns: list[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if len(columns) == 1:  # itemgetter of one key gives the value, not a tuple
        only = columns[0]
        return lambda row: (row[only],)
    return operator.itemgetter(*columns)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise errors.InvalidValue("naive datetime given to the store; use timezone-aware UTC")
        return value.isoformat()
    raise errors.InvalidValue(f"cannot store {type(value).__name__} in a JSON row")


def _insert_many(
    conn: Connection,
    table: Table,
    varying: list[str],
    constant: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
) -> None:
    """``executemany`` of tuples: the varying values, then the constants converted once."""
    dialect = conn.dialect

    def processor(name: str) -> Callable[[Any], Any] | None:
        return table.c[name].type.dialect_impl(dialect).bind_processor(dialect)

    constants = tuple(
        value if value is None or (process := processor(name)) is None else process(value)
        for name, value in constant.items()
    )
    processors = [
        (position, process)
        for position, name in enumerate(varying)
        if (process := processor(name)) is not None
    ]
    values_of = _tuple_getter(varying)
    encoded: list[tuple[Any, ...]] = []
    for row in rows:
        values = values_of(row)
        if processors:
            converted = list(values)
            for position, process in processors:
                if converted[position] is not None:
                    converted[position] = process(converted[position])
            values = tuple(converted)
        encoded.append(values + constants)
    columns = [*varying, *constant]
    conn.exec_driver_sql(
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        encoded,
    )
