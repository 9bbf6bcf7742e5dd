"""Sluice: a rate-limited submission engine for third-party APIs."""

from __future__ import annotations

__version__ = "0.1.0"
