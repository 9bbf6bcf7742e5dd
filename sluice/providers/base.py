"""What the engine needs of a provider: the task view, the decisions, the protocol.

A provider turns each HTTP answer into exactly one decision value; the engine acts on
decisions in one place and never looks at HTTP itself::

    SubmitDecision = Accepted | RateLimited | Transient | Failed
    PollDecision   = StatusReport | RateLimited | Transient
    LookupDecision = Found | NotFound | RateLimited | Transient
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sluice.domain import Access, Operation, TaskStatus
from sluice.units import format_duration

if TYPE_CHECKING:
    import httpx

    from sluice.providers.limits import ConfiguredLimit
    from sluice.ratelimit.base import InFlight
    from sluice.ratelimit.quota import Quota, QuotaSpec
    from sluice.ratelimit.rate import LimitSpec


@dataclass(frozen=True)
class TaskRef:
    """The part of a task an adapter needs."""

    task_id: int
    kind: str | None
    payload: Mapping[str, Any]
    external_id: str | None
    client_ref: str
    parent_external_id: str | None
    tenant: str | None = None
    """Whose account it goes out on (a tenant with its own credentials, else the provider's)."""


@dataclass(frozen=True)
class Accepted:
    """The provider took the create; ``completed`` when it answers synchronously."""

    external_id: str
    completed: bool


@dataclass(frozen=True)
class StatusReport:
    """The provider's status for one task, mapped to Sluice's vocabulary."""

    status: TaskStatus
    message: str | None
    raw_status: str


@dataclass(frozen=True)
class RateLimited:
    """Pause the provider's keys; never counts as a failed attempt."""

    retry_after_s: float | None
    detail: str
    said_when: bool = True
    """Whether the provider said when to come back (False: a configured default pause)."""
    ambiguous: bool = False
    """A create refused with a server error (a 5xx listed in ``statuses``, TTD's 503): the
    object may have been committed behind it, so it is looked up before it is sent again."""
    unreachable: bool = False
    """Not the provider's word: no connection could be made, and the pause is Sluice's own
    back-off (:mod:`sluice.providers.outage`)."""


@dataclass(frozen=True)
class LimitReading:
    """What one answer said of a limit's state; any part may be unknown.

    ``reset_s`` is the seconds from the answer until ``remaining`` grows again (the window
    resets); ``used_fraction`` is a share of the budget already used (Meta's percentages
    over 100), for providers that give no counts.
    """

    source: str
    limit: float | None = None
    window_s: float | None = None
    remaining: float | None = None
    reset_s: float | None = None
    used_fraction: float | None = None


@dataclass(frozen=True)
class LimitObservation:
    """One answer as the adaptive limiter sees it: the keys it was sent under, what it said."""

    provider: str
    limits: tuple[LimitSpec, ...]
    readings: tuple[LimitReading, ...]
    refused: bool
    """A rate-limit signal (429, or a configured error code)."""
    said_when: bool
    """For a refusal: whether it said when to come back."""
    at: float
    """POSIX seconds."""
    stretch: float = 1.0
    """The provider's ``rate_margin`` (1 + margin): ``limits`` are written over windows
    this much longer than the provider's own, the windows its readings name."""


class LimitObserver(Protocol):
    """Told of every answer that carried limit fields or was a refusal (never raises)."""

    def observe(self, observation: LimitObservation) -> None: ...


@dataclass(frozen=True)
class Transient:
    """Retry later; ``ambiguous`` when a create may have happened (look up before resending)."""

    message: str
    ambiguous: bool = False
    retry_after_s: float | None = None
    gone: bool = False
    """A status read the provider answered without the object: a 404 or 410 for its id, or a
    batch answer that leaves it out. Giving up on it ends the task ``object_gone``."""


@dataclass(frozen=True)
class Failed:
    """Permanent refusal (validation): the task ends in Error with ``message``."""

    message: str


@dataclass(frozen=True)
class Found:
    """A lookup found the object a lost answer created."""

    external_id: str


@dataclass(frozen=True)
class NotFound:
    """A lookup found nothing: creating again is safe."""


SubmitDecision = Accepted | RateLimited | Transient | Failed
PollDecision = StatusReport | RateLimited | Transient
LookupDecision = Found | NotFound | RateLimited | Transient


@runtime_checkable
class Provider(Protocol):
    """A third party Sluice submits to; the config-driven one is ``HttpProvider``."""

    name: str
    kinds: frozenset[str]
    poll_interval_s: float
    max_attempts: int
    deadline_s: float | None
    retry_base_s: float
    retry_max_s: float
    timeout_s: float
    judges_spacing: bool
    """Whether the provider may judge spacing (a leaky bucket to the millisecond) rather than
    only count requests in windows: held grants then get a short send window."""
    redact_fields: tuple[str, ...]
    """Dotted payload paths sent to the provider but masked wherever Sluice shows them."""
    fairness_field: str | None
    """The dotted payload path whose value is a task's fairness key (None: its tenant)."""
    fairness_weights: Mapping[str, float]
    """Weights of fairness keys in the fair share of this provider's budget (default 1)."""

    def limits_for(
        self,
        access: Access,
        payload: Mapping[str, Any] | None,
        *,
        operation: Operation | None = None,
        kinds: Sequence[str | None] = (),
    ) -> list[LimitSpec]:
        """Every limit one request must fit in; keys start with the provider name.

        With ``operation`` and its tasks' ``kinds``, each limit charges its configured cost.
        """
        ...

    def quotas_for(
        self,
        operation: Operation,
        payload: Mapping[str, Any] | None,
        kinds: Sequence[str | None] = (),
    ) -> list[QuotaSpec]:
        """Every quota one request draws on, with its cost (none unless configured)."""
        ...

    def quotas(self) -> list[tuple[str, Quota, str, str | None]]:
        """Every configured quota: key (``*`` for a ``per`` value), quota, scope, per."""
        ...

    def fair_cost(self, kind: str | None, operation: Operation) -> float:
        """What one task of ``kind`` doing ``operation`` uses of the provider's shared
        budget, the unit fair shares count in (1 unless a cost says otherwise)."""
        ...

    def in_flight(self) -> InFlight | None:
        """The cap on concurrent requests, if any."""
        ...

    def configured_limits(self) -> list[ConfiguredLimit]:
        """Every configured limit (its key, scope, rate), for the console and the controls."""
        ...

    def pause_key(self) -> str:
        """The key to pause on a rate-limit signal; it covers every key of the provider."""
        ...

    def is_synchronous(self, kind: str | None) -> bool:
        """Whether a successful submit of ``kind`` is already Completed."""
        ...

    def can_track(self) -> bool:
        """Whether tasks known only by id can be polled (a batch poll exists)."""
        ...

    def supports_lookup(self, kind: str | None) -> bool:
        """Whether objects of ``kind`` can be found by client reference."""
        ...

    def resubmits_when_unknown(self, kind: str | None) -> bool:
        """Whether a create of ``kind`` whose outcome is unknown (and that has no lookup)
        is sent again, at the risk of a duplicate, rather than ended in Error."""
        ...

    def submit(self, client: httpx.Client, task: TaskRef) -> SubmitDecision:
        """Create the task's object."""
        ...

    def lookup(self, client: httpx.Client, task: TaskRef) -> LookupDecision:
        """Find the object a lost create answer may have made."""
        ...

    def poll_groups(self, tasks: Sequence[TaskRef]) -> list[list[TaskRef]]:
        """Split ``tasks`` into groups answered by one request each."""
        ...

    def poll(self, client: httpx.Client, group: Sequence[TaskRef]) -> dict[int, PollDecision]:
        """Status of every task of ``group``, by task id."""
        ...


def deadline_message(provider: str, deadline_s: float) -> str:
    """The Error message of a task that had no final status before the deadline."""
    return f"no final status from {provider} after {format_duration(deadline_s)}"
