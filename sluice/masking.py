"""Keeping secrets out of everything Sluice shows: logs, messages, responses, the console.

- :class:`Redactor` masks known secret strings. It masks *every* occurrence, overlapping
  ones included, and the escaped forms a secret takes inside JSON, ``repr`` or a URL;
  :meth:`Redactor.snippet` masks first and only then shortens, so a secret cut in two by
  the length limit cannot leak its first half.
- :data:`KNOWN` is the process's registry: database, broker and Redis passwords (added
  when settings are built), provider credentials and fetched tokens (added by the
  providers). The log formatter masks all of them in every line, tracebacks included.
- :func:`mask_urls` hides the password of any ``scheme://user:password@host`` URL in a
  text, whether or not the rest of the URL parses; :func:`mask_shapes` hides anything
  shaped like a Sluice API key (``sk_<id>_<secret>``, the public id kept) or the
  credential after ``Bearer``/``Basic``, known or not.
- :func:`sensitive_name` is the key-name heuristic for fields and headers that hold
  credentials; :func:`scrub` applies both to a (nested) value.
- :func:`mask_paths` masks a payload's ``redact_fields`` (``card.number``) for display;
  :func:`also_mask` adds per-task values (those fields) to every redaction made in the
  current context, log lines included.

This module imports nothing of Sluice, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET_LEN = 4
"""Shorter strings are never registered: masking them would garble ordinary text."""
URL_PASSWORD_MIN_LEN = 8
"""A URL's password shorter than this (``guest``, ``postgres``: defaults, not secrets) is
masked inside URLs only; hunting it in free text would mask ordinary words."""
SNIPPET_CHARS = 300
ROTATING_KEPT = 512
"""Most rotating secrets (fetched tokens) one redactor remembers; the oldest go first."""

_SENSITIVE_NAME = re.compile(
    r"auth|token|secret|passw|pwd|cookie|session|credential|signature|api[_-]?key"
    r"|private[_-]?key|client[_-]?key|access[_-]?key|csrf",
    re.IGNORECASE,
)
# scheme://user:password@ -- the password may hold '@' when it is not percent-encoded,
# so it runs to the last '@' of the whitespace-free token (masking too much, never too
# little).
_URL_USERINFO = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*):(?P<password>[^\s'\"]*)@"
)
# A secret in a URL's query (redis-py takes ``redis://host:6379/0?password=...``): the
# value of a parameter whose name says so.
_URL_QUERY_SECRET = re.compile(
    r"(?P<head>[?&][^\s=&'\"#]*(?:passw|pwd|secret|token|api[_-]?key)[^\s=&'\"#]*=)"
    r"(?P<value>[^\s&'\"#]+)",
    re.IGNORECASE,
)

# Shapes that are secrets wherever they appear: Sluice's API keys (``sk_<id>_<secret>``;
# the public id is kept for diagnosis) and the credential of an Authorization header.
_API_KEY = re.compile(r"\b(?P<head>sk_[0-9a-f]{12}_)[A-Za-z0-9_\-]{16,}")
_AUTH_HEADER = re.compile(
    r"(?P<head>\b(?:Bearer|Basic|Token)\s+)(?!\*\*\*)[A-Za-z0-9._~+/=\-]{8,}", re.IGNORECASE
)

_extra: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "sluice_mask_extra", default=()
)


def sensitive_name(name: str) -> bool:
    """Whether a field, header or key named ``name`` looks like it holds a credential."""
    return bool(_SENSITIVE_NAME.search(name))


def forms(secret: str) -> set[str]:
    """``secret`` and the escaped forms it takes in JSON, a ``repr`` or a URL."""
    found = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    found |= {repr(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)}
    return {f for f in found if len(f) >= MIN_SECRET_LEN}


class Redactor:
    """Replaces known secret strings with ``***``; safe to share between threads.

    ``registry`` (usually :data:`KNOWN`) also learns every secret this one learns, so the
    log formatter masks a provider's secrets as well as its own messages do.
    """

    def __init__(self, secrets: Iterable[str] = (), *, registry: Redactor | None = None) -> None:
        self._lock = threading.Lock()
        self._fixed: set[str] = set()
        self._rotating: OrderedDict[str, None] = OrderedDict()
        self._secrets: tuple[str, ...] = ()
        self._registry = registry
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Remember more secrets for good (short strings are ignored)."""
        fresh = set().union(*(forms(s) for s in secrets if len(s) >= MIN_SECRET_LEN))
        if fresh - self._fixed:
            with self._lock:
                self._fixed |= fresh
                self._rebuild()
        if self._registry is not None and secrets:
            self._registry.add(*secrets)

    def add_rotating(self, secret: str) -> None:
        """Remember a secret that is replaced over time (a fetched token), bounded in number."""
        if len(secret) >= MIN_SECRET_LEN:
            with self._lock:
                for form in forms(secret):
                    self._rotating[form] = None
                    self._rotating.move_to_end(form)
                while len(self._rotating) > ROTATING_KEPT:
                    self._rotating.popitem(last=False)
                self._rebuild()
        if self._registry is not None:
            self._registry.add_rotating(secret)

    def _rebuild(self) -> None:
        merged = self._fixed | set(self._rotating)
        self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def redact(self, text: str) -> str:
        """``text`` with every known secret (and any :func:`also_mask` value) masked.

        Every occurrence is found, overlapping ones too, and each run of text covered by
        one or more secrets becomes a single ``***``.
        """
        secrets = self._secrets + _extra.get()
        spans: list[tuple[int, int]] = []
        for secret in secrets:
            start = text.find(secret)
            while start != -1:
                spans.append((start, start + len(secret)))
                start = text.find(secret, start + 1)
        if not spans:
            return text
        spans.sort()
        pieces: list[str] = []
        done = 0
        span_start, span_end = spans[0]
        for start, end in spans[1:]:
            if start <= span_end:
                span_end = max(span_end, end)
                continue
            pieces += [text[done:span_start], MASK]
            done, span_start, span_end = span_end, start, end
        pieces += [text[done:span_start], MASK, text[span_end:]]
        return "".join(pieces)

    def snippet(self, raw: bytes | str, limit: int = SNIPPET_CHARS) -> str:
        """A short, masked, single-line excerpt of an answer body for logs and messages.

        Masks first, then folds whitespace and shortens: a secret straddling the cut is
        already ``***`` when the cut is made.
        """
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        text = " ".join(mask_urls(self.redact(text)).split())
        if len(text) > limit:
            text = text[:limit] + "..."
        return text or "(empty body)"

    def __len__(self) -> int:
        return len(self._secrets)

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"


