"""How much memory glibc's malloc keeps for a long-lived, many-threaded Sluice process.

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

An arena also keeps what was freed in the middle of its heap: a claim's rows, a batch of
responses and their parsed bodies are freed together, but glibc gives pages back to the
system only from the top of the heap, on its own. ``malloc_trim(0)`` gives back every free
page, wherever it lies; a worker calls it after each pump (:func:`release_free_memory`),
when the round's transient objects are gone. It took 0.2 ms with little to give back and 4
ms with 55 MiB, measured in-process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger("sluice.process_memory")

MALLOC_ARENAS = 2
"""Arenas a Sluice process uses: the main one and one shared by every other thread. The
threads allocate while holding Python's global interpreter lock for most of it, so they
seldom contend for an arena's lock."""
M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter number for the arena limit (malloc.h)."""


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, if it can be loaded (its glibc-only functions are looked up apart)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _glibc_function(name: str) -> ctypes._NamedFuncPointer | None:
    libc = _libc()
    try:
        return None if libc is None else getattr(libc, name)
    except AttributeError:  # not glibc
        return None


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap this process's malloc arenas at ``arenas`` (inherited by processes it forks);
    returns whether the cap is now in force. Call it before starting threads: arenas
    already made stay."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied: bool = mallopt(M_ARENA_MAX, arenas) == 1
    log.debug("process_memory.arenas", extra={"arenas": arenas, "applied": applied})
    return applied


def release_free_memory() -> bool:
    """Give the pages malloc holds free back to the system (glibc's ``malloc_trim(0)``);
    returns whether any were. Never raises; does nothing off glibc."""
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    released: bool = trim(0) == 1
    return released
