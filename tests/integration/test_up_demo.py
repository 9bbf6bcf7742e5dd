"""``sluice up --demo --exit-when-done`` in-process: it ends by itself, and says why it failed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from harness.cluster import free_port
from sluice import runtime
from sluice.settings import load_settings
from sluice.up import UpOptions, run_up

pytestmark = pytest.mark.timeout(90)


def _run(demo_file: Path | None = None) -> tuple[int, str]:
    settings = load_settings(sandbox={"port": free_port()})
    out = io.StringIO()
    options = UpOptions(
        host="127.0.0.1", port=free_port(), demo=True, exit_when_done=True, demo_file=demo_file
    )
    code = run_up(settings, options, Console(file=out, width=200))
    return code, out.getvalue()


def test_demo_exits_zero_once_every_task_is_final() -> None:
    """With --exit-when-done the embedded demo ends by itself, exit code 0, every task final."""
    code, output = _run()

    assert code == 0, output
    assert "480/480 demo tasks final" in output
    assert "Invalid IP range: 192.168.1.256" in output


def test_a_demo_that_cannot_run_ends_with_one_line_and_exit_code_1(tmp_path: Path) -> None:
    """A demo file that cannot be read ends `sluice up --exit-when-done` with 1, no traceback."""
    missing = tmp_path / "nowhere.json"

    code, output = _run(missing)

    assert code == 1
    assert f"demo failed: InvalidTask: {missing}: no such file" in output
    assert "Traceback" not in output


def test_default_sandbox_provider_follows_the_sandbox_port() -> None:
    """With no [providers], tasks go to the sandbox at the [sandbox] table's port."""
    settings = runtime.with_default_providers(load_settings(sandbox={"port": 9321}))

    assert settings.providers["sandbox"]["base_url"] == "http://127.0.0.1:9321"
    assert settings.providers["sandbox"]["preset"] == "sandbox-demo"