KNOWN = Redactor()
"""Every secret this process knows of; the log formatter masks them all."""


def remember(*secrets: str) -> None:
    """Add secrets to :data:`KNOWN` (empty and short strings are ignored)."""
    KNOWN.add(*(s for s in secrets if s))


def url_password(url: str) -> str | None:
    """The password in ``scheme://user:password@host...``, percent-decoded, or None."""
    from urllib.parse import unquote

    match = _URL_USERINFO.search(url)
    if match is None or not match.group("password"):
        return None
    return unquote(match.group("password"))


def remember_url(url: str | None) -> None:
    """Register the password of a configured URL (raw and percent-decoded) in :data:`KNOWN`.

    Passwords shorter than :data:`URL_PASSWORD_MIN_LEN` are left to :func:`mask_urls`.
    """
    if not url:
        return
    from urllib.parse import unquote_plus

    match = _URL_USERINFO.search(url)
    if match is not None and match.group("password"):
        raw = match.group("password")
        decoded = url_password(url) or raw
        remember(*(p for p in {raw, decoded} if len(p) >= URL_PASSWORD_MIN_LEN))
    for found in _URL_QUERY_SECRET.finditer(url):
        raw = found.group("value")
        remember(*(p for p in {raw, unquote_plus(raw)} if len(p) >= URL_PASSWORD_MIN_LEN))


def mask_urls(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URL, and the value
    of a query parameter such as ``?password=`` or ``&token=``, replaced by ``***``."""
    if "://" not in text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    if "=" not in text:
        return text
    return _URL_QUERY_SECRET.sub(lambda m: m.group("head") + MASK, text)


def mask_shapes(text: str) -> str:
    """``text`` with Sluice API keys (``sk_<id>_***``) and ``Bearer <credential>`` masked."""
    if "sk_" in text:
        text = _API_KEY.sub(lambda m: m.group("head") + MASK, text)
    return _AUTH_HEADER.sub(lambda m: m.group("head") + MASK, text)


_ADDRESSES = (
    # libpq: connection to server at "db.internal" (10.0.0.5), port 5432 failed; on socket "..."
    (
        re.compile(r'connection to server (?:at|on socket) "[^"]*"(?: \([^)]*\))?(?:, port \d+)?'),
        "connection to the server",
    ),
    # psycopg: failed to resolve host 'db.internal'; libpq: could not translate host name "x"
    (re.compile(r"""(resolve host|host name) (['"])[^'"]*\2"""), r"\1"),
    # redis-py: Error 111 connecting to 10.0.0.7:6379. / Timeout connecting to server x:6379
    (
        re.compile(r"connecting to (?:server )?\[?[\w.:-]*?\]?(?::\d+)?(?=\.(?:\s|$)|\s|$)"),
        "connecting to the server",
    ),
    # redis-py, once connected: Timeout reading from 10.0.0.7:6379 / Error while reading
    # from redis.internal:6379 : (104, ...) (a partition ends a command this way)
    (re.compile(r"(reading from|writing to) \[?[\w.:-]*\]?:\d+\b"), r"\1 the server"),
)


