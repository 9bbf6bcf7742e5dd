"""Creating tasks from submissions: checks, then the store; the API and the CLI share it."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sluice import errors
from sluice.catalog import Catalog
from sluice.domain import MAX_ID, PRIORITY_MAX, PRIORITY_MIN, Actor, Submission, Task, TaskStatus
from sluice.store.repository import COPY_PART, TaskRepository

MAX_BULK = 10_000
MAX_NAME_CHARS = 64  # provider and kind names
MAX_KEY_CHARS = 255  # idempotency keys
MAX_NESTING = 64
"""How deep objects and lists may nest in a payload: far beyond any DSP's request, and far
below the ~255 levels past which pydantic cannot serialize a value (every answer showing
such a task was a 500) or the ~1,000 of Python's recursion limit."""
_TEXT_LIMITS = (
    ("provider", MAX_NAME_CHARS),
    ("kind", MAX_NAME_CHARS),
    ("idempotency_key", MAX_KEY_CHARS),
)


@dataclass(frozen=True)
class ItemError:
    """What is wrong with one field of one submitted item."""

    index: int | None
    field: str
    message: str


class SubmissionInvalid(errors.SluiceError):
    """One or more items of a submission are invalid; nothing was written."""

    def __init__(self, problems: Sequence[ItemError], places: Sequence[str] = ()) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = list(problems)
        self.places = list(places)
        """Where each item came from (``tasks.csv:57``), by index, when it came from a file."""

    def where(self, problem: ItemError) -> str:
        """The place of ``problem``'s item in its file, else ``item N`` or ``request``."""
        if problem.index is None:
            return "request"
        if 0 <= problem.index < len(self.places):
            return self.places[problem.index]
        return f"item {problem.index}"


def request_hash(body: Any) -> str:
    """A stable digest of a request body, to tell an idempotent replay from a reuse."""
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


_SURROGATE = re.compile("[\ud800-\udfff]")
"""A UTF-16 surrogate left alone by a JSON ``\\ud800`` escape: it cannot be encoded as
UTF-8, so no database, hash or provider request can take it."""


def unstorable(value: Any) -> str | None:
    """Why ``value`` (nested JSON: keys, text, numbers) cannot be stored, or None if it can.

    PostgreSQL cannot store NUL in text or JSONB, an unpaired surrogate is not UTF-8 (a
    single create with one was a 500), and NaN/Infinity are not JSON (Python's parser
    lets them through). Objects and lists nested more than :data:`MAX_NESTING` levels deep
    could be stored but never shown again (a 500 on every answer holding them). Refusing
    these on every backend keeps SQLite and PostgreSQL deployments accepting exactly the
    same submissions.
    """
    # Level by level, so the depth costs one comparison per object or list.
    level = [value]
    depth = 0  # how many objects and lists enclose the items of ``level``
    while level:
        nested: list[Any] = []
        for item in level:
            if isinstance(item, str):
                if "\x00" in item:
                    return "must not contain NUL characters (\\u0000)"
                if not item.isascii() and _SURROGATE.search(item):
                    return "must not contain unpaired surrogates (\\ud800-\\udfff): not UTF-8 text"
            elif isinstance(item, float):
                if not math.isfinite(item):
                    return "numbers must be finite (NaN and Infinity are not JSON)"
            elif isinstance(item, dict | list | tuple):
                if depth == MAX_NESTING:
                    return (
                        f"objects and lists may nest at most {MAX_NESTING} levels deep, "
                        f"got {nesting(value)}"
                    )
                if isinstance(item, dict):
                    nested.extend(item.keys())
                    nested.extend(item.values())
                else:
                    nested.extend(item)
        level = nested
        depth += 1
    return None


def nesting(value: Any) -> int:
    """How many objects and lists nest in ``value`` at its deepest (a flat object: 1)."""
    depth = 0
    level = [value]
    while containers := [item for item in level if isinstance(item, dict | list | tuple)]:
        depth += 1
        level = [
            child
            for container in containers
            for child in (container.values() if isinstance(container, dict) else container)
        ]
    return depth


