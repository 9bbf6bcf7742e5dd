"""Pruning: final tasks older than a retention period leave the database, a family at a time.

A task goes with its whole family: a root task (no parent) and every descendant are deleted
together, with their events, and only when *every* one of them is final (phase ``done``),
was last changed before the cutoff and holds no live claim. So a task that is not final is
never deleted, nor is any ancestor of one, and no child is ever left without its parent.

Each batch is one transaction of at most about ``batch`` tasks (a family larger than that
goes alone), so the table is never locked for long: the engine's claims and outcomes touch
only unfinished tasks, which pruning never locks. On PostgreSQL the rows are locked
(``FOR UPDATE``, in id order) and the conditions checked again on the locked rows, so a
retry, a cancel or a new child that lands meanwhile keeps its family; on SQLite the
transaction starts with ``BEGIN IMMEDIATE`` (``db.make_engine``), so nothing changes under it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, or_, select

from sluice.domain import FINAL_STATUSES, Actor, Phase
from sluice.store import audit
from sluice.store.rows import Unindexed, chunks, events, tasks

log = logging.getLogger("sluice.retention")

DEFAULT_BATCH = 5000
RETENTION_ACTOR = Actor("system:retention")
"""Who prunes when ``SLUICE_RETENTION_PERIOD`` is set (``sluice db prune`` is ``cli``)."""
_FINAL = sorted(s.value for s in FINAL_STATUSES)


@dataclass(frozen=True)
class Pruned:
    """What one prune removed."""

    tasks: int = 0
    events: int = 0
    batches: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(
            self.tasks + other.tasks, self.events + other.events, self.batches + other.batches
        )


def _prunable(cutoff: datetime, now: datetime) -> Any:
    """The condition every task of a pruned family meets. The status and the phase are out
    of SQLite's index choice (``+column``): the read of roots goes in id order and stops at
    its batch, and without statistics SQLite took ``ix_tasks_due`` for ``phase = 'done'``
    and sorted every final task by id for each batch
    (tests/integration/test_sqlite_index_plans.py); the other reads find their tasks by id
    or by parent."""
    return and_(
        Unindexed.status.in_(_FINAL),
        Unindexed.phase == Phase.DONE.value,
        tasks.c.updated_at < cutoff,
        or_(tasks.c.claimed_until.is_(None), tasks.c.claimed_until < now),
    )


def prune_batch(
    conn: Connection,
    cutoff: datetime,
    now: datetime,
    *,
    after_id: int = 0,
    batch: int = DEFAULT_BATCH,
    actor: Actor = RETENTION_ACTOR,
) -> tuple[Pruned, int | None]:
    """Delete one batch of families whose roots have ids above ``after_id``, in the
    caller's transaction, with a ``tasks.prune`` audit record by ``actor`` when it deleted
    anything (target: the first and last root deleted).

    Returns what was deleted and the id to continue after (None: no root left to look at).
    """
    postgres = conn.dialect.name == "postgresql"
    roots = list(
        conn.execute(
            select(tasks.c.id)
            .where(tasks.c.parent_id.is_(None), tasks.c.id > after_id, _prunable(cutoff, now))
            .order_by(tasks.c.id)
            .limit(batch)
        ).scalars()
    )
    if not roots:
        return Pruned(), None
    families = _families(conn, roots, cutoff, now)
    # Whole families, in root order, up to about `batch` tasks (at least one family).
    chosen: dict[int, list[list[int]]] = {}
    size = 0
    resume = roots[-1]
    for root in roots:
        levels = families.get(root)
        if levels is None:  # some member is not prunable: the family stays
            continue
        count = sum(len(level) for level in levels)
        if chosen and size + count > batch:
            resume = max(chosen)  # the rest of this page is looked at next batch
            break
        chosen[root] = levels
        size += count
    if postgres and chosen:
        chosen = _lock_and_recheck(conn, chosen, cutoff, now)
    members = [task_id for levels in chosen.values() for level in levels for task_id in level]
    removed_events = 0
    for chunk in chunks(members):
        removed_events += int(
            conn.execute(delete(events).where(events.c.task_id.in_(chunk))).rowcount or 0
        )
    removed = 0
    depth = max((len(levels) for levels in chosen.values()), default=0)
    for level in reversed(range(depth)):  # children before their parents
        ids = [t for levels in chosen.values() if level < len(levels) for t in levels[level]]
        for chunk in chunks(ids):
            removed += int(conn.execute(delete(tasks).where(tasks.c.id.in_(chunk))).rowcount or 0)
    if removed:
        audit.record(
            conn,
            actor,
            "tasks.prune",
            f"tasks:{min(chosen)}-{max(chosen)}",
            tenant=None,
            at=now,
            detail={"tasks": removed, "events": removed_events, "cutoff": cutoff.isoformat()},
        )
    return Pruned(removed, removed_events, 1), resume


def _families(
    conn: Connection, roots: Sequence[int], cutoff: datetime, now: datetime
) -> dict[int, list[list[int]]]:
    """Each root whose every descendant is prunable: its members, level by level."""
    root_of = {root: root for root in roots}
    levels: dict[int, list[list[int]]] = {root: [[root]] for root in roots}
    spoiled: set[int] = set()
    frontier = list(roots)
    depth = 0
    while frontier:
        depth += 1
        found: list[int] = []
        for chunk in chunks(frontier):
            rows = conn.execute(
                select(tasks.c.id, tasks.c.parent_id, _prunable(cutoff, now).label("ok")).where(
                    tasks.c.parent_id.in_(chunk)
                )
            ).all()
            for task_id, parent_id, ok in rows:
                root = root_of[parent_id]
                if root in spoiled:
                    continue
                if not ok:
                    spoiled.add(root)
                    continue
                root_of[task_id] = root
                family = levels[root]
                if len(family) <= depth:
                    family.append([])
                family[depth].append(task_id)
                found.append(task_id)
        frontier = [t for t in found if root_of[t] not in spoiled]
    return {root: family for root, family in levels.items() if root not in spoiled}


def _lock_and_recheck(
    conn: Connection, chosen: dict[int, list[list[int]]], cutoff: datetime, now: datetime
) -> dict[int, list[list[int]]]:
    """Lock the chosen families' rows and keep the families that are still whole and
    prunable, with no child outside them (a child inserted meanwhile)."""
    root_of = {t: root for root, levels in chosen.items() for level in levels for t in level}
    ids = sorted(root_of)
    locked: set[int] = set()
    for chunk in chunks(ids):
        locked.update(
            conn.execute(
                select(tasks.c.id)
                .where(tasks.c.id.in_(chunk), _prunable(cutoff, now))
                .order_by(tasks.c.id)
                .with_for_update()
            ).scalars()
        )
    spoiled = {root_of[t] for t in ids if t not in locked}
    for chunk in chunks(ids):
        for child, parent in conn.execute(
            select(tasks.c.id, tasks.c.parent_id).where(tasks.c.parent_id.in_(chunk))
        ):
            if child not in root_of:
                spoiled.add(root_of[parent])
    return {root: levels for root, levels in chosen.items() if root not in spoiled}


def prune(
    engine: Engine,
    cutoff: datetime,
    now: datetime,
    *,
    batch: int = DEFAULT_BATCH,
    stop: threading.Event | None = None,
    pause_s: float = 0.0,
    actor: Actor = RETENTION_ACTOR,
) -> Pruned:
    """Delete every prunable family, one transaction per batch; returns the totals.

    Each batch that deletes anything is audited as ``actor`` (:func:`prune_batch`).
    ``pause_s`` between batches leaves room for other writers (SQLite
    has one at a time); ``stop`` ends the run between batches.
    """
    total = Pruned()
    after: int | None = 0
    while after is not None:
        if stop is not None and stop.is_set():
            break
        with engine.begin() as conn:
            done, after = prune_batch(conn, cutoff, now, after_id=after, batch=batch, actor=actor)
        total += done
        if done.tasks:
            log.info("retention.batch", extra={"tasks": done.tasks, "events": done.events})
        if pause_s > 0 and after is not None and stop is not None:
            stop.wait(pause_s)
    return total
