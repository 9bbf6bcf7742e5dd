"""Sluice's exception tree.

One root, a subtree per seam::

    SluiceError
    ├── ConfigError                 bad settings or provider TOML (names file, key, reason)
    ├── StoreError
    │   ├── TaskNotFound
    │   ├── TaskConflict            id or idempotency key already used
    │   ├── IllegalTransition       e.g. Completed -> Not Started
    │   └── InvalidTask             a submission that cannot be stored (unknown parent...)
    ├── ProviderError               raised while talking to a third party
    │   ├── ProviderTimeout         the request may have reached the provider (ambiguous)
    │   ├── ProviderConnectError    the request never left (safe to resend)
    │   └── ProviderProtocolError   an answer we cannot read
    └── LimiterError                the limiter's backing store failed

Third-party exceptions are translated where they enter (``raise ProviderTimeout(...) from exc``).
"""

from __future__ import annotations


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose."""


class ConfigError(SluiceError):
    """Settings or provider configuration are invalid."""


class StoreError(SluiceError):
    """The task store refused or failed an operation."""


class TaskNotFound(StoreError):
    """No task has the given id."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


class TaskConflict(StoreError):
    """A task with that id or idempotency key already exists."""


class IllegalTransition(StoreError):
    """The requested status change is not allowed."""


class InvalidTask(StoreError):
    """A submission is inconsistent with the store (unknown parent, cycle...)."""


class ProviderError(SluiceError):
    """Talking to a provider failed."""


class ProviderTimeout(ProviderError):
    """The request was sent but no answer came: it may have taken effect."""


class ProviderConnectError(ProviderError):
    """The request could not be sent: it certainly did not take effect."""


class ProviderProtocolError(ProviderError):
    """The provider answered something Sluice cannot interpret."""


class LimiterError(SluiceError):
    """The limiter's backing store is unavailable."""
