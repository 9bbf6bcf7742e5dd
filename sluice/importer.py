"""Read task hierarchies from JSON or CSV files into submissions.

JSON: ``{"provider": "sandbox", "tasks": [{"kind": "campaign", "payload": {...},
"children": [{"kind": "ad_group", ...}]}]}`` (``provider`` optional, per task too).
CSV: one row per task with columns ``ref``, ``parent_ref``, ``kind``, optional
``provider``; every other non-empty column goes into the payload (numbers and booleans
are converted; ``a|b|c`` becomes a list). Parents must come before their children.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from sluice import errors
from sluice.domain import Submission

RESERVED_COLUMNS = {"ref", "parent_ref", "kind", "provider"}


def load_file(path: Path) -> list[Submission]:
    """Parse ``path`` (by its extension) into submissions in parent-first order."""
    if not path.is_file():
        raise errors.InvalidTask(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return load_json(path)
    if suffix == ".csv":
        return load_csv(path)
    raise errors.InvalidTask(f"{path}: unknown file type {suffix!r}; use .json or .csv")


def load_json(path: Path) -> list[Submission]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise errors.InvalidTask(f"{path}: not valid JSON: {exc}") from exc
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise errors.InvalidTask(f'{path}: expected {{"tasks": [...]}} or a list of tasks')
    items: list[Submission] = []
    for position, node in enumerate(data["tasks"]):
        _flatten(path, node, f"tasks[{position}]", None, data.get("provider"), items)
    return items


def _flatten(
    path: Path,
    node: Any,
    where: str,
    parent_index: int | None,
    provider: str | None,
    out: list[Submission],
) -> None:
    if not isinstance(node, dict):
        raise errors.InvalidTask(f"{path}: {where}: expected an object")
    unknown = set(node) - {"kind", "payload", "provider", "children", "ref", "id"}
    if unknown:
        raise errors.InvalidTask(f"{path}: {where}: unknown key(s) {', '.join(sorted(unknown))}")
    kind = node.get("kind")
    payload = node.get("payload", {})
    if not isinstance(kind, str) or not kind:
        raise errors.InvalidTask(f"{path}: {where}.kind: a non-empty string is required")
    if not isinstance(payload, dict):
        raise errors.InvalidTask(f"{path}: {where}.payload: expected an object")
    own_provider = node.get("provider", provider)
    out.append(
        Submission(provider=own_provider, kind=kind, payload=payload, parent_index=parent_index)
    )
    index = len(out) - 1
    children = node.get("children", [])
    if not isinstance(children, list):
        raise errors.InvalidTask(f"{path}: {where}.children: expected a list")
    for position, child in enumerate(children):
        _flatten(path, child, f"{where}.children[{position}]", index, own_provider, out)


def load_csv(path: Path) -> list[Submission]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "kind" not in reader.fieldnames:
            raise errors.InvalidTask(f"{path}: the header must have a 'kind' column")
        items: list[Submission] = []
        refs: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            kind = (row.get("kind") or "").strip()
            if not kind:
                raise errors.InvalidTask(f"{path}:{line}: kind is empty")
            parent_ref = (row.get("parent_ref") or "").strip()
            parent_index = None
            if parent_ref:
                if parent_ref not in refs:
                    raise errors.InvalidTask(
                        f"{path}:{line}: parent_ref {parent_ref!r} is not an earlier row's ref"
                    )
                parent_index = refs[parent_ref]
            payload = {
                key: _cell(value)
                for key, value in row.items()
                if key and key not in RESERVED_COLUMNS and value not in (None, "")
            }
            items.append(
                Submission(
                    provider=(row.get("provider") or "").strip() or None,
                    kind=kind,
                    payload=payload,
                    parent_index=parent_index,
                )
            )
            ref = (row.get("ref") or "").strip()
            if ref:
                if ref in refs:
                    raise errors.InvalidTask(f"{path}:{line}: ref {ref!r} is used twice")
                refs[ref] = len(items) - 1
    if not items:
        raise errors.InvalidTask(f"{path}: no rows")
    return items


def _cell(value: str) -> Any:
    text = value.strip()
    if "|" in text:
        return [part.strip() for part in text.split("|") if part.strip()]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text
