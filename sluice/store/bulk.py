"""Many-row writes without per-row overhead: inserts by ``COPY ... FROM STDIN`` on
PostgreSQL and one ``executemany`` on SQLite; any statement over many rows as one
``executemany`` compiled once (:func:`execute_many`).

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

``Connection.execute(statement, rows)`` sends one ``executemany`` too, but before it
SQLAlchemy builds, per call, the statement's cache key, and per row, a dictionary of every
parameter with each value through its type's bind processor. For the outcome writer (the
busiest thread of an unthrottled engine: a guarded UPDATE and an event INSERT per outcome)
that cost more than SQLite's own work. :func:`execute_many` compiles a statement once per
dialect, keeps the order of its parameters and the bind processor of each, and hands the
driver plain tuples (dictionaries, for a driver with named parameters) through
``Connection.exec_driver_sql``: the connection's events, transaction and error translation
stay as they are, and each value stored is the one SQLAlchemy would store
(``tests/integration/test_execute_many.py`` compares both ways on both databases).
SQLAlchemy has no public switch for this: its compiled cache skips the compile, not the
per-row work.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, islice, repeat
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import JSON, Connection, Table, insert, text
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from sluice import errors

_UNSET = object()
"""No value yet (:func:`execute_many`'s conversion of repeated values)."""


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
        # The sequence is looked up once (a materialized CTE): in the select list the cast
        # from its name ran once per row, 2.1 µs of the server's time per id.
        drawn = conn.execute(
            text(
                f"WITH s AS MATERIALIZED (SELECT {sequence} AS seq) "
                "SELECT nextval(s.seq) FROM s, generate_series(1, :count)"
            ),
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
    insert_column_parts(conn, table, [columns])


def insert_column_parts(
    conn: Connection, table: Table, parts: Iterable[Mapping[str, list[Any]]]
) -> None:
    """Insert the rows of every part, each given column by column as
    :func:`insert_columns` takes them (every part with the same columns), in one
    statement of the caller's transaction.

    ``parts`` is read lazily: on PostgreSQL each part is converted and sent while the
    server is still inserting and indexing the parts before it, so a caller that builds a
    large batch a part at a time (``repository.create_many``) does its Python work beside
    the server's instead of before it.
    """
    remaining = iter(parts)
    first = next(remaining, None)
    if first is None:
        return
    second = next(remaining, None)
    names = list(first)
    if second is None and _row_count(first) <= 1:
        if first and _row_count(first) == 1:
            # One row: a plain insert has the least overhead (and keeps single creates fast).
            conn.execute(insert(table), [{name: values[0] for name, values in first.items()}])
        return
    every = chain([first], [] if second is None else [second], remaining)
    rows = chain.from_iterable(_converted_rows(conn, table, names, part) for part in every)
    if conn.dialect.name == "postgresql":
        _copy_rows(conn, table, names, rows)
    else:
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            list(rows),
        )


def _row_count(columns: Mapping[str, list[Any]]) -> int:
    return len(next(iter(columns.values()), []))


def _converted_rows(
    conn: Connection, table: Table, names: list[str], columns: Mapping[str, list[Any]]
) -> Iterator[tuple[Any, ...]]:
    """The rows of ``columns`` as tuples of ``names``' values, each through its column's
    bind processor (on PostgreSQL then as the text ``COPY`` reads for a value the same in
    every row, and JSON as one ``json.dumps``)."""
    count = _row_count(columns)
    if sorted(columns) != sorted(names):
        raise errors.InvalidValue(f"columns {sorted(columns)} given where {names} were")
    dialect = conn.dialect
    postgres = dialect.name == "postgresql"
    converted: list[Iterable[Any]] = []
    for name in names:
        values = columns[name]
        if len(values) != count:
            raise errors.InvalidValue(f"column {name}: {len(values)} values for {count} rows")
        process = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        is_json = isinstance(table.c[name].type, JSON)
        first = values[0] if values else None
        if _in_every_row(values, first, is_json=is_json):
            value = first if first is None or process is None else process(first)
            converted.append(repeat(_copy_text(conn, value) if postgres else value))
        elif postgres and is_json:
            # The text COPY reads: one json.dumps, not psycopg's Jsonb wrapper and dumper.
            dumps = getattr(dialect, "_json_serializer", None) or json.dumps
            converted.append([None if value is None else dumps(value) for value in values])
        elif process is None:
            converted.append(values)
        else:
            converted.append([None if value is None else process(value) for value in values])
    return islice(zip(*converted, strict=False), count)


def _in_every_row(values: list[Any], first: Any, *, is_json: bool) -> bool:
    """Whether every row holds ``first``, so it is converted once. Python's ``==`` is not
    enough for JSON: ``True == 1 == 1.0``, which a provider reads apart, so JSON values
    must be the very same object (a batch's payloads equal but not identical are each
    converted, as they are when they differ)."""
    if values.count(first) != len(values):
        return False
    return not is_json or all(value is first for value in values)


def _copy_text(conn: Connection, value: Any) -> Any:
    """``value`` as the text psycopg's COPY would write for it (None stays None): a column
    holding one value in every row is adapted once, not once per row."""
    from psycopg.adapt import PyFormat, Transformer

    if value is None:
        return None
    transformer = Transformer(conn.connection.driver_connection)
    dumped = transformer.get_dumper(value, PyFormat.TEXT).dump(value)
    return None if dumped is None else bytes(dumped).decode()


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


@dataclass(frozen=True)
class _Prepared:
    sql: str
    names: tuple[str, ...]
    """Each parameter's name, in the order a positional driver takes them."""
    keys: tuple[str, ...]
    """Each parameter's name as the SQL spells it (a driver with named parameters)."""
    values_of: Callable[[Mapping[str, Any]], list[Any]]
    """A row's values in that order, before the bind processors."""
    processed: tuple[tuple[int, Callable[[Any], Any]], ...]
    """(position, bind processor) of each parameter whose type converts its value."""
    fixed: Mapping[str, Any]
    """Values the statement itself sets (``.values(claimed_by=None)``)."""
    positional: bool


@functools.lru_cache(maxsize=256)
def _prepare(
    statement: ClauseElement, dialect: Dialect, columns: tuple[str, ...] | None
) -> _Prepared:
    # Compiled as Connection.execute compiles for many rows: an INSERT compiled for one
    # asks PostgreSQL for each new primary key (RETURNING), which nobody reads here.
    compiled = cast(
        SQLCompiler,
        statement.compile(
            dialect=dialect,
            column_keys=None if columns is None else list(columns),
            for_executemany=True,
        ),
    )
    if compiled.insert_prefetch or compiled.update_prefetch:
        # SQLAlchemy computes these per row (a column's Python-side default or onupdate);
        # their binds hold None, which would be written in their place.
        computed = [c.name for c in (*compiled.insert_prefetch, *compiled.update_prefetch)]
        raise errors.InvalidValue(
            f"execute_many cannot fill in the Python-side default of {', '.join(computed)}"
        )
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise errors.InvalidValue("execute_many cannot run a statement with an IN list")
    binds = compiled.binds
    names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(binds)
    getter = itemgetter(*names)
    processors = [binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]
    return _Prepared(
        sql=compiled.string,
        names=names,
        keys=tuple(compiled.escaped_bind_names.get(name, name) for name in names),
        values_of=(lambda row: [getter(row)]) if len(names) == 1 else (lambda row: [*getter(row)]),
        processed=tuple((i, p) for i, p in enumerate(processors) if p is not None),
        fixed={
            name: bind.value
            for name, bind in binds.items()
            if not bind.required and bind.callable is None and name in names
        },
        positional=bool(compiled.positional),
    )


def execute_many(
    conn: Connection,
    statement: ClauseElement,
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: tuple[str, ...] | None = None,
) -> int:
    """Run ``statement`` once per row (each row names every parameter the statement leaves
    open; a statement with an ``IN`` list parameter or a column default computed in
    Python is refused) as one ``executemany``; the row count the driver
    reports (summed over the rows where ``dialect.supports_sane_multi_rowcount``).

    ``statement`` must be built once and reused (compilations are cached per statement
    object): a module-level constant or an ``lru_cache``'d builder. A plain
    ``insert(table)`` names the ``columns`` each row gives (as ``Connection.execute`` takes
    them from the first row).
    """
    if not rows:
        return 0
    prepared = _prepare(statement, conn.dialect, columns)
    fixed, values_of, processed = prepared.fixed, prepared.values_of, prepared.processed
    params: list[Any] = []
    # A value repeated from the row before (the same object: a batch's ``now``) is
    # converted once; bind processors are pure functions of their value.
    last: list[tuple[Any, Any]] = [(_UNSET, None)] * len(processed)
    for row in rows:
        values = values_of({**fixed, **row} if fixed else row)
        for index, (position, processor) in enumerate(processed):
            value = values[position]
            seen, converted = last[index]
            if value is not seen:
                converted = processor(value)
                last[index] = (value, converted)
            values[position] = converted
        params.append(
            tuple(values) if prepared.positional else dict(zip(prepared.keys, values, strict=True))
        )
    result = conn.exec_driver_sql(prepared.sql, params)
    return int(result.rowcount)
