"""Request lines, placeholders, dotted field paths and ``${VAR}`` expansion.

A request line is ``"METHOD target"`` where the target is a path relative to the
provider's ``base_url`` (or an absolute URL) that may hold placeholders:
``{external_id}``, ``{client_ref}``, ``{parent_external_id}``, ``{ids}`` (comma-joined
external ids) and ``{payload.FIELD}`` (a dotted path into the task payload). Values are
percent-encoded; the commas between ``{ids}`` are kept.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from sluice import errors

METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
SIMPLE_PLACEHOLDERS: Final = frozenset({"external_id", "client_ref", "parent_external_id", "ids"})
PAYLOAD_PREFIX: Final = "payload."

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PAYLOAD_NAME = re.compile(r"^payload\.[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class _Missing:
    """Marker for a path that leads nowhere (distinct from a JSON null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


class MissingValue(errors.ProviderError, LookupError):
    """A placeholder has no value for this task (e.g. the payload lacks the field)."""

    def __init__(self, placeholder: str) -> None:
        super().__init__(placeholder)
        self.placeholder = placeholder


@dataclass(frozen=True)
class RequestLine:
    """A parsed ``"METHOD target"`` request line."""

    method: str
    target: str
    placeholders: frozenset[str]

    @classmethod
    def parse(cls, text: str, allowed: Iterable[str]) -> RequestLine:
        """Parse ``text``; ``allowed`` lists the simple placeholders this request may use.

        ``{payload.FIELD}`` is allowed whenever ``"payload"`` is in ``allowed``.

        Raises:
            errors.InvalidValue: the line is malformed or uses a placeholder not allowed here.
        """
        allowed_set = set(allowed)
        parts = text.strip().split(None, 1)
        if len(parts) != 2:
            raise errors.InvalidValue(f"must look like 'GET /path', got {text!r}")
        method, target = parts[0].upper(), parts[1].strip()
        if method not in METHODS:
            known = ", ".join(sorted(METHODS))
            raise errors.InvalidValue(f"unknown HTTP method {parts[0]!r}; known: {known}")
        if not (target.startswith("/") or target.startswith(("http://", "https://"))):
            raise errors.InvalidValue(
                f"target must start with '/' or be an absolute URL, got {target!r}"
            )
        names = frozenset(_PLACEHOLDER.findall(target))
        for name in sorted(names):
            if name.startswith(PAYLOAD_PREFIX):
                if "payload" not in allowed_set or not _PAYLOAD_NAME.match(name):
                    raise errors.InvalidValue(f"placeholder {{{name}}} is not allowed here")
            elif name not in allowed_set:
                usable = ", ".join(
                    "{payload.FIELD}" if a == "payload" else f"{{{a}}}" for a in sorted(allowed_set)
                )
                raise errors.InvalidValue(
                    f"unknown placeholder {{{name}}}; usable here: {usable or '(none)'}"
                )
        return cls(method=method, target=target, placeholders=names)

    def render(
        self,
        values: Mapping[str, str | None],
        payload: Mapping[str, Any] | None = None,
        ids: Sequence[str] = (),
    ) -> str:
        """The target with every placeholder filled in and percent-encoded.

        Raises:
            MissingValue: a placeholder has no value for this task.
        """

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "ids":
                return ",".join(quote(i, safe="") for i in ids)
            if name.startswith(PAYLOAD_PREFIX):
                found = scalar_at(payload or {}, name[len(PAYLOAD_PREFIX) :])
                if found is None:
                    raise MissingValue(name)
                return quote(found, safe="")
            value = values.get(name)
            if value is None:
                raise MissingValue(name)
            return quote(value, safe="")

        return _PLACEHOLDER.sub(fill, self.target)

    def __str__(self) -> str:
        return f"{self.method} {self.target}"


def scalar_text(value: object) -> str:
    """Text of a JSON scalar as a provider would expect it in a URL or an id."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def scalar_at(data: object, path: str) -> str | None:
    """Text of the JSON scalar at ``path``; None when absent, null, an object or a list."""
    value = get_path(data, path)
    if value is MISSING or value is None or isinstance(value, dict | list):
        return None
    return scalar_text(value)


def get_path(data: object, path: str) -> Any:
    """Value at dotted ``path`` (``"data.id"``, ``"errors.0.field"``) or :data:`MISSING`."""
    current: Any = data
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


def with_path(data: Mapping[str, Any], path: str, value: object) -> dict[str, Any]:
    """A deep copy of ``data`` with ``value`` written at dotted ``path``."""
    result: dict[str, Any] = copy.deepcopy(dict(data))
    current = result
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = current.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            current[part] = nxt
        current = nxt
    current[parts[-1]] = value
    return result


def expand_env(text: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Expand ``${VAR}`` from ``environ`` (``$$`` is a literal ``$``).

    Returns:
        The expanded text and the substituted values (secrets to redact).

    Raises:
        errors.InvalidValue: a variable is not set; the message names it, never a value.
    """
    substituted: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        if name not in environ:
            raise errors.InvalidValue(f"environment variable {name} is not set")
        substituted.append(environ[name])
        return environ[name]

    return _ENV.sub(fill, text), substituted
