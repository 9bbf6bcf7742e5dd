"""The cap on malloc arenas, seen in glibc's own account of its heaps (``malloc_info``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sluice import process_memory

THREADS = 8

# Eight threads allocate at once, each blocks too large for Python's small-object
# allocator (so glibc's malloc serves them), then glibc writes its heaps as XML.
SCRIPT = f"""
import ctypes, ctypes.util, sys, threading
from sluice import process_memory
if sys.argv[1] == "capped":
    assert process_memory.limit_malloc_arenas(2)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
start = threading.Barrier({THREADS})
kept = []
def allocate():
    start.wait()
    kept.append([bytes(4096) for _ in range(100)])
threads = [threading.Thread(target=allocate) for _ in range({THREADS})]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, out)
libc.fclose(out)
"""


def _glibc() -> bool:
    name = ctypes.util.find_library("c")
    return name is not None and hasattr(ctypes.CDLL(name), "malloc_info")


def fresh_process_env() -> dict[str, str]:
    """This environment without an operator's arena setting, importing the ``sluice``
    under test (not another checkout's)."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env["PYTHONPATH"] = str(Path(process_memory.__file__).parents[1])
    return env


def heaps_after_threads(mode: str, tmp_path: Path) -> int:
    """How many malloc heaps (arenas) a fresh process has after its threads allocated."""
    report = tmp_path / f"{mode}.xml"
    env = fresh_process_env()
    subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(report)], check=True, env=env, timeout=60
    )
    return len(re.findall(r'<heap nr="\d+"', report.read_text()))


@pytest.mark.skipif(not _glibc(), reason="malloc arenas are glibc's")
def test_the_cap_keeps_threads_to_two_arenas(tmp_path: Path) -> None:
    # Without the cap each new thread gets an arena of its own (up to 8 per core).
    assert heaps_after_threads("free", tmp_path) > 2
    assert heaps_after_threads("capped", tmp_path) <= 2


def test_an_operators_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert process_memory.limit_malloc_arenas() is False


# A fragmented heap: 60 MB of blocks glibc's malloc serves, one in fifty kept, the rest
# freed. What the process holds privately is read before and after the release.
TRIM_SCRIPT = """
from sluice import process_memory
def private_kib():
    with open("/proc/self/smaps_rollup") as rollup:
        return sum(int(line.split()[1]) for line in rollup if line.startswith("Private_"))
blocks = [bytes(2000) + str(i).encode() for i in range(30_000)]
kept = blocks[::50]
del blocks
before = private_kib()
released = process_memory.release_free_memory()
print(released, before, private_kib())
"""


@pytest.mark.skipif(
    not _glibc() or not Path("/proc/self/smaps_rollup").exists(), reason="glibc on Linux"
)
def test_free_pages_in_the_middle_of_the_heap_go_back() -> None:
    done = subprocess.run(
        [sys.executable, "-c", TRIM_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env=fresh_process_env(),
    )
    assert done.returncode == 0, done.stderr
    released, before, after = done.stdout.split()
    assert released == "True"
    # About 59 MB were freed between the kept blocks; glibc keeps them until trimmed.
    assert int(before) - int(after) > 40_000, (before, after)
