"""Pauses and pins in the database, written by several workers and operators at once.

A pause only ever extends (a provider's Retry-After is never cut short by a shorter one
recorded beside it), an operator's pause never shortens a running one, and two writers of
a new key never collide. The rules are checked on both backends; the races, on PostgreSQL
under READ COMMITTED, with the other writer's transaction left uncommitted while this one
runs (SQLite runs writers one at a time).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, delete, select, update

from sluice.store import db
from sluice.store.pauses import MANUAL, Pause, PauseStore, pauses
from sluice.store.pins import Pin, PinStore, pins
from tests.integration.conftest import while_uncommitted

START = datetime(2026, 12, 4, 12, tzinfo=UTC)
KEY = "sandbox:write"


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def stored_until(engine: Engine, key: str = KEY) -> datetime:
    with engine.connect() as conn:
        until: datetime = conn.execute(
            select(pauses.c.until).where(pauses.c.key == key)
        ).scalar_one()
    return until


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    made = db.make_engine(postgres_url)
    db.ensure_schema(made)
    yield made
    made.dispose()


# -- the rules, on both backends ---------------------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.integers(1, 600), st.sampled_from(["rate_limited", "server_busy"])),
        min_size=1,
        max_size=6,
    )
)
def test_a_pause_only_extends_and_the_longest_describes_it(
    engine: Engine, records: list[tuple[int, str]]
) -> None:
    store = PauseStore(engine)
    with engine.begin() as conn:
        conn.execute(delete(pauses))
    for seconds, signal in records:
        store.record(KEY, at(seconds), signal=signal, reason=f"{signal} {seconds}")
    longest = max(seconds for seconds, _ in records)
    first_signal = next(signal for seconds, signal in records if seconds == longest)
    (found,) = store.details(START).values()
    assert found.until == at(longest)
    assert found.reason == f"{first_signal} {longest}"


@pytest.mark.parametrize(
    ("running_s", "asked_s", "ends_s"),
    [
        (None, 60, 60),  # no pause yet
        (-5, 60, 60),  # one that has ended is replaced, whatever its end
        (-5, 1, 1),
        (30, 60, 60),  # a running one is extended
        (600, 60, 600),  # and never shortened
    ],
)
def test_an_operators_pause_ends_at_its_end_or_a_running_pauses(
    engine: Engine, running_s: int | None, asked_s: int, ends_s: int
) -> None:
    store = PauseStore(engine)
    if running_s is not None:
        store.record(KEY, at(running_s), signal="rate_limited", reason="429")
    with engine.begin() as conn:
        pause = store.set_manual(conn, KEY, at(asked_s), "maintenance", "key:ops", START)
    assert pause == Pause(KEY, at(ends_s), MANUAL, "maintenance", "key:ops", START)
    assert store.details(START)[KEY] == pause


def test_a_pin_is_replaced(engine: Engine) -> None:
    store = PinStore(engine)
    for rate in (40, 20):
        with engine.begin() as conn:
            store.put(conn, Pin("sandbox", rate, 1.0, f"to {rate}", "key:ops", START))
    assert [(p.key, p.rate_limit, p.reason) for p in store.all()] == [("sandbox", 20, "to 20")]


# -- the races, on PostgreSQL -------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize(("theirs_s", "ours_s"), [(10, 60), (60, 10)])
def test_of_two_workers_recording_a_new_pause_at_once_the_later_end_stands(
    pg_engine: Engine, theirs_s: int, ours_s: int
) -> None:
    """Both found no row; the one that inserted second used to do nothing, and its longer
    Retry-After was lost."""
    store = PauseStore(pg_engine)

    def theirs(conn: Connection) -> None:
        conn.execute(pauses.insert().values(key=KEY, until=at(theirs_s), signal="rate_limited"))

    got = while_uncommitted(
        pg_engine, theirs, lambda: store.record(KEY, at(ours_s), signal="rate_limited")
    )
    assert got == [None]
    assert stored_until(pg_engine) == at(max(theirs_s, ours_s))


@pytest.mark.postgres
def test_an_operators_pause_set_while_a_worker_extends_it_is_not_shortened(
    pg_engine: Engine,
) -> None:
    """The operator's read saw the pause before a worker's extension committed, and its
    write then put the earlier end back."""
    store = PauseStore(pg_engine)
    store.record(KEY, at(30), signal="rate_limited")

    def extend(conn: Connection) -> None:
        conn.execute(update(pauses).where(pauses.c.key == KEY).values(until=at(600)))

    def operator() -> Pause:
        with pg_engine.begin() as conn:
            return store.set_manual(conn, KEY, at(60), "maintenance", "key:ops", START)

    (pause,) = while_uncommitted(pg_engine, extend, operator)
    assert pause == Pause(KEY, at(600), MANUAL, "maintenance", "key:ops", START)
    assert stored_until(pg_engine) == at(600)


@pytest.mark.postgres
def test_two_operators_pausing_a_new_key_at_once_both_succeed(pg_engine: Engine) -> None:
    """Both found no row and both inserted: the second failed on the primary key."""
    store = PauseStore(pg_engine)

    def first(conn: Connection) -> None:
        store.set_manual(conn, KEY, at(60), "first", "key:a", START)

    def second() -> Pause:
        with pg_engine.begin() as conn:
            return store.set_manual(conn, KEY, at(120), "second", "key:b", START)

    (pause,) = while_uncommitted(pg_engine, first, second)
    assert pause == Pause(KEY, at(120), MANUAL, "second", "key:b", START)
    assert store.details(START)[KEY] == pause


@pytest.mark.postgres
def test_two_operators_pinning_a_new_key_at_once_both_succeed(pg_engine: Engine) -> None:
    store = PinStore(pg_engine)

    def first(conn: Connection) -> None:
        store.put(conn, Pin("sandbox", 40, 1.0, "first", "key:a", START))

    def second() -> None:
        with pg_engine.begin() as conn:
            store.put(conn, Pin("sandbox", 20, 1.0, "second", "key:b", START))

    assert while_uncommitted(pg_engine, first, second) == [None]
    with pg_engine.connect() as conn:
        assert conn.execute(select(pins.c.rate_limit, pins.c.actor)).all() == [(20, "key:b")]