def value_problems(item: Submission, index: int | None) -> list[ItemError]:
    """The value rules every way in shares (API, ``sluice submit``, the demo).

    Text and numbers must be storable (:func:`unstorable`), names and keys not empty and
    not too long, ids within 1..2**53. The API's request models check types only and leave
    these rules to this one function, so the CLI refuses exactly what the API refuses.
    """
    problems: list[ItemError] = []
    for field, limit in _TEXT_LIMITS:
        text = getattr(item, field)
        if text is None:
            continue
        problem = unstorable(text)
        if problem is None and not 1 <= len(text) <= limit:
            problem = f"must be 1 to {limit} characters long, got {len(text)}"
        if problem is not None:
            problems.append(ItemError(index, field, problem))
    problem = unstorable(item.payload)
    if problem is not None:
        problems.append(ItemError(index, "payload", problem))
    if not PRIORITY_MIN <= item.priority <= PRIORITY_MAX:
        problems.append(
            ItemError(
                index,
                "priority",
                f"must be between {PRIORITY_MIN} and {PRIORITY_MAX}, got {item.priority}",
            )
        )
    for field in ("id", "parent_id"):
        number = getattr(item, field)
        if number is not None and not 1 <= number <= MAX_ID:
            problems.append(ItemError(index, field, f"must be between 1 and 2**53, got {number}"))
    return problems


def check(
    item: Submission, index: int | None, catalog: Catalog
) -> tuple[Submission | None, list[ItemError]]:
    """Check one submission's values, then against the catalog and the two task modes.

    Returns the submission with its provider and status filled in, or its problems.
    """
    problems = value_problems(item, index)
    if problems:
        return None, problems
    provider = item.provider or catalog.default_provider
    unknown = catalog.check(provider, item.kind)
    if unknown:
        problems.append(ItemError(index, unknown[0], unknown[1]))
    if item.kind is None:
        if item.payload is not None:
            problems.append(ItemError(index, "kind", "a payload needs a kind (e.g. campaign)"))
        if item.parent_id is not None or item.parent_index is not None:
            problems.append(
                ItemError(index, "parent_id", "a tracked task (no kind) cannot have a parent")
            )
    else:
        if item.payload is None:
            problems.append(
                ItemError(index, "payload", f"a {item.kind} task needs a payload object")
            )
        if item.status not in (None, TaskStatus.NOT_STARTED):
            problems.append(
                ItemError(index, "status", "a submission starts as 'Not Started'; omit status")
            )
    if item.parent_index is not None and (index is None or not 0 <= item.parent_index < index):
        problems.append(
            ItemError(index, "parent_index", "parent_index must name an earlier item of this batch")
        )
    if item.parent_id is not None and item.parent_index is not None:
        problems.append(ItemError(index, "parent_id", "give parent_id or parent_index, not both"))
    if problems:
        return None, problems
    # Every field spelled out: a bulk call checks 10,000 items, and dataclasses.replace
    # costs about twice this.
    return Submission(
        provider=provider,
        kind=item.kind,
        payload=item.payload,
        id=item.id,
        parent_id=item.parent_id,
        parent_index=item.parent_index,
        status=item.status or TaskStatus.NOT_STARTED,
        idempotency_key=item.idempotency_key,
        request_hash=item.request_hash,
        tenant=item.tenant,
        priority=item.priority,
        fairness_key=catalog.fairness_key(provider, item.tenant, item.payload),
    ), []


def create_task(
    repo: TaskRepository,
    catalog: Catalog,
    item: Submission,
    body_hash: Callable[[], str] | None = None,
    actor: Actor | None = None,
) -> tuple[Task, bool]:
    """Create one task; returns (task, created) where created is False on an idempotent replay.
    With ``actor`` (the API's caller), the create is audited.

    ``body_hash`` (for an idempotency key) is called once the values are checked: a body
    that cannot be stored may not be hashable either (nested too deep to serialize).
    """
    spec, problems = check(item, None, catalog)
    if spec is None:
        raise SubmissionInvalid(problems)
    if body_hash is not None:
        spec = replace(spec, request_hash=body_hash())
    return repo.create(spec, actor)


