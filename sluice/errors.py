"""Sluice's exception tree: every exception Sluice raises belongs to it.

One root, a subtree per seam::

    SluiceError
    ├── ConfigError                 bad settings or provider TOML (names file, key, reason)
    ├── InvalidValue (ValueError)   a value outside its domain: a rate, a duration, a limit,
    │   │                           a margin, a naive datetime given to the store, a
    │   │                           datetime UTC cannot hold (clock.as_utc)
    │   └── KeyProblem              providers/config.py: one key of a provider table
    ├── SubmissionInvalid           submissions.py: items of a submission are invalid, each
    │                               named with its field; nothing was written
    ├── UsageError                  cli.py: a command line that does not parse (an unknown
    │                               option or command, a missing or malformed argument)
    ├── EngineLocked                drivers/engine_lock.py: another embedded engine runs on
    │                               this database (each would send the full rate)
    ├── StoreError
    │   ├── StoreUnavailable        the database cannot be reached (down, restarting, refused)
    │   │   └── WriteDeadlocked     the database ended a write to break a deadlock with a
    │   │                           concurrent one (answered 503: try again)
    │   ├── TaskNotFound
    │   ├── BulkJobNotFound         no bulk job with that id (for this tenant)
    │   ├── TaskConflict            id or idempotency key already used
    │   ├── IllegalTransition       e.g. Completed -> Not Started
    │   └── InvalidTask             a submission, file or cursor the store cannot serve
    │                               (unknown parent...)
    ├── AccessError                 who may do what (docs/security.md)
    │   ├── KeyNotFound             no API key has that id
    │   ├── InvalidKeyRequest       a key cannot be made as asked (role, tenant, expiry)
    │   ├── RoleRequired            a valid key whose role does not allow the action
    │   └── UnguardedRoute (TypeError)  api/auth.py: a route that declares no access
    ├── ProviderError               raised while talking to a third party
    │   ├── ProviderConnectError    the request never left (safe to resend)
    │   │   └── ProviderUnreachable no connection could be made: the provider is paused
    │   │                           (providers/outage.py)
    │   ├── ProviderTimeout         sent, no answer in time (may have taken effect: ambiguous)
    │   ├── ProviderDisconnected    sent, the connection dropped before a whole answer (ambiguous)
    │   ├── TokenUnavailable        providers/auth.py: no access token for the request
    │   └── MissingValue (LookupError)  providers/templating.py: the task lacks a value the
    │                               request template needs
    ├── ControlError                controls.py: an operator's pause, resume, pin or unpin refused
    │   ├── UnknownLimit            no such provider or limit key (answered 404, naming it)
    │   └── InvalidControl          e.g. a pin above the configured rate (answered 422)
    ├── LimiterError                the limiter's backing store failed
    │   ├── GrantExpired            a grant not used within its send window: nothing was
    │   │                           sent, ask again (ratelimit/sendgate.py)
    │   └── GrantSpent              a second request under one grant (a bug): refused
    ├── BodyTooLarge                api/limits.py: a request body over the limit (answered 413)
    ├── TooManyItems                api/limits.py: a bulk batch over the item limit (answered 413)
    ├── UnknownQuery                api/query.py: a query parameter the route does not take
    │                               (answered 422)
    └── BodyNotUtf8                 api/limits.py: a JSON body in UTF-16 or UTF-32 (answered 415)

Third-party exceptions are translated where they enter (``raise ProviderTimeout(...) from exc``).
The sandbox stands for a third party and keeps its own tree (``sluice/sandbox/errors.py``).
"""

from __future__ import annotations


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose."""


class ConfigError(SluiceError):
    """Settings or provider configuration are invalid."""


class InvalidValue(SluiceError, ValueError):
    """A value is outside its domain (also a ``ValueError``, so validators accept it)."""


class UsageError(SluiceError):
    """A command line that does not parse, said for ``command`` (``sluice db prune``)."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(message)
        self.command = command


class StoreError(SluiceError):
    """The task store refused or failed an operation."""


class StoreUnavailable(StoreError):
    """The database cannot be reached: down, restarting, refusing connections."""

    def __init__(self, reason: str, where: str) -> None:
        super().__init__(f"database unavailable: {reason}")
        self.reason = reason
        self.where = where  # the database URL with its password masked


class WriteDeadlocked(StoreUnavailable):
    """The database ended a write to break a deadlock with a concurrent write (two bulk
    batches taking the same idempotency keys in opposite orders): nothing of it was
    written, and the same write may succeed now."""


class TaskNotFound(StoreError):
    """No task has the given id."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


class BulkJobNotFound(StoreError):
    """No bulk job has that id (for this tenant), or it is no longer the caller's to run."""


class TaskConflict(StoreError):
    """A task with that id or idempotency key already exists."""


class IllegalTransition(StoreError):
    """The requested status change is not allowed."""


class InvalidTask(StoreError):
    """A request is inconsistent with the store (unknown parent, a cursor it never issued...)."""


class AccessError(SluiceError):
    """Who may do what: API keys, roles, tenants."""


class KeyNotFound(AccessError):
    """No API key has the given id."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id!r} not found")
        self.key_id = key_id


class InvalidKeyRequest(AccessError):
    """An API key cannot be created as asked (unknown role, missing tenant, bad expiry)."""


class RoleRequired(AccessError):
    """The caller's key is valid but its role does not allow the action."""

    def __init__(self, needed: str, action: str, has: str) -> None:
        super().__init__(f"{action} needs the '{needed}' role or higher; this key is '{has}'")
        self.needed = needed


class UnguardedRoute(AccessError, TypeError):
    """An API route declares no access: a programming error, caught when the app is built."""


class ProviderError(SluiceError):
    """Talking to a provider failed."""


class ProviderTimeout(ProviderError):
    """The request was sent but no answer came: it may have taken effect."""


class ProviderConnectError(ProviderError):
    """The request could not be sent: it certainly did not take effect."""


class ProviderUnreachable(ProviderConnectError):
    """No connection could be made and the failure says the host is down or cut off
    (refused, reset, timed out, unreachable; :func:`sluice.providers.outage.says_unreachable`):
    nothing was sent."""


class ProviderDisconnected(ProviderError):
    """The connection dropped after the request was sent: it may have taken effect."""


class ControlError(SluiceError):
    """An operator's control action was refused; nothing was changed or recorded."""


class UnknownLimit(ControlError):
    """No provider, or no limit key of the provider, has the name given."""


class InvalidControl(ControlError):
    """A control action asked for something it cannot do (e.g. a pin that raises a rate)."""


class LimiterError(SluiceError):
    """The limiter's backing store is unavailable, or a grant cannot be used."""


class GrantExpired(LimiterError):
    """A grant was not used within its send window; the request was not sent."""


class GrantSpent(LimiterError):
    """A request tried to go under a grant that already let one through."""


class EngineLocked(SluiceError):
    """Another embedded engine runs on this database (drivers/engine_lock.py)."""

    def __init__(self, holder: str, where: str, who: str) -> None:
        super().__init__(
            f"another {holder} runs the engine on this database ({where}); two would each "
            "send the providers' full rate. Stop it, or run more processes as workers with "
            "SLUICE_REDIS_URL (docs/deployment.md)"
        )
        self.who = who
        """The holder in a few words: ``sluice up (pid 4242)``."""