def without_addresses(text: str) -> str:
    """``text`` (a driver's reason for a failed connection) without the host names, IP
    addresses, ports and socket paths it names: for answers an unauthenticated caller may
    read (the API's 503s, ``/readyz``), where the network's layout is the operator's
    business. Logs and the commands' one-line errors keep them."""
    for pattern, replacement in _ADDRESSES:
        text = pattern.sub(replacement, text)
    return text


def mask(text: str) -> str:
    """``text`` with known secrets, URL passwords, API keys and bearer credentials masked."""
    return mask_shapes(mask_urls(KNOWN.redact(text)))


def scrub(value: Any, name: str = "") -> Any:
    """A copy of ``value`` safe to show: credential-named entries masked, strings masked.

    ``name`` is the field's own name; entries of nested mappings are judged by theirs.
    """
    if name and sensitive_name(name) and value is not None and value != "":
        return MASK
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, bytes):
        return mask(value.decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v) for v in value]
    return value


@contextlib.contextmanager
def also_mask(values: Iterable[str]) -> Iterator[None]:
    """Within the block, every :meth:`Redactor.redact` (logs too) also masks ``values``."""
    extra = set().union(*(forms(v) for v in values if len(v) >= MIN_SECRET_LEN))
    if not extra:
        yield
        return
    merged = tuple(sorted(set(_extra.get()) | extra, key=len, reverse=True))
    token = _extra.set(merged)
    try:
        yield
    finally:
        _extra.reset(token)


# --- payload fields a provider declares sensitive -----------------------------------------


def values_at(data: Any, paths: Iterable[str]) -> list[str]:
    """The text of every scalar at the dotted ``paths`` (and inside lists and objects there)."""
    found: list[str] = []
    for path in paths:
        for value in _walk(data, path.split(".")):
            found.extend(_scalars(value))
    return found


def mask_paths(data: Mapping[str, Any] | None, paths: Iterable[str]) -> dict[str, Any] | None:
    """A copy of ``data`` with the value at each dotted path replaced by ``***``.

    A path that crosses a list applies to each of its items (``lines.card`` masks the card
    of every line). Absent paths are left alone.
    """
    if data is None:
        return None
    paths = tuple(paths)
    if not paths:
        return dict(data)
    result: dict[str, Any] = copy.deepcopy(dict(data))
    for path in paths:
        _mask_at(result, path.split("."))
    return result


def _walk(data: Any, parts: list[str]) -> Iterator[Any]:
    if not parts:
        yield data
        return
    head, rest = parts[0], parts[1:]
    if isinstance(data, Mapping):
        if head in data:
            yield from _walk(data[head], rest)
    elif isinstance(data, list):
        if head.isdigit() and int(head) < len(data):
            yield from _walk(data[int(head)], rest)
        else:
            for item in data:
                yield from _walk(item, parts)


def _scalars(value: Any) -> list[str]:
    if value is None or isinstance(value, bool):
        return []
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _scalars(v)]
    if isinstance(value, list):
        return [s for v in value for s in _scalars(v)]
    if isinstance(value, float) and value.is_integer():
        return [str(int(value)), str(value)]
    return [str(value)]


def _mask_at(data: Any, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(data, dict):
        if head not in data:
            return
        if rest:
            _mask_at(data[head], rest)
        elif data[head] is not None:
            data[head] = MASK
    elif isinstance(data, list):
        if head.isdigit() and int(head) < len(data):
            if rest:
                _mask_at(data[int(head)], rest)
            elif data[int(head)] is not None:
                data[int(head)] = MASK
        else:
            for item in data:
                _mask_at(item, parts)
