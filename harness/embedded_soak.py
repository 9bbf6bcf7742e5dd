"""An embedded Sluice run as a small team runs it, for an hour, killed now and then.

``python -m harness.embedded_soak [--minutes 45] [--dir D]`` starts ``sluice sandbox`` (auth,
transient faults, slow answers, asynchronous processing, 20/s and 12 writes/s on sliding
seconds) and ``sluice up`` on a SQLite file, each a process of its own on free loopback
ports, and sends a mixed load to the REST API: single creates with and without an
``Idempotency-Key`` (some sent twice), bulk trees (campaign, ad groups, ads through
``parent_index``; half with per-item keys, some sent twice), IP-range audiences (one in ten
with a bad range), cancels, retries of failed tasks, a bulk retry, a pin, pauses of the
provider and of its write key, and ``sluice submit FILE --api`` runs (some stopped with
SIGTERM and run again). Every few minutes ``sluice up`` is killed (SIGKILL; twice SIGTERM)
and started again; once the sandbox is killed and started again (it forgets every object,
as no real DSP would: what follows from that is counted apart).

Then it waits for every task to be final and judges from outside: the sandbox's stats and
its arrival log (objects per client reference, the busiest sliding second), the API's
answers (every 201 in the database, replays answered with the first ids), the SQLite file
(every task final, children sent only after their parents completed), the samples taken
every 15 s (database, WAL and RSS of ``sluice up``), and the logs (no traceback, no
secret). Everything lands in ``D`` (``records.jsonl``, ``samples.jsonl``, the logs, the
sandbox's snapshots) and the verdict in ``D/report.json``. Traffic stays on loopback, and
every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from bisect import bisect_left
from pathlib import Path
from typing import Any

import httpx

from harness.cluster import free_port

SECRET = "sbx-soak-secret-7c1d"  # noqa: S105 (the sandbox's own; must never reach a log)
FINAL = ("Completed", "Error", "Cancelled")
APP_LIMIT, WRITE_LIMIT = 20, 12

CONFIG = """\
[sluice]
default_provider = "sandbox"

[providers.sandbox]
preset = "sandbox-standard"
base_url = "http://127.0.0.1:{sandbox_port}"
rate_limit = "{app}/s"
quota = "40000/h"

[[providers.sandbox.limits]]
scope = "write"
rate = "{writes}/s"

[providers.sandbox.auth]
request = "POST /oauth/token"
body = {{ client_id = "soak", client_secret = "${{SANDBOX_SECRET}}" }}

[sandbox]
profile = "standard"
seed = {seed}
port = {sandbox_port}
auth = true
token_lifetime_s = 60
credentials = {{ soak = "{secret}" }}
accept_delay_s = [0.5, 2.0]
process_delay_s = [2.0, 8.0]
arrival_log_cap = 400000
limits = [
  {{ name = "app", per = "app", scope = "all", limit = {app}, window_s = 1 }},
  {{ name = "writes", per = "app", scope = "write", limit = {writes}, window_s = 1 }},
]

