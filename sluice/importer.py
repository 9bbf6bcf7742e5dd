"""Read task hierarchies from JSON or CSV files into submissions.

JSON: ``{"provider": "sandbox", "tasks": [{"kind": "campaign", "payload": {...},
"children": [{"kind": "ad_group", ...}]}]}`` (``provider`` optional, per task too); any
other key is refused, ``id`` (Sluice assigns task ids) and ``ref`` (a CSV column) included.
CSV: one row per task with columns ``ref``, ``parent_ref``, ``kind``, optional
``provider``; every other non-empty cell goes into the payload **as text**, unless its
column declares a type with a suffix: ``budget:int``, ``bid:float``, ``active:bool``
(true/false), ``ranges:list`` (``a|b|c``, a list of text) or ``targeting:json`` (any JSON
value). So ``007``, ``nan`` and ``1e5`` stay text in an undeclared column. Parents must
come before their children.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sluice import errors
from sluice.domain import Submission

RESERVED_COLUMNS = {"ref", "parent_ref", "kind", "provider"}
FILE_KEYS = ("provider", "tasks")
TASK_KEYS = ("kind", "payload", "provider", "children")
"""What a JSON task object may hold; any other key is refused, none ignored."""
NOT_READ = {
    "id": "task ids are assigned by Sluice, not read from a file; a field the provider should "
    'receive goes in "payload" (where a CSV file\'s id column goes)',
    "ref": 'a JSON file places children under "children"; ref and parent_ref are CSV columns',
}
"""Keys a JSON task object was mistaken to take (both used to be ignored without a word)."""
TOO_DEEP = "objects and lists nested too deeply to read"
"""Python's parser gives up (RecursionError) near 1,000 levels; payloads may nest 64."""


def load_file(path: Path) -> list[Submission]:
    """Parse ``path`` (by its extension) into submissions in parent-first order.

    Raises:
        errors.InvalidTask: one line naming the file (and line) and the problem.
    """
    return load_file_placed(path)[0]


def load_file_placed(path: Path) -> tuple[list[Submission], list[str]]:
    """``load_file``, with where each submission is in the file: ``tasks.csv:57`` (the line
    where its row begins) or ``tasks.json: tasks[3].children[0]``.

    A problem found later (an unknown kind, a NUL character) names that place rather than
    the submission's position in the flattened list, which no editor shows.
    """
    if not path.is_file():
        # A FIFO or a device was "no such file"; reading one could wait forever.
        what = (
            "is a directory"
            if path.is_dir()
            else "not a regular file"
            if path.exists()
            else "no such file"
        )
        raise errors.InvalidTask(f"{path}: {what}")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise errors.InvalidTask(f"{path}: unknown file type {suffix!r}; use .json or .csv")
    text = _read_text(path)
    places: list[str] = []
    if suffix == ".json":
        return load_json_text(path, text, places), places
    return load_csv_text(path, text, places), places


def _read_text(path: Path) -> str:
    try:
        # utf-8-sig: a byte order mark (Excel's "CSV UTF-8") is not part of the text.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise errors.InvalidTask(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise errors.InvalidTask(f"{path}: cannot read: {exc.strerror or exc}") from None


def load_json(path: Path) -> list[Submission]:
    return load_json_text(path, _read_text(path))


def load_json_text(path: Path, text: str, places: list[str] | None = None) -> list[Submission]:
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise errors.InvalidTask(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise errors.InvalidTask(f"{path}: not valid JSON: {TOO_DEEP}") from None
    if isinstance(data, list):
        data = {"tasks": data}
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise errors.InvalidTask(f'{path}: expected {{"tasks": [...]}} or a list of tasks')
    unknown = set(data) - set(FILE_KEYS)
    if unknown:
        raise errors.InvalidTask(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(FILE_KEYS)}"
        )
    items: list[Submission] = []
    seen: list[str] = [] if places is None else places
    for position, node in enumerate(data["tasks"]):
        _flatten(path, node, f"tasks[{position}]", None, data.get("provider"), items, seen)
    return items


def _flatten(
    path: Path,
    node: Any,
    where: str,
    parent_index: int | None,
    provider: str | None,
    out: list[Submission],
    places: list[str],
) -> None:
    if not isinstance(node, dict):
        raise errors.InvalidTask(f"{path}: {where}: expected an object")
    mistaken = sorted(set(node) & set(NOT_READ))
    if mistaken:
        raise errors.InvalidTask(f"{path}: {where}.{mistaken[0]}: {NOT_READ[mistaken[0]]}")
    unknown = set(node) - set(TASK_KEYS)
    if unknown:
        raise errors.InvalidTask(
            f"{path}: {where}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(TASK_KEYS)}"
        )
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
    places.append(f"{path}: {where}")
    index = len(out) - 1
    children = node.get("children", [])
    if not isinstance(children, list):
        raise errors.InvalidTask(f"{path}: {where}.children: expected a list")
    for position, child in enumerate(children):
        _flatten(path, child, f"{where}.children[{position}]", index, own_provider, out, places)


def _refuse_constant(name: str) -> Any:
    raise errors.InvalidValue(f"{name} is not a JSON number")


