"""Fault injection: per-request draws from a generator seeded by the configured seed.

Each request that passes the rate limiter draws at most one *exclusive* fault (an answer
other than the normal one) plus, independently, whether it is answered slowly. With every
rate at zero nothing is drawn, so turning faults off costs nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from sluice.sandbox.config import FaultRates


class Fault(StrEnum):
    """What can go wrong with one request."""

    ERROR_5XX = "error_5xx"
    """500 with ``{"error": {"code": "INTERNAL"}}``; nothing happened."""
    UNAVAILABLE_503 = "unavailable_503"
    """503 with ``Retry-After: 1``; nothing happened."""
    RESET = "reset"
    """The connection is dropped before a complete answer; nothing happened."""
    COMMIT_THEN_TIMEOUT = "commit_then_timeout"
    """Creates only: the object is created, then the answer is withheld for ``hang_s``."""
    ERROR_BODY = "error_body"
    """200 whose body is ``{"error": {...}}``; nothing happened."""
    TOKEN_EXPIRY = "token_expiry"  # noqa: S105 (a fault name, not a secret)
    """401 as if the token had expired (auth on only)."""
    SLOW = "slow"
    """The normal answer, ``slow_s`` late."""


@dataclass(frozen=True)
class FaultPlan:
    """The faults drawn for one request."""

    fault: Fault | None = None
    slow_s: float = 0.0


NO_FAULT = FaultPlan()


class FaultInjector:
    """Draws faults with the configured probabilities, reproducibly for a given seed."""

    def __init__(self, rates: FaultRates, seed: int) -> None:
        self.rates = rates
        self._rng = random.Random(f"{seed}:faults")

    def draw(self, *, create: bool, auth: bool) -> FaultPlan:
        """The faults for one request; ``create`` and ``auth`` decide which are possible."""
        rates = self.rates
        if not rates.any_enabled:
            return NO_FAULT
        # Always draw twice so one request's kind never shifts the sequence for the next.
        exclusive_draw = self._rng.random()
        slow = self._rng.random() < rates.slow
        bands = (
            (Fault.ERROR_5XX, rates.error_5xx),
            (Fault.UNAVAILABLE_503, rates.unavailable_503),
            (Fault.RESET, rates.reset),
            (Fault.ERROR_BODY, rates.error_body),
            (Fault.COMMIT_THEN_TIMEOUT, rates.commit_then_timeout if create else 0.0),
            (Fault.TOKEN_EXPIRY, rates.token_expiry if auth else 0.0),
        )
        fault = None
        upper = 0.0
        for kind, rate in bands:
            upper += rate
            if exclusive_draw < upper:
                fault = kind
                break
        if fault is None and not slow:
            return NO_FAULT
        return FaultPlan(fault, rates.slow_s if slow else 0.0)
