"""The one-way layout: its contracts hold, break on a wrong import, and workers stay lean.

The contracts live in pyproject.toml (``[tool.importlinter]``); docs/architecture.md draws them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACTS = {
    contract["id"]: contract["name"]
    for contract in tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "importlinter"
    ]["contracts"]
}


def lint_imports(package_parent: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` (the project's contracts) on the ``sluice`` in ``package_parent``."""
    argv = [str(LINT_IMPORTS), "--no-cache", "--config", str(ROOT / "pyproject.toml")]
    for contract in contracts:
        argv += ["--contract", contract]
    env = {**os.environ, "PYTHONPATH": str(package_parent), "COLUMNS": "1000"}
    return subprocess.run(
        argv, cwd=package_parent, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """A copy of the sluice package to break on purpose; returns the directory holding it."""
    shutil.copytree(
        ROOT / "sluice", tmp_path / "sluice", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_the_layout_contracts_hold() -> None:
    """Every import in the package flows the way the contracts draw it."""
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in CONTRACTS.values():
        assert f"{name} KEPT" in result.stdout


def test_an_untouched_copy_passes(package_copy: Path) -> None:
    """The copy the failure cases break is itself clean, so only the added import breaks it."""
    result = lint_imports(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        # The store reaching up into the engine (the cycle the layout removed).
        ("store/queue.py", "from sluice.engine import decide", "flow"),
        # The drivers and the API are siblings: they never import each other.
        ("drivers/embedded.py", "import sluice.api.app", "flow"),
        # The runtime builder pulling in the web framework reaches every worker indirectly.
        ("runtime.py", "import fastapi", "workers"),
        # Providers report what a third party said; the store is the engine's business.
        ("providers/http.py", "from sluice.store import rows", "providers-no-store"),
        ("sandbox/core.py", "import sluice.store.queue", "sandbox-apart"),
        ("engine/execute.py", "import sluice.sandbox.app", "sandbox-unused"),
    ],
)
def test_a_wrong_import_breaks_its_contract(
    package_copy: Path, module: str, wrong_import: str, contract: str
) -> None:
    """Adding one import against the flow makes lint-imports fail, naming the broken contract."""
    path = package_copy / "sluice" / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{wrong_import}  # noqa\n")
    result = lint_imports(package_copy, contract)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{CONTRACTS[contract]} BROKEN" in result.stdout


WORKER_SCRIPT = """
import json, sys
from sluice.cli import app  # the console script `sluice worker` starts from
from sluice.celery_app import pump  # what `celery -A sluice.celery_app` loads
sent = pump(0.2)  # a pump as a worker runs it: builds the runtime, reconciles, dispatches
print(json.dumps({"sent": sent, "modules": sorted(sys.modules)}))
"""


def test_a_celery_worker_process_loads_no_api_and_no_sandbox(tmp_path: Path) -> None:
    """A process running the worker entry and a whole pump has not imported FastAPI,
    uvicorn, starlette, sluice.api or sluice.sandbox."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")},
        "SLUICE_DATABASE_URL": f"sqlite:///{tmp_path / 'worker.db'}",
    }
    result = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["sent"] == 0
    assert "sluice.drivers.pump" in report["modules"]
    loaded = [
        m for m in report["modules"] if m.split(".")[0] in ("fastapi", "starlette", "uvicorn")
    ]
    loaded += [m for m in report["modules"] if m.startswith(("sluice.api", "sluice.sandbox"))]
    assert loaded == []


def layout_sections() -> dict[str, str]:
    """docs/architecture.md's layout drawing, cut into each top-level entry's text."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    drawing = doc.split("## Layout", 1)[1].split("```", 2)[1]
    sections: dict[str, str] = {}
    name = ""
    for line in drawing.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            name = line.split()[0]
        sections[name] = sections.get(name, "") + line + "\n"
    return sections


def test_the_architecture_layout_describes_every_module() -> None:
    """Each module of the package is named in docs/architecture.md's layout, under its part
    (the sandbox's modules are listed in its own __init__ and migrations by number)."""
    sections = layout_sections()
    whole = "".join(sections.values())
    missing = []
    for path in sorted((ROOT / "sluice").rglob("*.py")):
        parts = path.relative_to(ROOT / "sluice").parts
        if path.stem == "__init__" or parts[0] in ("sandbox",) or "migrations" in parts:
            continue
        if len(parts) == 1:
            found = re.search(rf"\b{re.escape(path.name)}", whole)
        else:
            found = re.search(rf"\b{re.escape(path.stem)}\b", sections.get(f"{parts[0]}/", ""))
        if not found:
            missing.append("/".join(parts))
    assert missing == []