@dataclass(frozen=True)
class Batch:
    """A batch's task ids in input order; ``replayed`` when the batch had been created
    before (every item's idempotency key held by the task the item describes)."""

    ids: list[int]
    replayed: bool = False


def create_tasks(repo: TaskRepository, catalog: Catalog, items: Sequence[Submission]) -> list[int]:
    """Create all ``items`` atomically (see :func:`create_batch`); their ids in input order."""
    return create_batch(repo, catalog, items).ids


def create_batch(
    repo: TaskRepository,
    catalog: Catalog,
    items: Sequence[Submission],
    actor: Actor | None = None,
) -> Batch:
    """Create all ``items`` atomically, or raise with every item's problems. With ``actor``
    (the API's caller), the batch is audited.

    A batch sent again, each item with the idempotency key it had, answers with the tasks
    the first one created (a client that lost the first answer learns their ids); a batch
    of which only some keys are used, or used by other tasks, is a conflict naming them.
    """
    if len(items) > MAX_BULK:
        raise SubmissionInvalid(
            [ItemError(None, "tasks", f"at most {MAX_BULK} tasks per call, got {len(items)}")]
        )
    if not items:
        raise SubmissionInvalid([ItemError(None, "tasks", "no tasks given")])
    checks = _BatchChecks(items, catalog)
    if any(item.id is not None or item.parent_id is not None for item in items):
        # Ids and parents are read before the rows go in: every item is checked first.
        checks.check_to(len(items))
        if checks.problems:
            raise SubmissionInvalid(checks.problems)
        write = functools.partial(repo.create_many, checks.specs, actor)
    else:
        # Each part is checked while the store writes the one before (on PostgreSQL the
        # server indexes it meanwhile); a part with a problem ends the parts, and the
        # store, given fewer than announced, writes nothing.
        write = functools.partial(repo.create_in_parts, len(items), checks.parts(COPY_PART), actor)
    try:
        return Batch(write())
    except Exception as exc:
        # Every item's problems come first, as when they are all checked before writing:
        # whatever stopped the write (a conflict, the store, or a driver error the COPY
        # raises as it is).
        checks.check_to(len(items))
        if checks.problems:
            raise SubmissionInvalid(checks.problems) from None
        if not isinstance(exc, errors.WriteDeadlocked):
            return _after_conflict(repo, checks, exc)
    # PostgreSQL ended the write to break a deadlock with a concurrent batch (the same
    # idempotency keys in opposite orders), which went on. Written again, every item
    # checked, the batch answers what it would have answered second: created, replayed or
    # a conflict. A second deadlock (a third batch) is answered 503, try again.
    try:
        return Batch(repo.create_many(checks.specs, actor))
    except errors.TaskConflict as exc:
        return _after_conflict(repo, checks, exc)


def _after_conflict(repo: TaskRepository, checks: _BatchChecks, exc: Exception) -> Batch:
    """The batch the earlier call created when ``exc`` is a conflict over this very batch's
    idempotency keys (a replay); else ``exc`` raised again."""
    if isinstance(exc, errors.TaskConflict) and checks.seen_keys:
        ids = _replayed(repo, checks.specs)
        if ids is not None:
            return Batch(ids, replayed=True)
    raise exc


