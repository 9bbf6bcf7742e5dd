"""The installed ``sluice`` script, as an operator's shell runs it: a command line that does
not parse is one line on stderr and exit status 2 (read from the process, not through a pipe)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sluice

SLUICE = Path(sys.executable).with_name("sluice")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("submit", "--bogus"),
            "sluice submit: no such option: --bogus (see 'sluice submit --help')",
        ),
        (
            ("db", "prune", "--older-than", "30d", "--batch", "many"),
            "sluice db prune: invalid value for '--batch': Input should be a valid integer, "
            "unable to parse string as an integer (see 'sluice db prune --help')",
        ),
    ],
    ids=["unknown option", "nested bad number"],
)
def test_the_script_says_a_usage_error_in_one_line_with_exit_status_2(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    """No box, no traceback, nothing on stdout, and the status a script can test."""
    env = {**os.environ, "PYTHONPATH": str(Path(sluice.__file__).parents[1]), "COLUMNS": "80"}

    done = subprocess.run(
        [str(SLUICE), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 2
    assert done.stderr.splitlines() == [expected]
    assert done.stdout == ""
    assert not (tmp_path / "sluice.db").exists()
