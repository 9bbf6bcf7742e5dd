"""One error tree: every exception Sluice raises belongs to it, and errors.py draws all of it."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import sluice
from sluice import errors

# Leaving the command line is not an error: typer.Exit and SystemExit end a command.
EXITS = {"SystemExit", "Exit", "BadParameter"}


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
    """(line, expression, resolved object) of every ``raise Name(...)`` in ``module``."""
    tree = ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
            continue
        expression = ast.unparse(node.exc.func)
        value: object = module
        for part in expression.split("."):
            value = getattr(value, part, None)
        found.append((node.lineno, expression, value))
    return found


@pytest.mark.parametrize("module", sluice_modules(), ids=lambda m: m.__name__)
def test_every_raise_is_a_sluice_error(module: ModuleType) -> None:
    """Each ``raise X(...)`` in the package raises a subclass of SluiceError (or leaves the CLI)."""
    outside = [
        f"{module.__name__}:{line} raise {expression}(...)"
        for line, expression, value in raised_classes(module)
        if expression.split(".")[-1] not in EXITS
        and not (isinstance(value, type) and issubclass(value, errors.SluiceError))
    ]
    assert outside == []


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
