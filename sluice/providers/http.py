"""The config-driven HTTP adapter: one ``[providers.NAME]`` table becomes a Provider.

Every request goes through :meth:`HttpProvider._call`, which adds the credentials of the
account it goes out on (the provider's or a tenant's, :mod:`credentials`),
translates httpx exceptions where they enter, and turns refusals into decisions
(rate-limit signals via :mod:`signals`, the rest via :mod:`answers`). The public
methods then read successful answers: the created id, statuses, lookup results.
A body that is not JSON, a missing field or an unknown status is a transient decision
for that task, logged with the raw value; nothing here raises on a provider's answer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from sluice import errors, masking, metrics
from sluice.clock import Clock, SystemClock
from sluice.domain import EXTERNAL_ID_MAX_CHARS, Access, Operation, TaskStatus, storable_text
from sluice.masking import Redactor
from sluice.providers import signals
from sluice.providers.answers import NOT_JSON, AnswerReader, json_body
from sluice.providers.auth import TokenUnavailable
from sluice.providers.base import (
    Accepted,
    Failed,
    Found,
    LimitObservation,
    LimitObserver,
    LookupDecision,
    NotFound,
    PollDecision,
    RateLimited,
    StatusReport,
    SubmitDecision,
    TaskRef,
    Transient,
)
from sluice.providers.client import ProviderClient
from sluice.providers.config import KindConfig, ProviderConfig
from sluice.providers.credentials import Accounts
from sluice.providers.limits import ConfiguredLimit, LimitRules
from sluice.providers.outage import Outage, says_unreachable
from sluice.providers.templating import (
    MISSING,
    MissingValue,
    RequestLine,
    get_path,
    scalar_at,
    with_path,
)
from sluice.ratelimit.base import InFlight, Limiter
from sluice.ratelimit.quota import Quota, QuotaSpec
from sluice.ratelimit.rate import LimitSpec
from sluice.units import format_duration

log = logging.getLogger(__name__)

_Refusal = TypeVar("_Refusal", bound=RateLimited | Transient | Failed)
_Decision = TypeVar("_Decision", bound=SubmitDecision | PollDecision | LookupDecision)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_ABSENT = frozenset({404, 410})
"""Answers to a read that say the provider has no such object: 404 Not Found, 410 Gone."""


@dataclass(frozen=True)
class _Answer:
    """A response the caller reads itself (2xx, or 404 on a lookup)."""

    response: httpx.Response
    body: Any


class HttpProvider:
    """A provider described entirely by configuration."""

    def __init__(
        self,
        name: str,
        config: ProviderConfig,
        *,
        clock: Clock | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.base_url = config.base_url
        self.poll_interval_s = config.interval_s
        self.max_attempts = config.max_attempts
        self.deadline_s = config.deadline
        self.retry_base_s = config.retry_base
        self.retry_max_s = config.retry_max
        self.timeout_s = config.timeout
        self.rate_margin = config.rate_margin
        self.judges_spacing = config.judges == "spacing"
        self.kinds = frozenset(config.kinds)
        self._clock: Clock = clock or SystemClock()
        self._outage = Outage(self._clock, config.retry_base, config.retry_max)
        # Also teaches masking.KNOWN, so the log formatter masks these secrets everywhere.
        self._redactor = Redactor(registry=masking.KNOWN)
        password = masking.url_password(config.base_url)
        if password:
            self._redactor.add(password)
        self.redact_fields = config.redact_fields
        self.fairness_field = config.fairness_field
        self.fairness_weights: Mapping[str, float] = config.fairness_weights
        self._limits = LimitRules(name, config)
        self._fair_costs: dict[tuple[str | None, Operation], float] = {}
        self._observer: LimitObserver | None = None
        self._warned: set[str] = set()
        self._answers = AnswerReader(
            config.errors, self._redactor, config.rate_limit_signal.max_pause
        )
        self._accounts = Accounts(
            name,
            config,
            self._clock,
            self._redactor,
            token_limits=self._limits.token_limits(),
            limiter=limiter,
        )

    # --- limits --------------------------------------------------------------------------

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
        return self._limits.limits_for(access, payload, operation=operation, kinds=kinds)

    def quotas_for(
        self,
        operation: Operation,
        payload: Mapping[str, Any] | None,
        kinds: Sequence[str | None] = (),
    ) -> list[QuotaSpec]:
        """Every quota one request draws on, with its cost."""
        return self._limits.quotas_for(operation, payload, kinds)

    def quotas(self) -> list[tuple[str, Quota, str, str | None]]:
        """Every configured quota: key (``*`` for a ``per`` value), quota, scope, per."""
        return self._limits.quotas()

    def fair_cost(self, kind: str | None, operation: Operation) -> float:
        """What one task of ``kind`` doing ``operation`` uses of the provider's shared
        budget: its operation's heaviest provider-wide cost. A batch poll is one request
        for up to ``batch_size`` tasks, so a polled task counts its share of a full batch.
        """
        known = self._fair_costs.get((kind, operation))
        if known is not None:
            return known
        cost = float(self._limits.shared_cost(operation, kind))
        if operation is Operation.POLL and self.config.poll is not None:
            cost /= self.config.poll.batch_size
        self._fair_costs[(kind, operation)] = cost
        return cost

    def configured_limits(self) -> list[ConfiguredLimit]:
        """Every configured limit (its key, scope, rate), for the console and the controls."""
        return self._limits.configured()

    def token_limits(self) -> list[LimitSpec]:
        """The limits a token request (``[auth]``) takes a grant on; empty: not limited."""
        return self._limits.token_limits()

    def watch_limits(self, observer: LimitObserver | None) -> None:
        """Tell ``observer`` of every refusal and every answer that states the limit
        (``adaptive``: docs/ratelimit.md)."""
        self._observer = observer

    def in_flight(self) -> InFlight | None:
        """The cap on concurrent requests (``max_in_flight``), if any."""
        if self.config.max_in_flight is None:
            return None
        ttl = self.config.in_flight_ttl or max(60.0, 3 * self.timeout_s)
        return InFlight(f"{self.name}:in_flight", self.config.max_in_flight, ttl)

    def pause_key(self) -> str:
        """The provider name: a pause on it covers every limit key of this provider."""
        return self.name

    # --- capabilities --------------------------------------------------------------------

    def is_synchronous(self, kind: str | None) -> bool:
        """True for a kind with no status request on a provider with no batch poll."""
        cfg = self.config.kinds.get(kind) if kind is not None else None
        return cfg is not None and cfg.status is None and self.config.poll is None

    def can_track(self) -> bool:
        """Whether tasks known only by id can be polled (a batch poll exists)."""
        return self.config.poll is not None

    def supports_lookup(self, kind: str | None) -> bool:
        """Whether ``kind`` has a lookup request."""
        cfg = self.config.kinds.get(kind) if kind is not None else None
        return cfg is not None and cfg.lookup is not None

    def resubmits_when_unknown(self, kind: str | None) -> bool:
        """``resubmit_when_unknown`` of the kind, else of the provider (default false)."""
        cfg = self.config.kinds.get(kind) if kind is not None else None
        if cfg is not None and cfg.resubmit_when_unknown is not None:
            return cfg.resubmit_when_unknown
        return self.config.resubmit_when_unknown

    def secrets_redacted(self, text: str) -> str:
        """``text`` with every secret of this provider masked (for callers' own logs)."""
        return self._redactor.redact(text)

    # --- submit --------------------------------------------------------------------------

    def sensitive_values(self, tasks: Iterable[TaskRef]) -> list[str]:
        """The values of the ``redact_fields`` of ``tasks``' payloads (sent, never shown)."""
        if not self.redact_fields:
            return []
        return [v for t in tasks for v in masking.values_at(t.payload, self.redact_fields)]

    def submit(self, client: httpx.Client, task: TaskRef) -> SubmitDecision:
        """Create the task's object and read its external id."""
        with masking.also_mask(self.sensitive_values([task])):
            return self._masked(self._submit(client, task))

    def _submit(self, client: httpx.Client, task: TaskRef) -> SubmitDecision:
        kind = self._kind(task)
        if kind is None:
            return Failed(self._unknown_kind(task.kind))
        headers = {}
        if self.config.idempotency_header:
            headers[self.config.idempotency_header] = task.client_ref
        answer = self._request(client, kind.submit, task, "submit", write=True, headers=headers)
        if not isinstance(answer, _Answer):
            return answer
        external_id = scalar_at(answer.body, kind.external_id_field)
        problem = _id_problem(external_id, kind.external_id_field, kind.submit)
        if problem is not None or external_id is None:
            return self._bad_answer(problem or "", answer, write=True, task_ids=[task.task_id])
        return Accepted(external_id, completed=self.is_synchronous(task.kind))

    def payload_for(self, task: TaskRef) -> dict[str, Any]:
        """The body sent on submit: payload + client_ref + parent external id, as configured."""
        payload: dict[str, Any] = dict(task.payload)
        kind = self._kind(task)
        if kind is None:
            return payload
        if kind.client_ref_field:
            payload = with_path(payload, kind.client_ref_field, task.client_ref)
        if kind.parent_field and task.parent_external_id is not None:
            payload = with_path(payload, kind.parent_field, task.parent_external_id)
        return payload

    # --- lookup --------------------------------------------------------------------------

    def lookup(self, client: httpx.Client, task: TaskRef) -> LookupDecision:
        """Find the object a lost create answer may have made, by client reference."""
        with masking.also_mask(self.sensitive_values([task])):
            return self._masked(self._lookup(client, task))

    def _lookup(self, client: httpx.Client, task: TaskRef) -> LookupDecision:
        kind = self._kind(task)
        if kind is None or kind.lookup is None:
            return Transient(f"{self.name} has no lookup for kind {task.kind!r}")
        answer = self._request(
            client, kind.lookup, task, "lookup", allow_absent=True, unless=kind.lookup_items_field
        )
        if not isinstance(answer, _Answer):
            return _as_read(answer)
        if answer.response.status_code in _ABSENT or answer.body is None:
            return NotFound()
        return self._read_lookup(answer, kind, task)

    def _read_lookup(self, answer: _Answer, kind: KindConfig, task: TaskRef) -> LookupDecision:
        found: Any = answer.body
        if kind.lookup_items_field:
            found = get_path(found, kind.lookup_items_field)
            if found is MISSING:
                return self._bad_answer(
                    f"no {kind.lookup_items_field} in the answer to {kind.lookup}",
                    answer,
                    write=False,
                    task_ids=[task.task_id],
                )
        if found is None:
            return NotFound()
        items = found if isinstance(found, list) else [found]
        verdicts = [
            (item, self._same_ref(item, kind, task.client_ref))
            for item in items
            if isinstance(item, dict)
        ]
        matches = [item for item, ours in verdicts if ours]
        if not matches and any(ours is None for _, ours in verdicts):
            # Listed objects that show no reference at all may be anyone's (a search that
            # ignored its filter): neither ours (another task's object would be adopted)
            # nor proof of absence (a duplicate).
            return self._bad_answer(
                f"objects in the answer to {kind.lookup} show no client reference "
                f"(at {kind.client_ref_field} or elsewhere): cannot tell whether one is ours",
                answer,
                write=False,
                task_ids=[task.task_id],
            )
        if not matches:
            return NotFound()
        # An object without a readable id is a misconfiguration, not an absence: answering
        # NotFound here would let the engine create a duplicate.
        id_field = kind.lookup_id_field or kind.external_id_field
        ids = [i for i in (scalar_at(item, id_field) for item in matches) if i is not None]
        problem = _id_problem(ids[0] if ids else None, id_field, kind.lookup)
        if problem is not None or not ids:
            return self._bad_answer(problem or "", answer, write=False, task_ids=[task.task_id])
        if len(ids) > 1:
            log.warning(
                "provider.lookup_duplicates",
                extra={"provider": self.name, "task_id": task.task_id, "external_ids": ids},
            )
        return Found(ids[0])

    @staticmethod
    def _same_ref(item: Mapping[str, Any], kind: KindConfig, client_ref: str) -> bool | None:
        """Whether a listed object is this task's: True when it carries our reference at
        ``client_ref_field``, or, lacking that field, anywhere (a lookup may list it under
        another path than the one it was sent at); False when it carries another; None
        when it shows no reference at all (it cannot be told).

        Some APIs ignore unknown query parameters and list everything: only objects that
        show our reference are trusted.
        """
        if not kind.client_ref_field:
            return True
        value = get_path(item, kind.client_ref_field)
        if value is not MISSING:
            return bool(value == client_ref)
        return True if _holds(item, client_ref) else None

    # --- poll ----------------------------------------------------------------------------

    def poll_groups(self, tasks: Sequence[TaskRef]) -> list[list[TaskRef]]:
        """Batches of at most ``batch_size`` distinct ids with a batch poll, else singletons.

        A batch never mixes accounts: each goes out with one tenant's credentials (or the
        provider's), and an account may only ask about its own objects.
        """
        if self.config.poll is None:
            return [[task] for task in tasks]
        by_account: dict[str, list[TaskRef]] = {}
        for task in tasks:
            by_account.setdefault(self._accounts.account(task.tenant), []).append(task)
        size = self.config.poll.batch_size
        groups: list[list[TaskRef]] = []
        for same_account in by_account.values():
            current: list[TaskRef] = []
            ids: set[str | None] = set()
            for task in same_account:
                if task.external_id not in ids and len(ids) >= size:
                    groups.append(current)
                    current, ids = [], set()
                current.append(task)
                ids.add(task.external_id)
            if current:
                groups.append(current)
        return groups

    def poll(self, client: httpx.Client, group: Sequence[TaskRef]) -> dict[int, PollDecision]:
        """Status of every task of ``group`` (one request), by task id."""
        with masking.also_mask(self.sensitive_values(group)):
            return {tid: self._masked(d) for tid, d in self._poll(client, group).items()}

    def _poll(self, client: httpx.Client, group: Sequence[TaskRef]) -> dict[int, PollDecision]:
        if self.config.poll is not None:
            return self._poll_batch(client, group)
        results: dict[int, PollDecision] = {}
        for extra in group[1:]:
            results[extra.task_id] = Transient(
                f"{self.name} has no batch poll: poll one task per request"
            )
        if group:
            results[group[0].task_id] = self._poll_one(client, group[0])
        return results

    def _poll_batch(
        self, client: httpx.Client, group: Sequence[TaskRef]
    ) -> dict[int, PollDecision]:
        poll = self.config.poll
        assert poll is not None
        results: dict[int, PollDecision] = {}
        ids = list(dict.fromkeys(t.external_id for t in group if t.external_id is not None))
        for task in group:
            if task.external_id is None:
                results[task.task_id] = Transient("task has no external id to poll")
        pending = [t for t in group if t.external_id is not None]
        if not pending:
            return results
        task_ids = [t.task_id for t in pending]
        answer = self._call(
            client,
            poll.request,
            poll.request.render({}, ids=ids),
            write=False,
            tenant=pending[0].tenant,
            task_ids=task_ids,
        )
        if not isinstance(answer, _Answer):
            return results | {t.task_id: _as_read(answer) for t in pending}
        problem = self._unreadable(
            answer, "status poll", write=False, task_ids=task_ids, unless=poll.items_field
        )
        items: Any = answer.body
        if problem is None and poll.items_field:
            items = get_path(items, poll.items_field)
        if problem is None and not isinstance(items, list):
            problem = self._bad_answer(
                "status answer is not a list", answer, write=False, task_ids=task_ids
            )
        if problem is not None:
            return results | {t.task_id: problem for t in pending}
        by_id: dict[str, Any] = {}
        for item in items:
            item_id = scalar_at(item, poll.id_field)
            if item_id is not None:
                by_id.setdefault(item_id, item)
        for task in pending:
            assert task.external_id is not None
            item = by_id.get(task.external_id)
            if item is None:
                results[task.task_id] = Transient(
                    f"{task.external_id} not in status answer", gone=True
                )
                continue
            results[task.task_id] = self._report(
                item, task, poll.status_field, poll.error_field, poll.status_map
            )
        return results

    def _poll_one(self, client: httpx.Client, task: TaskRef) -> PollDecision:
        kind = self._kind(task)
        if kind is None or kind.status is None:
            return Transient(f"{self.name} has no status request for kind {task.kind!r}")
        if task.external_id is None:
            return Transient("task has no external id to poll")
        answer = self._request(
            client, kind.status, task, "status poll", allow_absent=True, unless=kind.status_field
        )
        if not isinstance(answer, _Answer):
            return _as_read(answer)
        status = answer.response.status_code
        if status in _ABSENT:
            message = self._answers.message(answer.response, answer.body)
            gone = Transient(f"HTTP {status}: {message}", gone=True)
            return self._log_decision(gone, [task.task_id])
        return self._report(answer.body, task, kind.status_field, kind.error_field, kind.status_map)

    def _report(
        self,
        item: Any,
        task: TaskRef,
        status_field: str,
        error_field: str | None,
        status_map: Mapping[str, TaskStatus],
    ) -> PollDecision:
        raw_status = scalar_at(item, status_field)
        if raw_status is None:
            log.warning(
                "provider.status_missing",
                extra={
                    "provider": self.name,
                    "task_id": task.task_id,
                    "detail": self._redactor.snippet(repr(item)),
                },
            )
            return Transient(f"no {status_field} for {task.external_id} in status answer")
        status = status_map.get(raw_status)
        if status is None:
            log.warning(
                "provider.unknown_status",
                extra={
                    "provider": self.name,
                    "task_id": task.task_id,
                    "raw_status": self._redactor.redact(raw_status),
                },
            )
            known = ", ".join(repr(k) for k in status_map)
            return Transient(
                f"unknown status {self._redactor.redact(raw_status)!r} from {self.name} "
                f"for {task.external_id}; known: {known}"
            )
        message = get_path(item, error_field) if error_field else None
        text = message.strip() if isinstance(message, str) and message.strip() else None
        return StatusReport(
            status=status,
            message=self._redactor.redact(text) if text else None,
            raw_status=raw_status,
        )

    # --- one request ---------------------------------------------------------------------

    def _request(
        self,
        client: httpx.Client,
        line: RequestLine,
        task: TaskRef,
        what: str,
        *,
        write: bool = False,
        headers: Mapping[str, str] | None = None,
        allow_absent: bool = False,
        unless: str | None = None,
    ) -> _Answer | RateLimited | Transient | Failed:
        """Render ``line`` for ``task``, send it, and classify all but a readable answer.

        A placeholder the task cannot fill is Failed (reads turn it into a Transient with
        :func:`_as_read`). With ``allow_absent``, a 404 or 410 or a ``null`` body is handed back for
        the caller to read as "nothing there"; ``unless`` is as for :meth:`_unreadable`.
        """
        payload = self.payload_for(task)
        try:
            target = line.render(self._values(task), payload)
        except MissingValue as exc:
            return Failed(self._missing(exc, line))
        answer = self._call(
            client,
            line,
            target,
            write=write,
            tenant=task.tenant,
            task_ids=[task.task_id],
            json=payload if write and line.method in _BODY_METHODS else None,
            headers=headers,
            allow_absent=allow_absent,
        )
        if not isinstance(answer, _Answer):
            return answer
        if allow_absent and (answer.response.status_code in _ABSENT or answer.body is None):
            return answer
        problem = self._unreadable(
            answer, what, write=write, task_ids=[task.task_id], unless=unless
        )
        return answer if problem is None else problem

    def _call(
        self,
        client: httpx.Client,
        line: RequestLine,
        target: str,
        *,
        write: bool,
        tenant: str | None,
        task_ids: Sequence[int],
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        allow_absent: bool = False,
    ) -> _Answer | RateLimited | Transient | Failed:
        """Send one request on ``tenant``'s account and classify all but a readable success."""
        credentials = self._accounts.of(tenant)
        request_headers = {**credentials.headers, **(headers or {})}
        auth = credentials.auth
        auth_value: str | None = None
        if auth is not None:
            try:
                auth_name, auth_value = auth.header(client)
            except TokenUnavailable as exc:
                if exc.unreachable:
                    return self._log_decision(self._unreachable(str(exc)), task_ids)
                return self._log_decision(Transient(self._redactor.redact(str(exc))), task_ids)
            request_headers[auth_name] = auth_value
        try:
            response = _send(client, line.method, target, json=json, headers=request_headers)
        except errors.ProviderUnreachable as exc:
            return self._log_decision(
                self._unreachable(f"{self.name} unreachable: {exc}"), task_ids
            )
        except errors.ProviderConnectError as exc:
            return self._log_decision(
                Transient(f"{self.name} unreachable: {self._redactor.redact(str(exc))}"), task_ids
            )
        except errors.ProviderTimeout as exc:
            # A create with no answer in time may still be at work at the provider: the
            # lookup waits as long again, or it finds nothing and the create is sent twice.
            return self._log_decision(
                Transient(
                    self._redactor.redact(str(exc)),
                    ambiguous=write,
                    retry_after_s=self.timeout_s if write else None,
                ),
                task_ids,
            )
        except errors.ProviderError as exc:
            return self._log_decision(
                Transient(self._redactor.redact(str(exc)), ambiguous=write), task_ids
            )
        if self._outage.answered():
            log.warning("provider.reachable_again", extra={"provider": self.name})
        status = response.status_code
        if 200 <= status < 300 or (allow_absent and status in _ABSENT):
            if self._observer is not None:
                self._observe(response, None, write=write, payload=json)
            return _Answer(response, json_body(response))
        if status == 401 and auth is not None:
            auth.invalidate(auth_value)
        body = json_body(response)
        now = self._clock.time()
        limited = signals.detect(response, body, self.config.rate_limit_signal, now)
        if limited is not None:
            metrics.rate_limit_signal(
                self.name, signals.kind(response, body, self.config.rate_limit_signal)
            )
            if write and status >= 500:
                # A server error says nothing of whether the create was committed.
                limited = dataclasses.replace(limited, ambiguous=True)
            adaptive = self.config.adaptive
            if adaptive.enabled and not limited.said_when:
                # The learned rate drops instead; a short pause lets the window drain.
                pause = min(adaptive.pause, limited.retry_after_s or adaptive.pause)
                limited = dataclasses.replace(
                    limited,
                    retry_after_s=pause,
                    detail=f"{limited.detail.split('; pause')[0]}; pause "
                    f"{format_duration(pause)} (adaptive)",
                )
            if self._observer is not None:
                self._observe(response, limited, write=write, payload=json)
            return self._log_decision(limited, task_ids)
        if self._observer is not None:
            self._observe(response, None, write=write, payload=json)
        return self._log_decision(
            self._answers.refusal(response, body, write=write, now_s=now), task_ids
        )

    def _unreachable(self, message: str) -> RateLimited:
        """No connection could be made (to the provider or its token endpoint): every task
        would fail alike, so the provider pauses instead of spending each task's attempts
        (providers/outage.py)."""
        detail = self._redactor.redact(message)
        pause_s, began = self._outage.failed()
        if began:
            # Workers log at WARNING: the start and the end of a spell show there, once each.
            log.warning(
                "provider.unreachable_began", extra={"provider": self.name, "detail": detail}
            )
        return RateLimited(pause_s, detail, said_when=False, unreachable=True)

    def _observe(
        self,
        response: httpx.Response,
        limited: RateLimited | None,
        *,
        write: bool,
        payload: Any,
    ) -> None:
        """Tell the observer what this answer said of the limit (never raises)."""
        observer = self._observer
        if observer is None:
            return
        try:
            now = self._clock.time()
            readings = signals.read_limits(
                response.headers, self.config.rate_limit_signal, now, self._warn_once
            )
            if not readings and limited is None:
                return
            limits = self._limits.limits_for(
                "write" if write else "read", payload if isinstance(payload, Mapping) else None
            )
            observer.observe(
                LimitObservation(
                    provider=self.name,
                    limits=tuple(limits),
                    readings=tuple(readings),
                    refused=limited is not None,
                    said_when=limited.said_when if limited is not None else False,
                    at=now,
                    stretch=1.0 + (self.rate_margin or 0.0),
                )
            )
        except Exception:
            log.warning("provider.observe_failed", exc_info=True, extra={"provider": self.name})

    def _warn_once(self, header: str, reason: str) -> None:
        """One warning per provider and header for values that are ignored."""
        if header in self._warned:
            return
        self._warned.add(header)
        log.warning(
            "provider.bad_limit_header",
            extra={"provider": self.name, "header": header, "reason": reason},
        )

    def _unreadable(
        self,
        answer: _Answer,
        what: str,
        *,
        write: bool,
        task_ids: Sequence[int],
        unless: str | None = None,
    ) -> Transient | None:
        """A transient decision when a 2xx answer is not JSON or carries an error object.

        ``unless`` names a field whose presence shows the answer is a real one (a status
        answer may describe the object's own error in an ``error`` object).
        """
        if answer.body is NOT_JSON:
            return self._bad_answer(
                f"answer to {what} is not JSON", answer, write=write, task_ids=task_ids
            )
        if unless is not None and get_path(answer.body, unless) is not MISSING:
            return None
        error = self._answers.error_in_body(answer.response, answer.body)
        if error is not None:
            return self._log_decision(
                Transient(
                    f"HTTP {answer.response.status_code} with an error: {error}", ambiguous=write
                ),
                task_ids,
            )
        return None

    def _bad_answer(
        self, problem: str, answer: _Answer, *, write: bool, task_ids: Sequence[int]
    ) -> Transient:
        raw = self._redactor.snippet(answer.response.content)
        log.warning(
            "provider.bad_answer",
            extra={
                "provider": self.name,
                "task_ids": list(task_ids),
                "detail": problem,
                "http_status": answer.response.status_code,
                "body": raw,
            },
        )
        return Transient(f"{problem}: {raw}", ambiguous=write)

    def _log_decision(self, decision: _Refusal, task_ids: Sequence[int]) -> _Refusal:
        if isinstance(decision, RateLimited):
            event = "provider.unreachable" if decision.unreachable else "provider.rate_limited"
            detail = decision.detail
        elif isinstance(decision, Transient):
            event, detail = "provider.transient", decision.message
        else:
            event, detail = "provider.refused", decision.message
        log.info(event, extra={"provider": self.name, "task_ids": list(task_ids), "detail": detail})
        return decision

    # --- helpers -------------------------------------------------------------------------

    def _masked(self, decision: _Decision) -> _Decision:
        """``decision`` with its message masked (secrets, and the payload's redact_fields)."""
        if isinstance(decision, Transient | Failed):
            return dataclasses.replace(decision, message=self._redactor.redact(decision.message))
        if isinstance(decision, RateLimited):
            return dataclasses.replace(decision, detail=self._redactor.redact(decision.detail))
        if isinstance(decision, StatusReport) and decision.message is not None:
            return dataclasses.replace(decision, message=self._redactor.redact(decision.message))
        return decision

    def _kind(self, task: TaskRef) -> KindConfig | None:
        return self.config.kinds.get(task.kind) if task.kind is not None else None

    def _unknown_kind(self, kind: str | None) -> str:
        known = ", ".join(sorted(self.kinds)) or "(none)"
        return f"unknown kind {kind!r} for provider {self.name!r}; known: {known}"

    @staticmethod
    def _values(task: TaskRef) -> dict[str, str | None]:
        return {
            "external_id": task.external_id,
            "client_ref": task.client_ref,
            "parent_external_id": task.parent_external_id,
        }

    @staticmethod
    def _missing(exc: MissingValue, line: RequestLine) -> str:
        return f"no value for {{{exc.placeholder}}} in '{line}'"

    def __repr__(self) -> str:
        return f"HttpProvider({self.name!r}, base_url={self.base_url!r})"


_HOLDS_MAX_NODES = 10_000
"""Values looked at when searching a listed object for the reference (a bound, no stack)."""


def _holds(data: Any, text: str) -> bool:
    """Whether ``text`` is one of the string values anywhere in ``data`` (walked with a
    list, so no nesting the parser accepted can exhaust the stack)."""
    pending: list[Any] = [data]
    seen = 0
    while pending and seen < _HOLDS_MAX_NODES:
        item = pending.pop()
        seen += 1
        if isinstance(item, str):
            if item == text:
                return True
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def _as_read(decision: RateLimited | Transient | Failed) -> RateLimited | Transient:
    """Reads have no permanent failure: a refused poll or lookup is retried."""
    if isinstance(decision, Failed):
        return Transient(decision.message)
    return decision


def _send(
    client: httpx.Client,
    method: str,
    target: str,
    *,
    json: Any,
    headers: Mapping[str, str],
) -> httpx.Response:
    """``client.request`` with httpx exceptions translated into Sluice's (the short way of
    :class:`ProviderClient` when the client is one).

    Raises:
        errors.ProviderUnreachable: no connection could be made (nothing was sent).
        errors.ProviderConnectError: nothing was sent (safe to resend).
        errors.ProviderTimeout: sent, no answer in time (may have taken effect).
        errors.ProviderDisconnected: sent, the connection dropped before a whole answer.
    """
    what = f"{method} {target.split('?', 1)[0]}"
    try:
        if isinstance(client, ProviderClient):
            return client.send_json(method, target, json=json, headers=headers)
        return client.request(method, target, json=json, headers=dict(headers))
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        if says_unreachable(exc):
            raise errors.ProviderUnreachable(f"{what}: could not connect ({_reason(exc)})") from exc
        raise errors.ProviderConnectError(f"{what}: could not connect ({_reason(exc)})") from exc
    except (httpx.PoolTimeout, httpx.UnsupportedProtocol) as exc:
        raise errors.ProviderConnectError(f"{what}: could not connect ({_reason(exc)})") from exc
    except httpx.InvalidURL as exc:
        raise errors.ProviderConnectError(f"{what}: invalid URL ({exc})") from exc
    except httpx.TimeoutException as exc:
        timeout = client.timeout.read
        after = f" after {format_duration(timeout)}" if timeout else ""
        raise errors.ProviderTimeout(f"{what}: no answer{after} ({_reason(exc)})") from exc
    except httpx.HTTPError as exc:
        raise errors.ProviderDisconnected(f"{what}: connection broke off ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _id_problem(external_id: str | None, field: str, request: object) -> str | None:
    """What keeps an id from an answer to ``request`` from being recorded, or None.

    An id longer than the store keeps would be refused by PostgreSQL with the rest of the
    writer's batch; as a bad answer it is a transient failure (a create's is ambiguous, so
    it is looked up, not sent again) that ends the task in Error after ``max_attempts``,
    saying why.
    """
    if external_id is None:
        return f"no {field} in the answer to {request}"
    if not external_id:
        return f"an empty {field} in the answer to {request}"
    if len(external_id) > EXTERNAL_ID_MAX_CHARS:
        return (
            f"{field} of {len(external_id)} characters in the answer to {request} "
            f"(Sluice keeps ids of at most {EXTERNAL_ID_MAX_CHARS})"
        )
    if storable_text(external_id) != external_id:
        # Stored with U+FFFD in their place, it would name an object the provider never
        # made: every status read would ask for that one.
        return (
            f"{field} {external_id!r} in the answer to {request} holds U+0000 or a lone "
            "surrogate, which Sluice cannot store"
        )
    return None