[sandbox.faults]
error_5xx = 0.02
unavailable_503 = 0.01
reset = 0.01
commit_then_timeout = 0.01
hang_s = 4
error_body = 0.005
token_expiry = 0.005
slow = 0.03
slow_s = 3
"""


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.dir = Path(args.dir or tempfile.mkdtemp(prefix="sluice-soak-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.minutes = args.minutes
        self.kill_every = (args.kill_min_s, args.kill_max_s)
        self.sandbox_kill_at = args.sandbox_kill_at
        self.sigterm_at = {3, 7}
        self.rng = random.Random(args.seed)
        self.api_port, self.sandbox_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.sandbox = f"http://127.0.0.1:{self.sandbox_port}"
        self.db = self.dir / "sluice.db"
        (self.dir / "sluice.toml").write_text(
            CONFIG.format(
                sandbox_port=self.sandbox_port,
                app=APP_LIMIT,
                writes=WRITE_LIMIT,
                seed=args.seed,
                secret=SECRET,
            )
        )
        self.env = {
            **os.environ,
            "SANDBOX_SECRET": SECRET,
            "SLUICE_CONFIG": str(self.dir / "sluice.toml"),
            "SLUICE_DATABASE_URL": f"sqlite:///{self.db}",
            "SLUICE_PORT": str(self.api_port),
            "SLUICE_AUTH": "required",
            "SLUICE_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        }
        self.env.pop("SLUICE_REDIS_URL", None)
        made = self.sluice("keys", "create", "--name", "soak", "--role", "admin")
        self.key = made.stdout.split()[-1].strip()
        self.client = httpx.Client(
            base_url=self.api, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.t0 = time.time()
        self.up: subprocess.Popen[bytes] | None = None
        self.sbx: subprocess.Popen[bytes] | None = None

    # -- processes ------------------------------------------------------------------------
    def sluice(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sluice", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )

    def now(self) -> float:
        return round(time.time() - self.t0, 2)

    def rec(self, kind: str, **fields: Any) -> None:
        with self.lock, (self.dir / "records.jsonl").open("a") as out:
            out.write(json.dumps({"k": kind, "t": self.now(), **fields}) + "\n")

    def spawn(self, log: str, *argv: str) -> subprocess.Popen[bytes]:
        with (self.dir / log).open("ab") as out:
            out.write(f"=== start at {self.now()}\n".encode())
            out.flush()
            return subprocess.Popen(
                [sys.executable, "-m", "sluice", *argv],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.dir,
            )

    def ready(self, process: subprocess.Popen[bytes], url: str, what: str) -> None:
        started = time.time()
        while time.time() - started < 60:
            if process.poll() is not None:
                self.rec(f"{what}_exited_at_start", pid=process.pid, rc=process.returncode)
                return
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    self.rec(f"{what}_started", pid=process.pid, ready_s=time.time() - started)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.rec(f"{what}_start_timeout", pid=process.pid)

    def start_sandbox(self) -> None:
        self.sbx = self.spawn("sandbox.log", "sandbox", "--port", str(self.sandbox_port))
        self.ready(self.sbx, f"{self.sandbox}/healthz", "sb")

    def start_up(self) -> None:
        self.up = self.spawn("up.log", "up", "--port", str(self.api_port))
        self.ready(self.up, f"{self.api}/readyz", "up")

    def stop_up(self, sig: int) -> None:
        assert self.up is not None
        started = time.time()
        self.up.send_signal(sig)
        try:
            self.up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.rec("up_stop_timeout", pid=self.up.pid, sig=sig)
            self.up.kill()
            self.up.wait()
        self.rec(
            "up_stopped",
            pid=self.up.pid,
            sig=sig,
            rc=self.up.returncode,
            stop_s=round(time.time() - started, 2),
        )

    def snapshot(self, tag: str) -> None:
        """The sandbox's stats, objects and arrivals, in ``sandbox-TAG.json``; tried five
        times (listing the objects is a ``/v1`` call: the sandbox's faults hit it too)."""
        for _ in range(4):
            if self.snapshot_once(tag):
                return
            time.sleep(1)
        self.snapshot_once(tag)

    def snapshot_once(self, tag: str) -> bool:
        try:
            token = httpx.post(
                f"{self.sandbox}/oauth/token", json={"client_id": "soak", "client_secret": SECRET}
            ).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            snap: dict[str, Any] = {
                "stats": httpx.get(f"{self.sandbox}/_sandbox/stats", timeout=30).json(),
                "objects": {
                    c: httpx.get(f"{self.sandbox}/v1/{c}", headers=auth, timeout=60).json()["data"]
                    for c in ("campaigns", "ad_groups", "ads", "audiences")
                },
                "arrivals": httpx.get(f"{self.sandbox}/_sandbox/arrivals", timeout=60).json(),
            }
            (self.dir / f"sandbox-{tag}.json").write_text(json.dumps(snap))
            self.rec("sb_snapshot", tag=tag)
            return True
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            self.rec("sb_snapshot_failed", tag=tag, error=repr(exc))
            return False

    # -- chaos and samples ----------------------------------------------------------------
    def chaos(self) -> None:
        end = self.t0 + self.minutes * 60
        n = 0
        while not self.stop.is_set() and time.time() < end - 120:
            self.stop.wait(self.rng.uniform(*self.kill_every))
            if self.stop.is_set() or time.time() > end - 90:
                break
            n += 1
            if n == self.sandbox_kill_at:
                self.snapshot("before-kill")
                assert self.sbx is not None
                self.sbx.kill()
                self.sbx.wait()
                self.rec("sb_killed", pid=self.sbx.pid)
                time.sleep(8)
                self.start_sandbox()
                continue
            self.stop_up(signal.SIGTERM if n in self.sigterm_at else signal.SIGKILL)
            time.sleep(self.rng.choice([0.0, 0.5, 2.0, 5.0]))
            self.start_up()

    def size(self, path: Path) -> int:
        try:
            return path.stat().st_size
        except OSError:
            return -1

    def sample(self) -> None:
        row: dict[str, Any] = {
            "t": self.now(),
            "db": self.size(self.db),
            "wal": self.size(Path(f"{self.db}-wal")),
        }
        up = self.up
        if up is not None and up.poll() is None:
            row["pid"] = up.pid
            try:
                for line in Path(f"/proc/{up.pid}/status").read_text().splitlines():
                    if line.startswith(("VmRSS", "Threads")):
                        name, value = line.split(":", 1)
                        row[name] = int(value.split()[0])
                row["fds"] = len(os.listdir(f"/proc/{up.pid}/fd"))
            except OSError:
                pass
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            row["tasks"] = conn.execute("select count(*) from tasks").fetchone()[0]
            row["open"] = conn.execute(
                "select count(*) from tasks where status in ('Not Started', 'In Progress')"
            ).fetchone()[0]
            conn.close()
        except sqlite3.Error as exc:
            row["sqlite_error"] = str(exc)
        with self.lock, (self.dir / "samples.jsonl").open("a") as out:
            out.write(json.dumps(row) + "\n")

    def sampler(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(15)

    # -- load -----------------------------------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
        safe: bool = True,
    ) -> httpx.Response | None:
        """Send, trying again while the API is down; a call without idempotency that may
        have reached the API is not sent again (recorded as ambiguous)."""
        started = time.time()
        while time.time() - started < 120:
            try:
                answer = self.client.request(method, path, json=body, headers=headers)
            except httpx.ConnectError:
                time.sleep(0.5)
                continue
            except httpx.HTTPError as exc:
                if not safe:
                    self.rec("ambiguous", path=path, error=type(exc).__name__)
                    return None
                time.sleep(0.5)
                continue
            if answer.status_code >= 500:
                self.rec("http_5xx", path=path, status=answer.status_code, body=answer.text[:300])
                if not safe:
                    return answer
                time.sleep(1)
                continue
            return answer
        return None

    def created(self, answer: httpx.Response | None, via: str, **fields: Any) -> list[int]:
        if answer is None or answer.status_code != 201:
            self.rec(
                "create_failed",
                via=via,
                status=None if answer is None else answer.status_code,
                body=None if answer is None else answer.text[:300],
            )
            return []
        body = answer.json()
        ids: list[int] = body["ids"] if "ids" in body else [body["id"]]
        self.rec("created", ids=ids, via=via, **fields)
        return ids

    def campaign(self, tag: str) -> dict[str, object]:
        return {
            "advertiser_id": f"adv-{self.rng.randint(1, 3)}",
            "name": f"cmp {tag}",
            "budget": self.rng.randint(100, 9000),
        }

    def replayed(self, ids: list[int], again: httpx.Response | None) -> None:
        got = None if again is None or again.status_code != 201 else again.json()
        same = got is not None and (got.get("ids") or [got.get("id")]) == ids
        self.rec(
            "replay",
            ok=same and again is not None and again.headers.get("Idempotent-Replayed") == "true",
            ids=ids,
            status=None if again is None else again.status_code,
        )

    def singles(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            body = {"kind": "campaign", "payload": self.campaign(f"s{n}")}
            if self.rng.random() < 0.5:
                key = {"Idempotency-Key": f"single-{uuid.uuid4()}"}
                ids = self.created(self.call("POST", "/api/tasks", body, key), "single-key")
                if ids and self.rng.random() < 0.15:
                    self.replayed(ids, self.call("POST", "/api/tasks", body, key))
            else:
                self.created(self.call("POST", "/api/tasks", body, safe=False), "single")
            self.stop.wait(self.rng.uniform(0.3, 0.9))

    def trees(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            items: list[dict[str, object]] = []
            for c in range(self.rng.randint(1, 3)):
                ci = len(items)
                items.append({"kind": "campaign", "payload": self.campaign(f"b{n}.{c}")})
                for g in range(2):
                    gi = len(items)
                    bid = round(self.rng.uniform(0.1, 4), 2)
                    items.append(
                        {
                            "kind": "ad_group",
                            "parent_index": ci,
                            "payload": {"name": f"adg b{n}.{c}.{g}", "bid": bid},
                        }
                    )
                    for a in range(self.rng.randint(1, 3)):
                        items.append(
                            {
                                "kind": "ad",
                                "parent_index": gi,
                                "payload": {"name": f"ad b{n}.{c}.{g}.{a}"},
                            }
                        )
            keyed = self.rng.random() < 0.5
            if keyed:
                for i, item in enumerate(items):
                    item["idempotency_key"] = f"bulk-{self.t0}-{n}-{i}"
            answer = self.call("POST", "/api/tasks/bulk", {"tasks": items}, safe=keyed)
            ids = self.created(answer, "bulk-key" if keyed else "bulk")
            if ids and keyed and self.rng.random() < 0.2:
                self.replayed(ids, self.call("POST", "/api/tasks/bulk", {"tasks": items}))
            self.stop.wait(self.rng.uniform(2, 5))

    def audiences(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            ranges = [
                f"10.{self.rng.randint(0, 255)}.{self.rng.randint(0, 255)}.0/24" for _ in range(3)
            ]
            if self.rng.random() < 0.1:
                ranges.append("192.168.1.256")
            body = {
                "kind": "audience",
                "payload": {
                    "advertiser_id": f"adv-{self.rng.randint(1, 3)}",
                    "name": f"aud {n}",
                    "type": "ip_range",
                    "include": ranges,
                    "exclude": [],
                },
            }
            key = {"Idempotency-Key": f"aud-{uuid.uuid4()}"}
            self.created(self.call("POST", "/api/tasks", body, key), "audience")
            self.stop.wait(self.rng.uniform(1.5, 3))

    def recent_ids(self) -> list[int]:
        with self.lock:
            lines = (self.dir / "records.jsonl").read_text().splitlines()[-300:]
        return [i for line in lines if (r := json.loads(line))["k"] == "created" for i in r["ids"]]

    def control(self, action: str, path: str, body: object, hold_s: float, undo: str) -> None:
        answer = self.call("POST", path, body)
        self.rec(action, status=None if answer is None else answer.status_code)
        if hold_s:
            self.stop.wait(hold_s)
            again = self.call("POST", undo, {})
            self.rec(f"{action}_undone", status=None if again is None else again.status_code)

    def ops(self) -> None:
        last_control = last_bulk = time.time()
        while not self.stop.wait(self.rng.uniform(5, 12)):
            ids = self.recent_ids()
            if ids:
                task_id = self.rng.choice(ids)
                answer = self.call("POST", f"/api/tasks/{task_id}/cancel", {})
                self.rec(
                    "cancel", id=task_id, status=None if answer is None else answer.status_code
                )
            listing = self.call("GET", "/api/tasks?status=Error&limit=20")
            if listing is not None and listing.status_code == 200 and listing.json()["items"]:
                task_id = self.rng.choice(listing.json()["items"])["id"]
                answer = self.call("POST", f"/api/tasks/{task_id}/retry", {})
                self.rec("retry", id=task_id, status=None if answer is None else answer.status_code)
            if time.time() - last_control > self.rng.uniform(240, 360):
                last_control = time.time()
                which = self.rng.choice(["pin", "pause", "pause_write"])
                if which == "pin":
                    body = {"rate": "4/s", "reason": "soak pin"}
                    path = "/api/limits/sandbox:write/"
                    self.control("pin", path + "pin", body, 60, path + "unpin")
                elif which == "pause":
                    body = {"reason": "soak pause", "duration": "40s"}
                    self.control("pause", "/api/providers/sandbox/pause", body, 0, "")
                else:
                    path = "/api/limits/sandbox:write/"
                    self.control(
                        "pause_write", path + "pause", {"reason": "soak"}, 30, path + "resume"
                    )
            if time.time() - last_bulk > 600:
                last_bulk = time.time()
                retry = {"action": "retry", "filter": {"status": "Error", "kind": "ad_group"}}
                answer = self.call("POST", "/api/bulk-actions", retry)
                self.rec("bulk_retry", status=None if answer is None else answer.status_code)

    def submits(self) -> None:
        n = 0
        while not self.stop.wait(self.rng.uniform(150, 240)):
            n += 1
            tag = f"f{n}-{int(self.t0)}"
            tasks = [
                {
                    "kind": "campaign",
                    "payload": self.campaign(f"{tag}.{c}"),
                    "children": [
                        {
                            "kind": "ad_group",
                            "payload": {"name": f"adg {tag}.{c}.{g}", "bid": 1.0},
                            "children": [
                                {"kind": "ad", "payload": {"name": f"ad {tag}.{c}.{g}.{a}"}}
                                for a in range(2)
                            ],
                        }
                        for g in range(3)
                    ],
                }
                for c in range(3)
            ]
            path = self.dir / f"submit-{n}.json"
            path.write_text(json.dumps({"tasks": tasks}))
            argv = [sys.executable, "-m", "sluice", "submit", str(path), "--api", self.api]
            env = {**self.env, "SLUICE_API_KEY": self.key}
            with (self.dir / f"submit-{n}.out").open("ab") as out:
                proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
                if self.rng.random() < 0.4:  # the terminal is lost: run it again
                    time.sleep(self.rng.uniform(0.2, 3))
                    proc.terminate()
                    proc.wait()
                    self.rec("submit_stopped", n=n, rc=proc.returncode)
                    out.write(b"\n=== again\n")
                    out.flush()
                    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
                try:
                    proc.wait(timeout=600)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.rec("submit", n=n, tag=tag, rc=proc.returncode, tasks=30)

    # -- the run --------------------------------------------------------------------------
    def open_tasks(self) -> int:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return int(
                conn.execute(
                    "select count(*) from tasks where status in ('Not Started', 'In Progress')"
                ).fetchone()[0]
            )
        finally:
            conn.close()

    def run(self, drain_s: float) -> None:
        self.start_sandbox()
        self.start_up()
        load = [
            threading.Thread(target=f, daemon=True)
            for f in (self.singles, self.trees, self.audiences, self.ops, self.submits)
        ]
        sampler = threading.Thread(target=self.sampler, daemon=True)
        chaos = threading.Thread(target=self.chaos, daemon=True)
        for thread in [sampler, *load, chaos]:
            thread.start()
        self.stop.wait(self.minutes * 60)
        self.rec("load_stop")
        self.stop.set()
        chaos.join()
        for thread in load:
            thread.join(timeout=700)
        if self.up is None or self.up.poll() is not None:
            self.start_up()
        started = time.time()
        while (left := self.open_tasks()) and time.time() - started < drain_s:
            self.sample()
            time.sleep(10)
        self.sample()
        self.rec("drained", open=left, after_s=round(time.time() - started, 1))
        self.snapshot("end")
        self.stop_up(signal.SIGTERM)
        assert self.sbx is not None
        self.sbx.terminate()
        self.sbx.wait()


# -- the verdict --------------------------------------------------------------------------
def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max((i - bisect_left(times, t - 1.0 + 1e-9) + 1 for i, t in enumerate(times)), default=0)


def judge(folder: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    conn = sqlite3.connect(f"file:{folder / 'sluice.db'}?mode=ro", uri=True)
    tasks = {
        row[0]: row
        for row in conn.execute(
            "select id, status, phase, parent_id, external_id, client_ref, kind from tasks"
        )
    }
    events: dict[int, list[tuple[str, str, str | None, str | None]]] = collections.defaultdict(list)
    for task_id, at, event, to_status, detail in conn.execute(
        "select task_id, at, event, to_status, detail from task_events order by id"
    ):
        events[task_id].append((at, event, to_status, detail))
    v: dict[str, Any] = {"records": dict(collections.Counter(r["k"] for r in records))}
    got = [i for r in records if r["k"] == "created" for i in r["ids"]]
    v["answered_201"] = len(got)
    v["answered_201_missing_from_db"] = [i for i in got if i not in tasks]
    v["replays_wrong"] = [r for r in records if r["k"] == "replay" and not r["ok"]]
    v["api_5xx"] = [r for r in records if r["k"] == "http_5xx"][:10]
    v["tasks"] = len(tasks)
    v["by_status"] = dict(collections.Counter(t[1] for t in tasks.values()))
    v["not_final"] = [t[0] for t in tasks.values() if t[1] not in FINAL][:20]
    early = []
    for task in tasks.values():
        sent = [e[0] for e in events[task[0]] if e[1] == "submitted"]
        if task[3] is None or not sent:
            continue
        done = [e[0] for e in events[task[3]] if e[2] == "Completed"]
        if not done or min(sent) < min(done):
            early.append(task[0])
    v["children_sent_before_parent_completed"] = early
    # The sandbox: each life on its own (a restarted sandbox starts empty and counts anew).
    by_ref: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
    lives = {}
    for tag in ("before-kill", "end"):
        path = folder / f"sandbox-{tag}.json"
        if not path.exists():
            continue
        snap = json.loads(path.read_text())
        stats, arrivals = snap["stats"], snap["arrivals"]
        judged = [a for a in arrivals["arrivals"] if a[4] in ("admitted", "refused")]
        lives[tag] = {
            "requests": stats["total_requests"],
            "refused": stats["refused_total"],
            "max_in_window": stats["max_in_window"],
            "duplicate_count": stats["duplicate_count"],
            "answers_409": sum(c.get("409", 0) for c in stats["requests"].values()),
            "arrivals_dropped": arrivals["dropped"],
            "busiest_second_all": busiest_second([a[1] for a in judged]),
            "busiest_second_writes": busiest_second(
                [a[1] for a in judged if a[2].startswith("POST")]
            ),
        }
        for collection, objects in snap["objects"].items():
            for obj in objects:
                if obj.get("client_ref"):
                    by_ref[obj["client_ref"]].append((tag, collection, obj["id"]))
    v["sandbox"] = lives
    v["objects_twice_in_one_life"] = {
        ref: objs
        for ref, objs in by_ref.items()
        if max(collections.Counter(o[0] for o in objs).values()) > 1
    }
    v["objects_again_after_the_sandbox_forgot"] = sum(
        1 for objs in by_ref.values() if len({o[0] for o in objs}) > 1
    )
    refs = {t[5] for t in tasks.values() if t[5]}
    named = collections.defaultdict(set)
    retried = set()
    for task_id, evs in events.items():
        for _at, event, _to, detail in evs:
            if event in ("submitted", "found") and detail and "sandbox id " in detail:
                named[detail.split("sandbox id ", 1)[1].strip()].add(task_id)
            if event == "retried" and detail and "creating it again as" in detail:
                retried.add(task_id)
    v["objects_of_no_task"] = [
        (ref, objs)
        for ref, objs in by_ref.items()
        if ref not in refs and not any(named.get(o[2], set()) & retried for o in objs)
    ]
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    v["db_bytes_end"] = samples[-1]["db"]
    v["wal_bytes_max"] = max(s["wal"] for s in samples)
    rss: dict[int, list[int]] = collections.defaultdict(list)
    for s in samples:
        if "VmRSS" in s:
            rss[s["pid"]].append(s["VmRSS"])
    v["rss_kb_per_process"] = {pid: (r[0], max(r), r[-1], len(r)) for pid, r in rss.items()}
    v["restarts_ready_s"] = [round(r["ready_s"], 2) for r in records if r["k"] == "up_started"]
    v["stops"] = [(r["sig"], r["rc"], r["stop_s"]) for r in records if r["k"] == "up_stopped"]
    for name in ("up.log", "sandbox.log"):
        text = (folder / name).read_text(errors="replace")
        v[name] = {
            "lines": text.count("\n"),
            "traceback": text.count("Traceback"),
            "secret": text.count(SECRET),
            "api_key": len(re.findall(r"sk_[0-9a-f]{12}_", text)),
            "recovered": re.findall(r"tasks\.recovered [^\n]*", text),
        }
    return v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=45.0, help="load time (then a drain)")
    parser.add_argument("--dir", help="where to write everything (default: a new temp dir)")
    parser.add_argument("--kill-min-s", type=float, default=150.0)
    parser.add_argument("--kill-max-s", type=float, default=270.0)
    parser.add_argument(
        "--sandbox-kill-at", type=int, default=5, help="which chaos event (0: never)"
    )
    parser.add_argument("--drain-s", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--judge-only", action="store_true", help="judge --dir again")
    args = parser.parse_args(argv)
    if not args.judge_only:
        soak = Soak(args)
        print(f"soak in {soak.dir}", flush=True)
        soak.run(args.drain_s)
        args.dir = str(soak.dir)
    verdict = judge(Path(args.dir))
    (Path(args.dir) / "report.json").write_text(json.dumps(verdict, indent=1, default=str))
    print(json.dumps(verdict, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
