"""What the API and the sandbox would add to a worker process: modules and memory.

Run: ``python -m bench.api_import_cost [--runs 3]``. In a fresh process each run imports
what ``sluice worker`` loads (the CLI, the Celery app, the pump, the runtime builder), reads
RSS and USS (private pages) from ``/proc/self/smaps_rollup``, then imports
``sluice.api.app``, ``sluice.sandbox.app`` and uvicorn and reads them again. Prints one JSON
line per run and the median difference, and writes ``bench/results/api_import_cost.json``.
No servers needed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from bench._common import machine_info

RESULTS = Path(__file__).parent / "results" / "api_import_cost.json"

PROBE = """
import gc, json, sys
from pathlib import Path

def memory():
    figures = {"rss": 0, "uss": 0}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == "Rss":
            figures["rss"] = int(rest.split()[0])
        elif name in ("Private_Clean", "Private_Dirty"):
            figures["uss"] += int(rest.split()[0])
    return figures

import sluice.cli, sluice.celery_app, sluice.drivers.pump, sluice.runtime
gc.collect(); worker, worker_modules = memory(), len(sys.modules)
import sluice.api.app, sluice.sandbox.app, uvicorn
gc.collect(); both, both_modules = memory(), len(sys.modules)
print(json.dumps({"worker_kib": worker, "with_api_and_sandbox_kib": both,
                  "added_kib": {k: both[k] - worker[k] for k in worker},
                  "added_modules": both_modules - worker_modules}))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    runs = []
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    added = {k: statistics.median(r["added_kib"][k] for r in runs) for k in ("rss", "uss")}
    result = {
        "benchmark": "api_import_cost",
        "command": " ".join(["python -m bench.api_import_cost", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "added_kib_median": added,
        "added_modules": runs[0]["added_modules"],
        "runs": runs,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"median added: {added['rss'] / 1024:.1f} MiB RSS, {added['uss'] / 1024:.1f} MiB USS, "
        f"{runs[0]['added_modules']} modules; wrote {RESULTS}"
    )


if __name__ == "__main__":
    main()