def _to_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise errors.InvalidValue(f"{text!r} is not a whole number") from None


def _to_float(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise errors.InvalidValue(f"{text!r} is not a number") from None
    if not math.isfinite(number):
        raise errors.InvalidValue(f"{text!r} is not a finite number")
    return number


def _to_bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise errors.InvalidValue(f"{text!r} is not true or false")
    return text.lower() == "true"


def _to_list(text: str) -> list[str]:
    return [part.strip() for part in text.split("|") if part.strip()]


def _to_json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise errors.InvalidValue(f"{text!r} is not JSON ({exc})") from None
    except RecursionError:
        raise errors.InvalidValue(f"{text[:40]!r}... is not JSON ({TOO_DEEP})") from None


CELL_TYPES: dict[str, Callable[[str], Any]] = {
    "text": str,
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
    "list": _to_list,
    "json": _to_json,
}


def _column(path: Path, header: str) -> tuple[str, Callable[[str], Any]]:
    """A payload column's field name and cell converter, from ``name`` or ``name:type``."""
    name, colon, declared = header.rpartition(":")
    if not colon:
        return header.strip(), str
    convert = CELL_TYPES.get(declared.strip())
    if convert is None or not name.strip():
        raise errors.InvalidTask(
            f"{path}: column {header!r}: unknown type {declared!r}; "
            f"write NAME:TYPE with TYPE one of {', '.join(CELL_TYPES)}"
        )
    return name.strip(), convert


def _unclosed_quote(text: str) -> int | None:
    """The line where a quoted cell that never closes begins, or None.

    The lenient reader ends such a cell at the end of the file, so every later row would
    become part of it; only a strict read says so (its other complaints, such as a space
    after a closing quote, are left to the lenient read as before).
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        for _ in reader:
            start = reader.line_num + 1
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            return start
    return None


def _rows(path: Path, reader: csv.DictReader[str]) -> list[tuple[int, dict[str | None, Any]]]:
    """Each row with the line of the file where it begins.

    Counting rows from line 2 named the wrong line below a blank line (skipped) or a quoted
    cell holding a line end: an empty kind on line 6 under two blank lines was "line 3".
    """
    lines = reader.reader
    rows: list[tuple[int, dict[str | None, Any]]] = []
    while True:
        start = lines.line_num + 1
        try:
            cells = next(lines)
        except StopIteration:
            return rows
        except csv.Error as exc:
            raise errors.InvalidTask(f"{path}:{lines.line_num}: not valid CSV: {exc}") from None
        if not cells:  # a blank line, skipped as csv.DictReader does
            continue
        names = reader.fieldnames or []
        row: dict[str | None, Any] = dict(zip(names, cells, strict=False))
        if len(cells) > len(names):
            row[None] = cells[len(names) :]  # csv.DictReader's restkey
        rows.append((start, row))


def load_csv(path: Path) -> list[Submission]:
    return load_csv_text(path, _read_text(path))


def load_csv_text(path: Path, text: str, places: list[str] | None = None) -> list[Submission]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or "kind" not in reader.fieldnames:
        raise errors.InvalidTask(f"{path}: the header must have a 'kind' column")
    columns = {
        header: _column(path, header)
        for header in reader.fieldnames
        if header and header not in RESERVED_COLUMNS
    }
    # Two columns for one field: a row would keep one cell and drop the other unseen.
    named = [
        header if header in RESERVED_COLUMNS else columns[header][0]
        for header in reader.fieldnames
        if header
    ]
    twice = next((name for name in named if named.count(name) > 1), None)
    if twice is not None:
        raise errors.InvalidTask(f"{path}: column {twice!r} appears twice in the header")
    unclosed = _unclosed_quote(text)
    if unclosed is not None:
        raise errors.InvalidTask(
            f"{path}:{unclosed}: not valid CSV: unexpected end of data "
            "(a double quote is not closed)"
        )
    items: list[Submission] = []
    refs: dict[str, int] = {}
    for line, row in _rows(path, reader):
        extra = row.get(None)  # DictReader's restkey: cells beyond the header
        if extra and any(cell.strip() for cell in extra):
            raise errors.InvalidTask(
                f"{path}:{line}: {len(reader.fieldnames) + len(extra)} cells, but the header "
                f"has {len(reader.fieldnames)} columns (a cell holding a comma needs double "
                "quotes)"
            )
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
        payload: dict[str, Any] = {}
        for header, (name, convert) in columns.items():
            cell = (row.get(header) or "").strip()
            if not cell:
                continue
            try:
                payload[name] = convert(cell)
            except ValueError as exc:
                raise errors.InvalidTask(f"{path}:{line}: column {header!r}: {exc}") from None
        items.append(
            Submission(
                provider=(row.get("provider") or "").strip() or None,
                kind=kind,
                payload=payload,
                parent_index=parent_index,
            )
        )
        if places is not None:
            places.append(f"{path}:{line}")
        ref = (row.get("ref") or "").strip()
        if ref:
            if ref in refs:
                raise errors.InvalidTask(f"{path}:{line}: ref {ref!r} is used twice")
            refs[ref] = len(items) - 1
    if not items:
        raise errors.InvalidTask(f"{path}: no rows")
    return items
