"""One error tree: every exception Sluice raises belongs to it, and errors.py draws all of it."""

from __future__ import annotations

import ast
import builtins
import importlib
import pkgutil
import re
import types
import typing
from pathlib import Path
from types import ModuleType

import pytest

import sluice
from sluice import errors

# Leaving the command line is not an error: typer.Exit and SystemExit end a command.
EXITS = {"SystemExit", "Exit", "BadParameter"}
# A network stream under httpcore's connection pool raises httpcore's own read errors: that
# is the stream's contract with the pool (providers/transport.py reads stamped packets itself).
STREAM_CONTRACT = {
    ("sluice.providers.transport", "httpcore.ReadTimeout"),
    ("sluice.providers.transport", "httpcore.ReadError"),
}


def sluice_modules() -> list[ModuleType]:
    """Every module of the package except the sandbox (a stand-in third party, own tree)."""
    names = [
        info.name
        for info in pkgutil.walk_packages(sluice.__path__, "sluice.")
        if not info.name.startswith(("sluice.sandbox", "sluice.store.migrations"))
        and info.name != "sluice.__main__"
    ]
    return [importlib.import_module(name) for name in names]


def raised_classes(module: ModuleType) -> list[tuple[int, str, object]]:
    """(line, expression, resolved object) of every ``raise Name(...)`` and ``raise Name``
    (a class raised bare) in ``module``; re-raising a caught or built exception is skipped."""
    tree = ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        called = isinstance(node.exc, ast.Call)
        target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if not isinstance(target, ast.Name | ast.Attribute):
            continue
        expression = ast.unparse(target)
        value: object = module if hasattr(module, expression.split(".")[0]) else builtins
        for part in expression.split("."):
            value = getattr(value, part, None)
        if called or isinstance(value, type):
            found.append((node.lineno, expression, value))
    return found


@pytest.mark.parametrize("module", sluice_modules(), ids=lambda m: m.__name__)
def test_every_raise_is_a_sluice_error(module: ModuleType) -> None:
    """Each ``raise X(...)`` in the package raises a subclass of SluiceError (or leaves the CLI)."""
    outside = [
        f"{module.__name__}:{line} raise {expression}(...)"
        for line, expression, value in raised_classes(module)
        if expression.split(".")[-1] not in EXITS
        and (module.__name__, expression) not in STREAM_CONTRACT
        and not _a_sluice_error(value)
    ]
    assert outside == []


def _a_sluice_error(value: object) -> bool:
    """A SluiceError class, or a function annotated to return one (``raise _refusal(...)``)."""
    if isinstance(value, types.FunctionType):
        value = typing.get_type_hints(value).get("return")
    return isinstance(value, type) and issubclass(value, errors.SluiceError)


def test_the_drawn_tree_names_every_error() -> None:
    """errors.py's docstring draws every SluiceError subclass defined anywhere in the package."""
    sluice_modules()
    pending: list[type] = [errors.SluiceError]
    every: set[str] = set()
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("sluice."):
            every.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    drawn = str(errors.__doc__)
    assert sorted(name for name in every if name not in drawn) == []


def drawn_parents() -> dict[str, tuple[str | None, str | None]]:
    """``{name: (drawn parent, drawn extra base)}`` read from errors.py's tree drawing."""
    drawing = re.compile(r"^(?P<indent>[ │]*)(?:[├└]── )?(?P<name>\w+)(?: \((?P<extra>\w+)\))?")
    tree = str(errors.__doc__).split("::", 1)[1].split("\n\n")[1]
    parents: dict[str, tuple[str | None, str | None]] = {}
    path: list[str] = []
    for line in tree.splitlines():
        match = drawing.match(line[4:])
        if match is None or ("──" not in line and path):
            continue  # a continued description
        depth = len(match["indent"]) // 4 + (1 if "──" in line else 0)
        del path[depth:]
        parents[match["name"]] = (path[-1] if path else None, match["extra"])
        path.append(match["name"])
    return parents


def test_the_drawing_places_every_error_under_its_real_parent() -> None:
    """Each error drawn in errors.py sits under the class it really derives from, with the
    built-in it also derives from named beside it."""
    sluice_modules()
    classes: dict[str, type] = {}
    pending: list[type] = [errors.SluiceError]
    while pending:
        cls = pending.pop()
        classes[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    drawn = drawn_parents()
    assert set(drawn) == {n for n, c in classes.items() if c.__module__.startswith("sluice.")}
    for name, (parent, extra) in drawn.items():
        bases = classes[name].__bases__
        assert [b.__name__ for b in bases if issubclass(b, errors.SluiceError)] == (
            [parent] if parent else []
        ), name
        others = [b.__name__ for b in bases if not issubclass(b, errors.SluiceError)]
        assert others == ([extra] if extra else ([] if parent else ["Exception"])), name
