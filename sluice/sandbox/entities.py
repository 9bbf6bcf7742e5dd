"""The object store: the entity hierarchy, lazy asynchronous processing, client refs.

An object's status is a function of the time since it was created (no background task):
the initial word until its accept delay has passed, then the processing word until its
process delay has also passed, then the approved word, or the rejected word when
validation found errors. Delays are drawn per object from a seeded generator.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sluice.sandbox.config import FixtureSpec, SandboxConfig
from sluice.sandbox.errors import NotFound, ParentNotReady
from sluice.sandbox.profiles import StatusWords
from sluice.sandbox.validation import FieldError, check_shape, semantic_errors

SEEDED_ADVERTISERS = ("adv-1", "adv-2", "adv-3")
"""Advertisers that exist, approved, at start and after every reset."""


@dataclass(frozen=True)
class Collection:
    """One kind of object and its place in the hierarchy."""

    name: str
    prefix: str
    noun: str
    parent_field: str | None = None
    parent_collection: str | None = None


COLLECTIONS: dict[str, Collection] = {
    c.name: c
    for c in (
        Collection("advertisers", "adv", "advertiser"),
        Collection("campaigns", "cmp", "campaign", "advertiser_id", "advertisers"),
        Collection("ad_groups", "adg", "ad group", "campaign_id", "campaigns"),
        Collection("ads", "ad", "ad", "ad_group_id", "ad_groups"),
        Collection("audiences", "aud", "audience", "advertiser_id", "advertisers"),
    )
}


@dataclass
class StoredObject:
    """An object as the DSP holds it."""

    id: str
    collection: str
    fields: dict[str, Any]
    created_at: float
    accepted_at: float
    """End of the initial state."""
    done_at: float
    """End of processing: approved or rejected from here on."""
    advertiser_id: str | None
    errors: tuple[FieldError, ...] = ()

    @property
    def client_ref(self) -> str | None:
        """The client's own reference, if it sent one."""
        ref = self.fields.get("client_ref")
        return ref if isinstance(ref, str) else None

    def status(self, now: float, words: StatusWords) -> str:
        """The status word at ``now``."""
        if now < self.accepted_at:
            return words.initial
        if now < self.done_at:
            return words.processing
        return words.rejected if self.errors else words.approved

    def error_message(self, now: float) -> str | None:
        """The rejection reason, once processing has found it."""
        if not self.errors or now < self.done_at:
            return None
        first = self.errors[0].message
        extra = len(self.errors) - 1
        return first if not extra else f"{first} (and {extra} more error{'s' * (extra > 1)})"

    def status_json(self, now: float, words: StatusWords) -> dict[str, Any]:
        """The ``{"id", "status", "error_message"}`` answer."""
        return {
            "id": self.id,
            "status": self.status(now, words),
            "error_message": self.error_message(now),
        }

    def full_json(self, now: float, words: StatusWords) -> dict[str, Any]:
        """Every field, with status and errors as they stand at ``now``."""
        done = now >= self.done_at
        return {
            **self.fields,
            **self.status_json(now, words),
            "errors": [e.as_json() for e in self.errors] if done else [],
            "client_ref": self.client_ref,
        }