class _BatchChecks:
    """A batch's items checked in order, each on its own (:func:`check`) and against the
    items before it (an id or idempotency key given twice)."""

    def __init__(self, items: Sequence[Submission], catalog: Catalog) -> None:
        self.items = items
        self.catalog = catalog
        self.checked = 0
        self.specs: list[Submission] = []  # the items that passed, filled in
        self.problems: list[ItemError] = []
        self.seen_ids: set[int] = set()
        self.seen_keys: dict[str, int] = {}  # each idempotency key, and the first item holding it

    def check_to(self, stop: int) -> None:
        """Check the items not checked yet before ``stop``."""
        seen_ids, seen_keys = self.seen_ids, self.seen_keys
        for index in range(self.checked, stop):
            item = self.items[index]
            spec, item_problems = check(item, index, self.catalog)
            if item.id is not None:
                if item.id in seen_ids:
                    item_problems.append(
                        ItemError(index, "id", f"id {item.id} appears twice in this batch")
                    )
                seen_ids.add(item.id)
            key = item.idempotency_key
            if key is not None:
                first = seen_keys.setdefault(key, index)
                if first != index:
                    item_problems.append(
                        ItemError(
                            index,
                            "idempotency_key",
                            f"idempotency_key {key!r} is also item {first}'s; "
                            "each item needs its own",
                        )
                    )
            self.problems.extend(item_problems)
            if spec is not None:
                self.specs.append(spec)
        self.checked = max(self.checked, stop)

    def parts(self, size: int) -> Iterator[list[Submission]]:
        """The checked items ``size`` at a time, until every item is checked or one has a
        problem (then the items after it are left for :meth:`check_to`)."""
        while self.checked < len(self.items) and not self.problems:
            start = len(self.specs)
            self.check_to(min(self.checked + size, len(self.items)))
            if self.problems:
                return
            yield self.specs[start:]


MAX_NAMED = 10
"""How many conflicting items a 409 names."""


def _replayed(repo: TaskRepository, specs: Sequence[Submission]) -> list[int] | None:
    """The ids of the tasks an earlier call created for this very batch, or
    :class:`errors.TaskConflict` naming the items whose keys other tasks hold; None when
    no key is held (the conflict was another's: an explicit id that exists)."""
    keys = [(s.tenant, s.idempotency_key) for s in specs if s.idempotency_key is not None]
    found = repo.by_idempotency_keys(keys)
    if not found:
        return None
    held = [found.get((s.tenant, s.idempotency_key or "")) for s in specs]
    ids = [task.id if task is not None else 0 for task in held]
    items = list(enumerate(zip(held, specs, strict=True)))
    differing = [
        (index, task, spec)
        for index, (task, spec) in items
        if task is not None and not _describes(task, spec, ids)
    ]
    new = [index for index, (task, _) in items if task is None]
    if not differing and not new:
        return ids
    if differing:
        raise errors.TaskConflict(
            "idempotency_key already used by a task that is not what the item describes "
            f"(another provider, kind, payload, parent, priority or id): {_named(differing)}"
        )
    earlier = [(index, task, spec) for index, (task, spec) in items if task is not None]
    raise errors.TaskConflict(
        f"part of this batch was created before ({_named(earlier)}) and item(s) "
        f"{_listed(new)} were not: a batch is created all or nothing, so send the new items "
        "in a batch of their own"
    )


def _named(items: Sequence[tuple[int, Task | None, Submission]]) -> str:
    """Items with their keys and the tasks holding them, the first :data:`MAX_NAMED`."""
    return _listed(
        [
            f"item {index} ({spec.idempotency_key!r}: task {task.id if task else '-'})"
            for index, task, spec in items
        ]
    )


def _listed(things: Sequence[object]) -> str:
    more = f" and {len(things) - MAX_NAMED} more" if len(things) > MAX_NAMED else ""
    return ", ".join(str(thing) for thing in things[:MAX_NAMED]) + more


def _describes(task: Task, spec: Submission, ids: Sequence[int]) -> bool:
    """Whether ``task`` is what ``spec`` (an item of the batch whose ids are ``ids``) would
    have created."""
    parent = ids[spec.parent_index] if spec.parent_index is not None else spec.parent_id
    return (
        task.provider == spec.provider
        and task.kind == spec.kind
        and task.payload == spec.payload
        and task.parent_id == parent
        and task.priority == spec.priority
        and (spec.id is None or task.id == spec.id)
    )
