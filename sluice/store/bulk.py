"""Many-row inserts without per-row overhead: ``COPY ... FROM STDIN`` on PostgreSQL, one
``executemany`` on SQLite.

SQLAlchemy's ``INSERT ... RETURNING`` for many rows runs one statement per row on SQLite
(it cannot promise RETURNING order there) and makes psycopg parse a huge statement on
PostgreSQL; a 10,000-task bulk call spent most of its time there. Instead the store
reserves the ids first (:func:`reserve_ids`) and writes rows whose ids are known, given
column by column (:func:`insert_columns`).

Values go through the columns' own bind processors on both backends (UTC timestamps, JSON
payloads), so what lands in the database is what a Core insert would have written; a
column holding one value in every row is converted once. On PostgreSQL psycopg's ``COPY``
(its C row formatter, in the caller's transaction) then adapts them as it adapts bound
parameters (docs/scaling.md has the ingest figures before and after it replaced one
``INSERT ... SELECT`` from a JSON document of every row).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

from sqlalchemy import JSON, Connection, Table, insert, text

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
    """Insert ``rows`` (dicts with the same keys, in the caller's transaction) into ``table``."""
    if rows:
        insert_columns(conn, table, {name: [row[name] for row in rows] for name in rows[0]})


def insert_columns(conn: Connection, table: Table, columns: Mapping[str, list[Any]]) -> None:
    """Insert rows given column by column (every list as long as the others), in the
    caller's transaction.

    Columns holding one value in every row (timestamps, counters, most NULLs) are converted
    once, not once per row; the rest go through their columns' bind processors value by
    value. PostgreSQL receives the rows by ``COPY ... FROM STDIN``, SQLite by one
    ``executemany``.
    """
    count = len(next(iter(columns.values()), []))
    if count == 0:
        return
    if count == 1:
        # One row: a plain insert has the least overhead (and keeps single creates fast).
        conn.execute(insert(table), [{name: values[0] for name, values in columns.items()}])
        return
    constant: dict[str, Any] = {}
    varying: dict[str, list[Any]] = {}
    for name, values in columns.items():
        if len(values) != count:
            raise errors.InvalidValue(f"column {name}: {len(values)} values for {count} rows")
        first = values[0]
        if values.count(first) == count:
            constant[name] = first
        else:
            varying[name] = values
    dialect = conn.dialect

    def processor(name: str) -> Callable[[Any], Any] | None:
        return table.c[name].type.dialect_impl(dialect).bind_processor(dialect)

    constants = [
        value if value is None or (process := processor(name)) is None else process(value)
        for name, value in constant.items()
    ]
    postgres = dialect.name == "postgresql"
    if postgres:
        constants = _copy_text(conn, constants)
    converted: list[Iterable[Any]] = []
    for name, values in varying.items():
        process = processor(name)
        if postgres and isinstance(table.c[name].type, JSON):
            # The text COPY reads: one json.dumps, not psycopg's Jsonb wrapper and dumper.
            dumps = getattr(dialect, "_json_serializer", None) or json.dumps
            converted.append([None if value is None else dumps(value) for value in values])
        elif process is None:
            converted.append(values)
        else:
            converted.append([None if value is None else process(value) for value in values])
    names = [*varying, *constant]
    rows: Iterable[tuple[Any, ...]]
    if converted:
        rows = zip(*converted, *map(repeat, constants), strict=False)
    else:  # identical rows: still one row each
        rows = repeat(tuple(constants), count)
    if postgres:
        _copy_rows(conn, table, names, rows)
    else:
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            list(rows),
        )


def _copy_text(conn: Connection, values: list[Any]) -> list[Any]:
    """``values`` as the text psycopg's COPY would write for them (None stays None): a
    column holding one value in every row is adapted once, not once per row."""
    from psycopg.adapt import PyFormat, Transformer

    transformer = Transformer(conn.connection.driver_connection)
    texts: list[Any] = []
    for value in values:
        dumped = None if value is None else transformer.get_dumper(value, PyFormat.TEXT).dump(value)
        texts.append(None if dumped is None else bytes(dumped).decode())
    return texts


def _copy_rows(
    conn: Connection, table: Table, names: list[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """``COPY table (names) FROM STDIN`` of ``rows`` (values the columns' bind processors
    made: psycopg adapts them as it would bound parameters) in ``conn``'s transaction.

    A unique or foreign key violation comes back as the driver's ``IntegrityError`` (not
    wrapped by SQLAlchemy, which the copy bypasses): ``repository.create_many`` maps both.
    """
    driver = conn.connection.driver_connection
    statement = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
    with driver.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
        write_row = copy.write_row
        for row in rows:
            write_row(row)