@dataclass
class EntityStore:
    """Every object, the client-ref index, idempotency keys and scripted fixtures."""

    config: SandboxConfig
    objects: dict[str, StoredObject] = field(default_factory=dict)
    by_client_ref: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    idempotent_answers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _counters: dict[str, int] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng.seed(f"{self.config.seed}:delays")
        for advertiser_id in SEEDED_ADVERTISERS:
            name = f"Advertiser {advertiser_id.removeprefix('adv-')}"
            self._counters["advertisers"] = int(advertiser_id.removeprefix("adv-"))
            self.objects[advertiser_id] = StoredObject(
                advertiser_id, "advertisers", {"name": name}, 0.0, 0.0, 0.0, advertiser_id
            )

    @property
    def words(self) -> StatusWords:
        """The status vocabulary of the configured profile."""
        return self.config.profile_spec.words

    @property
    def fixtures(self) -> Mapping[str, FixtureSpec]:
        """Scripted external ids."""
        return self.config.fixtures

    def collection(self, name: str) -> Collection:
        """The collection called ``name``; NotFound otherwise."""
        try:
            return COLLECTIONS[name]
        except KeyError:
            known = ", ".join(COLLECTIONS)
            raise NotFound(f"unknown collection {name!r}; known: {known}") from None

    def advertiser_of(self, collection: str, body: Any) -> str | None:
        """The advertiser a create body names, directly or through its parent chain."""
        spec = COLLECTIONS.get(collection)
        if spec is None or spec.parent_field is None or not isinstance(body, dict):
            return None
        parent = self.objects.get(str(body.get(spec.parent_field)))
        return parent.advertiser_id if parent is not None else None

    def advertiser_of_object(self, collection: str, object_id: str) -> str | None:
        """The advertiser an existing object of ``collection`` belongs to (None: no such object)."""
        stored = self.objects.get(object_id)
        if stored is None or stored.collection != collection:
            return None
        return stored.advertiser_id

    def create(self, collection: str, body: Any, now: float) -> dict[str, Any]:
        """Accept a create and answer ``{"id", "status", "client_ref"}``.

        Raises:
            InvalidRequest: the body is not a readable create.
            NotFound: unknown collection or parent.
            ParentNotReady: the parent is still processing or was rejected.
        """
        spec = self.collection(collection)
        fields = dict(check_shape(body, spec.parent_field, audience=spec.name == "audiences"))
        advertiser_id = None
        if spec.parent_field is not None:
            parent = self._ready_parent(spec, fields[spec.parent_field], now)
            advertiser_id = parent.advertiser_id
        self._counters[collection] = number = self._counters.get(collection, 0) + 1
        object_id = f"{spec.prefix}-{number}"
        accepted_at = now + self._rng.uniform(*self.config.accept_delay_s)
        done_at = accepted_at + self._rng.uniform(*self.config.process_delay_s)
        if spec.name == "advertisers":
            advertiser_id = object_id
        stored = StoredObject(
            object_id,
            collection,
            fields,
            now,
            accepted_at,
            done_at,
            advertiser_id,
            tuple(semantic_errors(fields)),
        )
        self.objects[object_id] = stored
        if stored.client_ref is not None:
            self.by_client_ref.setdefault((collection, stored.client_ref), []).append(object_id)
        return {
            "id": object_id,
            "status": stored.status(now, self.words),
            "client_ref": stored.client_ref,
        }

    def get(self, collection: str, object_id: str) -> StoredObject:
        """The object ``object_id`` of ``collection``; NotFound otherwise."""
        spec = self.collection(collection)
        stored = self.objects.get(object_id)
        if stored is None or stored.collection != collection:
            raise NotFound(f"{spec.noun} {object_id} not found")
        return stored

    def find_by_client_ref(self, collection: str, client_ref: str) -> list[StoredObject]:
        """Every object of ``collection`` created with ``client_ref``, oldest first."""
        self.collection(collection)
        return [self.objects[i] for i in self.by_client_ref.get((collection, client_ref), [])]

    def all_of(self, collection: str) -> list[StoredObject]:
        """Every object of ``collection``, oldest first."""
        self.collection(collection)
        return [o for o in self.objects.values() if o.collection == collection]

    def statuses(self, ids: Iterable[str], now: float) -> list[dict[str, Any]]:
        """Batch status: objects and fixtures in the order asked; unknown ids omitted."""
        answers = []
        for object_id in ids:
            stored = self.objects.get(object_id)
            if stored is not None:
                answers.append(stored.status_json(now, self.words))
                continue
            fixture = self.fixtures.get(object_id)
            if fixture is not None:
                answers.append(
                    {
                        "id": object_id,
                        "status": fixture.status,
                        "error_message": fixture.error_message,
                    }
                )
        return answers

    def duplicates(self) -> list[dict[str, Any]]:
        """Client refs used by more than one object of a collection."""
        return [
            {"collection": collection, "client_ref": ref, "ids": list(ids)}
            for (collection, ref), ids in self.by_client_ref.items()
            if len(ids) > 1
        ]

    def status_counts(self, now: float) -> dict[str, dict[str, int]]:
        """How many objects of each collection stand at each status word."""
        counts: dict[str, dict[str, int]] = {}
        for stored in self.objects.values():
            by_status = counts.setdefault(stored.collection, {})
            word = stored.status(now, self.words)
            by_status[word] = by_status.get(word, 0) + 1
        return counts

    def _ready_parent(self, spec: Collection, parent_id: str, now: float) -> StoredObject:
        assert spec.parent_collection is not None
        parent_spec = COLLECTIONS[spec.parent_collection]
        parent = self.objects.get(parent_id)
        if parent is None or parent.collection != parent_spec.name:
            raise NotFound(f"{parent_spec.noun} {parent_id} not found")
        status = parent.status(now, self.words)
        if status != self.words.approved:
            raise ParentNotReady(
                f"{parent_spec.noun} {parent_id} is {status!r}, not {self.words.approved!r}; "
                "retry once it is approved"
            )
        return parent
