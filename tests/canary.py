"""Canary secrets: unique strings planted in a run, then searched for everywhere it left text.

A hit is any window of ``WINDOW`` characters of a secret's searched part, in the text as
it is or percent-decoded, so a secret shown whole, cut short (the first half of a token
straddling a length limit), quoted in JSON or percent-encoded in a URL is found all the
same. The searched part of an API key is its secret half: its ``sk_<id>_`` prefix is
public and shown on purpose.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, unquote_plus

WINDOW = 10
"""Shortest leaked piece that counts: long enough never to occur by chance."""


@dataclass(frozen=True)
class Canary:
    """One planted secret: what to plant (``value``) and what must never show (``searched``)."""

    name: str
    value: str
    searched: str

    @classmethod
    def make(cls, name: str, prefix: str = "cnry", suffix: str = "") -> Canary:
        """A fresh secret ``<prefix><random hex><suffix>``, searched whole."""
        value = f"{prefix}{secrets.token_hex(12)}{suffix}"
        return cls(name, value, value)

    @classmethod
    def api_key(cls, name: str, token: str) -> Canary:
        """An API key ``sk_<id>_<secret>``: only the secret half is searched. The id has no
        ``_`` but the secret may (URL-safe base64): split after the id, not at the last
        ``_``, or a secret ending ``..._x9`` leaves ``x9`` to search, found by chance in
        any timestamp."""
        return cls(name, token, token.split("_", 2)[2] if token.startswith("sk_") else token)

    def windows(self) -> set[str]:
        text = self.searched
        if len(text) <= WINDOW:
            return {text}
        return {text[i : i + WINDOW] for i in range(len(text) - WINDOW + 1)}


@dataclass(frozen=True)
class Hit:
    where: str
    secret: str
    context: str

    def __str__(self) -> str:
        return f"{self.secret} in {self.where}: ...{self.context}..."


def _views(text: str) -> list[str]:
    """``text`` as it is, percent-decoded and JSON-unescaped (where that changes it)."""
    views = [text]
    for decoded in (unquote(text), unquote_plus(text)):
        if decoded not in views:
            views.append(decoded)
    try:
        unescaped = json.loads(f'"{text}"') if "\\" in text and '"' not in text else None
    except ValueError:
        unescaped = None
    if isinstance(unescaped, str) and unescaped not in views:
        views.append(unescaped)
    return views


def find_leaks(corpus: Mapping[str, str], canaries: Iterable[Canary]) -> list[Hit]:
    """Every place a piece of a canary shows up in ``corpus`` (where -> text)."""
    hits: list[Hit] = []
    canaries = list(canaries)
    for where, text in corpus.items():
        for view in _views(text):
            for canary in canaries:
                for window in canary.windows():
                    at = view.find(window)
                    if at != -1:
                        context = view[max(0, at - 30) : at + len(window) + 30]
                        hits.append(Hit(where, canary.name, context))
                        break
    return hits
