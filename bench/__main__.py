"""Run every benchmark: each ``bench/*.py`` module that has a ``main()``.

Run: ``python -m bench [NAME ...]`` (names select modules, e.g. ``python -m bench ingest``).
Each module is run with its default arguments and writes its own ``bench/results/*.json``.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def benchmark_names() -> list[str]:
    """Names of the modules beside this file that define ``main``, in name order."""
    names = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{path.stem}")
        if callable(getattr(module, "main", None)):
            names.append(path.stem)
    return names


def main(argv: list[str] | None = None) -> int:
    """Run the selected (default: all) benchmarks; non-zero exit if any failed."""
    wanted = sys.argv[1:] if argv is None else argv
    names = benchmark_names()
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
        return 2
    failed: list[str] = []
    for name in wanted or names:
        print(f"== bench.{name}", flush=True)
        started = time.monotonic()
        try:
            importlib.import_module(f"bench.{name}").main([])
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"== bench.{name}: {time.monotonic() - started:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
