"""Request checks: shape errors answered at once, semantic errors found during processing.

Shape errors (not an object, a required field missing or of the wrong type) are answered
400 at create time. Semantic errors (a bad IP range, a list over its cap, a budget that is
not positive) are only discovered while the object is processed, like real DSPs do, and
surface later as the rejected status with a field path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from sluice.sandbox.errors import InvalidRequest

INCLUDE_CAP = 3500
"""Most entries an audience include list may hold (Xandr's cap)."""
EXCLUDE_CAP = 10
"""Most entries an audience exclude list may hold (Xandr's cap)."""


@dataclass(frozen=True)
class FieldError:
    """One semantic problem, located by a field path such as ``include[3]``."""

    field: str
    message: str

    def as_json(self) -> dict[str, str]:
        """The ``errors[]`` item a client reads."""
        return {"field": self.field, "message": self.message}


def check_shape(body: Any, parent_field: str | None, *, audience: bool) -> dict[str, Any]:
    """The create body as a dict, after checking required fields and types.

    Raises:
        InvalidRequest: naming the first offending field.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    _require_string(body, "name", non_empty=True)
    if parent_field is not None:
        _require_string(body, parent_field, non_empty=True)
    _optional_string(body, "client_ref")
    _optional_string(body, "creative_url")
    for number_field in ("budget", "bid"):
        value = body.get(number_field)
        if value is not None and not _is_number(value):
            raise InvalidRequest(f"'{number_field}' must be a number", field=number_field)
    if audience:
        if body.get("type") != "ip_range":
            raise InvalidRequest("'type' must be \"ip_range\"", field="type")
        for list_field in ("include", "exclude"):
            entries = body.get(list_field, [])
            if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                raise InvalidRequest(f"'{list_field}' must be a list of strings", field=list_field)
    return body


def semantic_errors(fields: dict[str, Any]) -> list[FieldError]:
    """Everything processing will reject this object for, in field order."""
    found: list[FieldError] = []
    for number_field in ("budget", "bid"):
        value = fields.get(number_field)
        if value is not None and value <= 0:
            found.append(FieldError(number_field, f"{number_field} must be > 0, got {value}"))
    for list_field, cap in (("include", INCLUDE_CAP), ("exclude", EXCLUDE_CAP)):
        entries: list[str] = fields.get(list_field) or []
        if len(entries) > cap:
            found.append(
                FieldError(
                    list_field,
                    f"{list_field} list has {len(entries)} entries; at most {cap} allowed",
                )
            )
        for index, entry in enumerate(entries):
            if not is_ip_range(entry):
                found.append(FieldError(f"{list_field}[{index}]", f"Invalid IP range: {entry}"))
    return found


def is_ip_range(entry: str) -> bool:
    """Whether ``entry`` is an IPv4/IPv6 address, a CIDR, or an ``a-b`` range with a <= b."""
    text = entry.strip()
    try:
        if "/" in text:
            ipaddress.ip_network(text, strict=False)
            return True
        if "-" in text:
            first, last = (ipaddress.ip_address(part.strip()) for part in text.split("-", 1))
            return first.version == last.version and first <= last  # type: ignore[operator]
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _require_string(body: dict[str, Any], name: str, *, non_empty: bool) -> None:
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"'{name}' is required", field=name)
    if not isinstance(value, str) or (non_empty and not value.strip()):
        raise InvalidRequest(f"'{name}' must be a non-empty string", field=name)


def _optional_string(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", field=name)
