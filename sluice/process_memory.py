"""How many malloc arenas a long-lived, many-threaded Sluice process may use.

glibc gives each new thread a malloc arena of its own, up to eight per core, and an arena
keeps the memory its thread freed for that thread's next allocations. A worker process
sends from ``executor_threads`` (16) threads, and each of them allocates request bodies,
responses and result rows too large for Python's own small-object allocator. Measured
(``python -m bench.worker_memory --backlog sluice_bench_1m``, docs/scaling.md, Memory): a
pool process's private memory grew from 38 MiB to 54 MiB while a worker sent 140,000
creates; with two arenas, to 47-49 MiB.

This is glibc's ``M_ARENA_MAX``, set with ``mallopt`` through ``ctypes``: no library sets
it, and the environment variable (``MALLOC_ARENA_MAX``) only works when set before the
process starts, which a ``celery`` command line or a container's entry point may not do.
An operator's ``MALLOC_ARENA_MAX`` wins. Elsewhere than glibc (musl, macOS) nothing
happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("sluice.process_memory")

MALLOC_ARENAS = 2
"""Arenas a Sluice process uses: the main one and one shared by every other thread. The
threads allocate while holding Python's global interpreter lock for most of it, so they
seldom contend for an arena's lock."""
M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the arena limit (malloc.h)."""


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap this process's malloc arenas at ``arenas`` (inherited by processes it forks);
    returns whether the cap is now in force. Call it before starting threads: arenas
    already made stay."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied: bool = mallopt(M_ARENA_MAX, arenas) == 1
    log.debug("process_memory.arenas", extra={"arenas": arenas, "applied": applied})
    return applied
