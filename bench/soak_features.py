"""Soak of the features together: several DSPs, trees, polls, retries, lookups, a limit per
advertiser, an hourly quota, a fair share between tenants, an adaptive rate, operator
controls and bulk actions mid-run, retention pruning, and kills, judged from outside.

Run: ``python -m bench.soak_features [--minutes 30] [--cpu-hog] [--redis-dbs 11,12]``
(``--minutes 3`` for a smoke run; ``tests/acceptance/test_soak_features.py`` runs 1.5).
Needs PostgreSQL and ``redis-server``. Writes ``bench/results/soak_features.json`` and
keeps the processes' logs in ``$SOAKF_KEEP_LOGS`` (default ``$TMPDIR/soakf-logs``).

The installation (:mod:`harness.cluster`): ``sluice api``, three ``sluice worker``
processes and a separate ``sluice beat`` on PostgreSQL (a fresh database) and Redis
(broker and limiter on a private ``redis-server``, or in the local Redis databases given
by ``--redis-dbs``). Two DSPs of the bench's
own (:mod:`bench._counting_dsp`), which count every call on a strict sliding second and
record it:

* ``dspa``: 20 calls/s provider-wide and 3 creates/s per ``advertiser_id`` (Sluice is
  configured with the same limits); faults: 500, commit-then-500, 503 + Retry-After, 429
  + Retry-After. Tenants ``acme`` (weight 3) and ``globex`` (weight 1), each with its own
  credentials (``X-Account``) and six advertisers.
* ``dspb``: configured at 25/s with ``adaptive = true``, but the DSP allows 12/s (429 +
  Retry-After beyond); a write quota of ``QUOTA_PER_ADV``/h per advertiser, which the
  advertiser ``bq`` spends (its work then waits for the reset).

Work: trees (campaign -> 2 ad groups -> 2 ads each) submitted through the API with each
tenant's key; some campaigns fail validation (their trees end in Error), some ads are
rejected asynchronously. Mid-run, through the API as an operator: a pin on one
advertiser's key of ``dspa``, a pause of ``dspb`` and its resume, a timed pause of
``dspa``, a pin on ``dspb`` and its unpin, a bulk cancel and a bulk retry. Retention
prunes final families. Every ``KILL_EVERY_S`` a random worker gets SIGKILL (process
group); once the API; once every worker at once.

Judged at the end, from the DSPs' records and snapshots of the task table: every task
final (or waiting for the quota's reset), each object created once, no child sent before
its parent was active, no sliding second over a limit, the quota never over, nothing sent
while paused, the pin held, the fair share, an audit entry per control, no pruned task
that was unfinished.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from bench._chaos import code_version, load_average, over_limit_at
from bench._common import machine_info
from bench._engine_harness import RESULTS_DIR, max_in_window, write_json
from harness.cluster import (
    Cluster,
    Proc,
    free_port,
    postgres_database,
    redis_base,
    wait_until,
    write_toml,
)
from harness.redis_server import redis_server

TENANTS = {"acme": 3, "globex": 1}
ADVERTISERS = {"acme": [f"a{i}" for i in range(1, 7)], "globex": [f"g{i}" for i in range(1, 7)]}
A_LIMIT = 20
A_PER_ADV = 3
B_CONFIGURED = 25
B_HIDDEN = 12
QUOTA_PER_ADV = 40
PIN_A_KEY = "dspa:write:advertiser_id=a1"
PIN_A_RATE = 1
PIN_B_RATE = 6
FAULTS_A = {"fault_500": 0.01, "fault_commit_500": 0.01, "fault_503": 0.01, "fault_429": 0.004}
FAULTS_B = {"fault_500": 0.01, "fault_commit_500": 0.01, "fault_503": 0.01}
BACKLOG = {"dspa": 200, "dspb": 60}
TREES_PER_FEED = {"dspa": 6, "dspb": 3}
FEED_EVERY_S = 2.0
KILL_EVERY_S = 150.0
SNAPSHOT_EVERY_S = 10.0
DRAIN_S = 420.0
GRACE_S = 1.0
"""A control reaches every worker within a second (docs/operations.md)."""


def provider(port: int, **extra: Any) -> dict[str, Any]:
    kinds = {}
    for kind, collection, parent in (
        ("campaign", "campaigns", None),
        ("ad_group", "ad_groups", "campaign_id"),
        ("ad", "ads", "ad_group_id"),
    ):
        kinds[kind] = {
            "submit": f"POST /v1/{collection}",
            "client_ref_field": "client_ref",
            "lookup": f"GET /v1/{collection}?client_ref={{client_ref}}",
            "lookup_items_field": "data",
            **({"parent_field": parent} if parent else {}),
        }
    return {
        "base_url": f"http://127.0.0.1:{port}",
        "max_in_flight": 8,
        "timeout": "3s",
        "max_attempts": 10,
        "retry_base": "200ms",
        "retry_max": "3s",
        "headers": {"X-Account": "agency"},
        "rate_limit_signal": {"statuses": [429], "retry_after_header": "Retry-After"},
        "errors": {
            "message_fields": ["error.message"],
            "field_path_fields": ["error.field"],
            "code_field": "error.code",
            "transient_codes": ["PARENT_NOT_READY"],
        },
        "poll": {
            "request": "GET /v1/status?ids={ids}",
            "batch_size": 50,
            "interval": "1s",
            "status_map": {"pending": "In Progress", "active": "Completed", "rejected": "Error"},
        },
        "kinds": kinds,
        "tenants": {t: {"headers": {"X-Account": t}} for t in TENANTS},
        **extra,
    }


class Api:
    """The API with one key per role/tenant; calls retried while the API is down."""

    def __init__(self, url: str, keys: dict[str, str]) -> None:
        self.url = url
        self.keys = keys
        self.http = httpx.Client(base_url=url, timeout=60)

    def call(self, who: str, method: str, path: str, body: Any = None, tries: int = 120) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[who]}"}
        for _ in range(tries):
            try:
                answer = self.http.request(method, path, json=body, headers=headers)
            except httpx.TransportError:
                time.sleep(1.0)
                continue
            if answer.status_code >= 500 or answer.status_code == 429:
                time.sleep(1.0)
                continue
            if answer.status_code >= 400:
                raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
            return answer.json()
        raise RuntimeError(f"{method} {path}: the API did not answer")


def tree(prov: str, tenant: str, number: int, advertiser: str) -> list[dict[str, Any]]:
    """A campaign, 2 ad groups, 2 ads under each; every 10th campaign fails validation,
    every 7th tree has an ad the DSP rejects later."""
    base = f"{prov}-{tenant}-{number}"
    budget = -1.0 if number % 10 == 3 else 100.0

    def item(kind: str, name: str, parent: int | None, **payload: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": kind,
            "provider": prov,
            "idempotency_key": name,
            "payload": {"name": name, "advertiser_id": advertiser, **payload},
        }
        if parent is not None:
            out["parent_index"] = parent
        return out

    items = [item("campaign", f"{base}-c", None, budget=budget)]
    for g in range(2):
        items.append(item("ad_group", f"{base}-g{g}", 0, bid=1.5))
        group = len(items) - 1
        for a in range(2):
            late = "-lateerror" if number % 7 == 5 and g == 1 and a == 1 else ""
            items.append(item("ad", f"{base}-g{g}-a{a}{late}", group))
    return items


class Snapshots:
    """The task table, read every few seconds: each task's last seen row."""

    COLUMNS = (
        "id, tenant, provider, kind, status, phase, external_id, parent_id, client_ref, "
        "payload->>'name' AS name, payload->>'advertiser_id' AS adv, next_attempt_at, "
        "claimed_by, last_error, validation_error, attempts, maybe_created, created_at"
    )

    def __init__(self, database_url: str) -> None:
        self.engine = sa.create_engine(database_url, poolclass=NullPool)
        self.last: dict[int, dict[str, Any]] = {}
        self.pruned: dict[int, dict[str, Any]] = {}
        self.backlog: list[tuple[float, dict[str, int]]] = []
        self.quota_woken: list[int] = []

    def take(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT {self.COLUMNS} FROM tasks")).mappings().all()
        seen = {}
        for row in rows:
            seen[int(row["id"])] = dict(row)
        for task_id in set(self.last) - set(seen):
            self.pruned[task_id] = self.last.pop(task_id)
        self.last.update(seen)
        # Work waiting for a spent quota's reset sits at the top of an hour; one of bq's
        # ready tasks (created over a minute ago, so claimed and given back already) due at
        # another time was woken (by units given back).
        old = datetime.now(UTC) - timedelta(seconds=60)
        self.quota_woken.append(
            sum(
                1
                for r in seen.values()
                if r["adv"] == "bq"
                and r["phase"] == "ready"
                and r["claimed_by"] is None
                and r["created_at"] < old
                and r["next_attempt_at"] is not None
                and (r["next_attempt_at"].minute, r["next_attempt_at"].second) != (0, 0)
            )
        )

    def waiting(self) -> dict[str, int]:
        """Unfinished tasks per ``provider/tenant`` now (one cheap query), but a1's and bq's."""
        # a1 (pinned) and bq (its quota spent) are left out: work they hold up would
        # stop the feed of their tenant's other work and skew the fair share measured.
        rows = self.query(
            "SELECT provider, tenant, count(*) AS n FROM tasks WHERE phase != 'done' "
            "AND coalesce(payload->>'advertiser_id', '') NOT IN ('a1', 'bq') "
            "GROUP BY provider, tenant"
        )
        return {f"{r['provider']}/{r['tenant']}": int(r["n"]) for r in rows}

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text(sql), params).mappings().all()]


class Run:
    def __init__(self, minutes: float, redis_urls: tuple[str, str], prefix: str) -> None:
        self.duration = minutes * 60
        self.redis_urls = redis_urls
        self.prefix = prefix
        self.controls: list[dict[str, Any]] = []
        self.kills: list[dict[str, Any]] = []
        self.started = 0.0
        self.rng = random.Random(11)

    # --- setup ---------------------------------------------------------------------------

    def start(self, stack: ExitStack) -> None:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sluice-soakf-")))
        self.folder = folder
        database_url = stack.enter_context(postgres_database(self.prefix))
        broker, limiter = self.redis_urls
        for url in (broker, limiter):
            redis.Redis.from_url(url).flushdb()
            stack.callback(lambda u=url: redis.Redis.from_url(u).flushdb())
        retention_s = max(45, int(self.duration / 5))
        self.cluster = Cluster(
            folder,
            database_url,
            broker_url=broker,
            redis_url=limiter,
            namespace=f"sluice:soakf:{uuid.uuid4().hex[:8]}",
            settings={
                "SLUICE_LOG_LEVEL": "WARNING",
                "SLUICE_CLAIM_LEASE_S": "20",
                "SLUICE_RECONCILE_EVERY_S": "5",
                "SLUICE_RETENTION_PERIOD": f"{retention_s}s",
                "SLUICE_RETENTION_EVERY_S": "60",
                "SLUICE_EXECUTOR_THREADS": "8",
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            },
        )
        stack.callback(self.cluster.stop)
        self.retention_s = retention_s
        ports = {name: free_port() for name in ("dspa", "dspb", "api")}
        self.dsp_urls = {n: f"http://127.0.0.1:{ports[n]}" for n in ("dspa", "dspb")}
        dsp_configs = {
            "dspa": {"limit": A_LIMIT, "per_advertiser": A_PER_ADV, "seed": 3, **FAULTS_A},
            "dspb": {"limit": B_HIDDEN, "seed": 5, **FAULTS_B},
        }
        for name, config in dsp_configs.items():
            self.cluster.spawn(
                name,
                [
                    "-m",
                    "bench._counting_dsp",
                    "--port",
                    str(ports[name]),
                    "--config",
                    json.dumps(config),
                ],
                command=[sys.executable],
            )
        for url in self.dsp_urls.values():
            wait_until(lambda u=url: self._up(u + "/healthz"), 30, url)
        write_toml(
            self.cluster.config,
            {
                "sluice": {"default_provider": "dspa"},
                "providers.dspa": provider(
                    ports["dspa"],
                    rate_limit=f"{A_LIMIT}/s",
                    limits=[{"rate": f"{A_PER_ADV}/s", "scope": "write", "per": "advertiser_id"}],
                    fairness_weights=TENANTS,
                ),
                "providers.dspb": provider(
                    ports["dspb"],
                    rate_limit=f"{B_CONFIGURED}/s",
                    adaptive=True,
                    judges="window",
                    limits=[
                        {"quota": f"{QUOTA_PER_ADV}/h", "scope": "write", "per": "advertiser_id"}
                    ],
                ),
            },
        )
        self.cluster.upgrade_database()
        self.keys = {"ops": self._key("ops", "operator")}
        for tenant in TENANTS:
            self.keys[tenant] = self._key(tenant, "submitter", tenant)
        self.api_port = ports["api"]
        self.api_proc = self._spawn_api()
        self.api = Api(f"http://127.0.0.1:{ports['api']}", self.keys)
        self.beat = self.cluster.beat()
        self.workers = [self.cluster.worker(f"w{i}", concurrency=2) for i in (1, 2, 3)]
        self.cluster.wait_ready(self.workers, timeout_s=120)
        self.snap = Snapshots(database_url)
        self.database_url = database_url

    def _up(self, url: str) -> bool:
        with suppress(httpx.TransportError):
            return httpx.get(url, timeout=1).status_code == 200
        return False

    def _key(self, name: str, role: str, tenant: str | None = None) -> str:
        argv = [self.cluster.sluice, "keys", "create", "--name", name, "--role", role]
        if tenant:
            argv += ["--tenant", tenant]
        out = subprocess.run(argv, env=self.cluster.env(), capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(out.stderr)
        return next(w for w in out.stdout.split() if w.startswith("sk_"))

    def _spawn_api(self) -> Proc:
        proc = self.cluster.spawn("api", ["api", "--port", str(self.api_port)])
        wait_until(
            lambda: self._up(f"http://127.0.0.1:{self.api_port}/api/healthchecker"), 60, "the API"
        )
        return proc

    # --- actions ------------------------------------------------------------------------

    def control(self, label: str, method: str, path: str, body: Any = None) -> None:
        before = time.time()
        answer = self.api.call("ops", method, path, body)
        after = time.time()
        self.controls.append({"label": label, "path": path, "sent": before, "answered": after})
        print(f"  {self.t():6.0f}s control {label}: {json.dumps(answer)[:160]}", flush=True)

    def bulk(self, label: str, action: str, filt: dict[str, Any]) -> None:
        preview = self.api.call(
            "ops", "POST", "/api/bulk-actions/preview", {"action": action, "filter": filt}
        )
        before = time.time()
        job = self.api.call(
            "ops",
            "POST",
            "/api/bulk-actions",
            {"action": action, "filter": filt, "max_id": preview["max_id"]},
        )
        self.controls.append(
            {
                "label": label,
                "sent": before,
                "answered": time.time(),
                "job": job,
                "count": preview["count"],
            }
        )
        print(f"  {self.t():6.0f}s bulk {label}: {preview} -> {json.dumps(job)[:160]}", flush=True)

    def kill_worker(self, index: int) -> None:
        victim = self.workers[index]
        self.kills.append({"t_s": round(self.t(), 1), "what": victim.name})
        self.workers[index] = self.cluster.crash(victim)
        print(f"  {self.t():6.0f}s kill -9 {victim.name}", flush=True)

    def kill_all(self) -> None:
        self.kills.append({"t_s": round(self.t(), 1), "what": "all workers"})
        for proc in self.workers:
            proc.kill(signal.SIGKILL)
        self.workers = [self.cluster.crash(proc) for proc in self.workers]
        print(f"  {self.t():6.0f}s kill -9 every worker", flush=True)

    def kill_api(self) -> None:
        self.kills.append({"t_s": round(self.t(), 1), "what": "api"})
        self.api_proc.kill(signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.api_proc.popen.wait(timeout=10)
        self.cluster.procs.remove(self.api_proc)
        time.sleep(3)
        self.api_proc = self._spawn_api()
        print(f"  {self.t():6.0f}s kill -9 api, restarted", flush=True)

    def t(self) -> float:
        return time.time() - self.started

    # --- the run ------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str]]:
        d = self.duration
        events = [
            (0.15 * d, "pin_a"),
            (0.20 * d, "pause_b"),
            (0.20 * d + min(60.0, 0.05 * d), "resume_b"),
            (0.30 * d, "bulk_cancel"),
            (0.35 * d, "kill_api"),
            (0.45 * d, "pause_a_timed"),
            (0.50 * d, "bulk_retry"),
            (0.55 * d, "kill_all"),
            (0.70 * d, "pin_b"),
            (0.80 * d, "unpin_b"),
        ]
        t = KILL_EVERY_S * 0.5
        while t < d:
            events.append((t, "kill_one"))
            t += KILL_EVERY_S
        return sorted(events)

    def act(self, what: str) -> None:
        if what == "pin_a":
            self.control(
                "pin_a",
                "POST",
                f"/api/limits/{PIN_A_KEY}/pin",
                {"rate": f"{PIN_A_RATE}/s", "reason": "soak pin"},
            )
        elif what == "pause_b":
            self.control("pause_b", "POST", "/api/providers/dspb/pause", {"reason": "soak pause"})
        elif what == "resume_b":
            self.control("resume_b", "POST", "/api/providers/dspb/resume")
        elif what == "pause_a_timed":
            self.pause_a_for = 40.0 if self.duration >= 600 else 15.0
            self.control(
                "pause_a_timed",
                "POST",
                "/api/providers/dspa/pause",
                {"reason": "soak timed pause", "duration": f"{self.pause_a_for:g}s"},
            )
        elif what == "pin_b":
            self.control(
                "pin_b",
                "POST",
                "/api/limits/dspb/pin",
                {"rate": f"{PIN_B_RATE}/s", "reason": "soak pin b"},
            )
        elif what == "unpin_b":
            self.control("unpin_b", "POST", "/api/limits/dspb/unpin")
        elif what == "bulk_cancel":
            self.bulk(
                "bulk_cancel", "cancel", {"provider": "dspb", "kind": "ad", "status": "Not Started"}
            )
        elif what == "bulk_retry":
            self.bulk("bulk_retry", "retry", {"provider": "dspb", "status": "Cancelled"})
        elif what == "kill_one":
            self.kill_worker(self.rng.randrange(len(self.workers)))
        elif what == "kill_all":
            self.kill_all()
        elif what == "kill_api":
            self.kill_api()

    def feed(self, numbers: dict[str, int]) -> int:
        """Top the backlog of each provider and tenant up with trees."""
        sent = 0
        waiting = self.snap.waiting()
        self.snap.backlog.append((time.time(), waiting))
        for prov in ("dspa", "dspb"):
            for tenant in TENANTS:
                if waiting.get(f"{prov}/{tenant}", 0) >= BACKLOG[prov]:
                    continue
                items: list[dict[str, Any]] = []
                for _ in range(TREES_PER_FEED[prov]):
                    key = f"{prov}/{tenant}"
                    numbers[key] = n = numbers.get(key, 0) + 1
                    if prov == "dspa":
                        adv = ADVERTISERS[tenant][n % len(ADVERTISERS[tenant])]
                    else:
                        adv = "bq" if (tenant == "acme" and n % 5 == 0) else f"b-{tenant}-{n}"
                    first = len(items)
                    for item in tree(prov, tenant, n, adv):
                        if "parent_index" in item:
                            item["parent_index"] += first
                        items.append(item)
                self.api.call(tenant, "POST", "/api/tasks/bulk", {"tasks": items})
                sent += len(items)
        return sent

    def go(self) -> dict[str, Any]:
        self.started = time.time()
        events = self.schedule()
        numbers: dict[str, int] = {}
        created = 0
        next_snap = next_feed = 0.0
        while self.t() < self.duration:
            if self.t() >= next_feed:
                next_feed = self.t() + FEED_EVERY_S
                created += self.feed(numbers)
            if self.t() >= next_snap:
                next_snap = self.t() + SNAPSHOT_EVERY_S
                self.snap.take()
                done = sum(1 for r in self.snap.last.values() if r["phase"] == "done")
                backlog = self.snap.backlog[-1][1] if self.snap.backlog else {}
                print(
                    f"t={self.t():.0f}s tasks={len(self.snap.last)} done={done} "
                    f"pruned={len(self.snap.pruned)} backlog={backlog}",
                    flush=True,
                )
            while events and self.t() >= events[0][0]:
                self.act(events.pop(0)[1])
            time.sleep(0.2)
        self.fed_until = time.time()
        print(f"fed {created} tasks; draining", flush=True)
        deadline = time.time() + DRAIN_S
        while time.time() < deadline:
            self.snap.take()
            if not self.stuck_candidates():
                break
            time.sleep(5)
        self.snap.take()
        self.drained_at = time.time()
        return self.judge(created)

    def stuck_candidates(self) -> list[dict[str, Any]]:
        """Unfinished tasks that are not waiting for the quota's reset."""
        out = []
        for row in self.snap.last.values():
            if row["phase"] == "done":
                continue
            if row["adv"] == "bq" or (
                row["next_attempt_at"]
                and row["next_attempt_at"].minute == 0
                and row["next_attempt_at"].second == 0
            ):
                continue
            out.append(row)
        return out

    # --- judging -----------------------------------------------------------------------

    def judge(self, created: int) -> dict[str, Any]:
        logs = {n: httpx.get(u + "/_dsp/log", timeout=120).json() for n, u in self.dsp_urls.items()}
        objects = {
            n: httpx.get(u + "/_dsp/objects", timeout=120).json() for n, u in self.dsp_urls.items()
        }
        tasks = {**self.snap.pruned, **self.snap.last}
        res: dict[str, Any] = {"tasks_created": created, "tasks_seen": len(tasks)}
        res["statuses"] = dict(Counter(r["status"] for r in self.snap.last.values()))
        res["pruned"] = len(self.snap.pruned)
        res["pruned_unfinished"] = [
            r["id"] for r in self.snap.pruned.values() if r["phase"] != "done"
        ]
        unfinished = [r for r in self.snap.last.values() if r["phase"] != "done"]
        quota_wait = [r for r in unfinished if r["adv"] == "bq"]
        stuck = [r for r in unfinished if r["adv"] != "bq"]
        res["unfinished"] = len(unfinished)
        res["waiting_for_quota_bq"] = len(quota_wait)
        res["quota_wait_next_attempt"] = sorted({str(r["next_attempt_at"]) for r in quota_wait})[:5]
        res["stuck"] = [self.brief(r) for r in stuck[:20]]
        res["stuck_count"] = len(stuck)
        woken = self.snap.quota_woken
        res["bq_waiting_woken_per_snapshot"] = {
            "snapshots": len(woken),
            "with_any": sum(1 for n in woken if n),
            "max": max(woken, default=0),
        }

        # objects: exactly once, parents first, credentials
        by_name: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for prov, objs in objects.items():
            for obj in objs:
                by_name[(prov, str(obj["name"]))].append(obj)
        dup = {f"{p}:{n}": len(o) for (p, n), o in by_name.items() if len(o) > 1}
        res["duplicates"] = dup
        problems: list[dict[str, Any]] = []
        maybe_sent = []
        account_mismatch = 0
        for row in tasks.values():
            objs = by_name.get((row["provider"], str(row["name"])), [])
            if objs and any(o["account"] != row["tenant"] for o in objs):
                account_mismatch += 1
            status, why = row["status"], None
            if status == "Completed" and (len(objs) != 1 or objs[0]["id"] != row["external_id"]):
                why = "completed without its one object"
            elif status == "Error" and objs and not (row["external_id"] or row["maybe_created"]):
                why = "error task whose object exists"
            if why is not None:
                problems.append({"why": why, **self.brief(row), "objects": len(objs)})
            if status == "Cancelled" and objs:
                maybe_sent.append({**self.brief(row), "objects": len(objs)})
        known = {(r["provider"], str(r["name"])) for r in tasks.values()}
        orphans = [f"{p}:{n}" for (p, n) in by_name if (p, n) not in known]
        res["object_problems"] = problems[:30]
        res["object_problem_count"] = len(problems)
        res["cancelled_but_sent"] = maybe_sent[:30]
        res["cancelled_but_sent_count"] = len(maybe_sent)
        res["objects_without_task"] = orphans[:30]
        res["account_mismatch"] = account_mismatch
        res["objects"] = {p: len(o) for p, o in objects.items()}
        res["child_before_parent"] = {n: logs[n]["violations"][:20] for n in logs}
        res["child_before_parent_count"] = {n: len(logs[n]["violations"]) for n in logs}

        # limits at the DSPs
        origin = self.started
        for name, log in logs.items():
            calls = log["log"]
            times = sorted(c[0] for c in calls)
            outcomes = Counter(c[5] for c in calls)
            admitted = sorted(c[0] for c in calls if c[5] != "refused")
            entry: dict[str, Any] = {
                "calls": len(calls),
                "outcomes": dict(outcomes),
                "max_calls_in_sliding_s": max_in_window(times, 1.0),
            }
            refused = [c[0] for c in calls if c[5] == "refused"]
            entry["refused_per_5min"] = dict(
                sorted(Counter(int((t - origin) // 300) * 5 for t in refused).items())
            )
            if name == "dspa":
                entry["over_limit_at_s"] = [
                    round(t - origin, 2) for t in over_limit_at(times, A_LIMIT)
                ][:20]
                per_adv: dict[str, list[float]] = defaultdict(list)
                for c in calls:
                    if c[1] == "POST":
                        per_adv[str(c[3])].append(c[0])
                entry["max_creates_per_adv_in_sliding_s"] = {
                    a: max_in_window(sorted(ts), 1.0) for a, ts in sorted(per_adv.items())
                }
                pin = next(c for c in self.controls if c["label"] == "pin_a")
                pinned = sorted(t for t in per_adv.get("a1", []) if t > pin["answered"] + GRACE_S)
                entry["a1_after_pin"] = {
                    "creates": len(pinned),
                    "max_in_sliding_s": max_in_window(pinned, 1.0),
                    "max_in_sliding_10s": max_in_window(pinned, 10.0),
                    "over_pin_at_s": [
                        round(t - origin, 2) for t in over_limit_at(pinned, PIN_A_RATE)
                    ][:20],
                    "rate_per_s": round(
                        len(pinned) / max(1.0, (self.fed_until - pin["answered"])), 3
                    ),
                }
                timed = next(c for c in self.controls if c["label"] == "pause_a_timed")
                lo, hi = timed["answered"] + GRACE_S, timed["sent"] + self.pause_a_for
                entry["calls_while_paused"] = sum(1 for t in times if lo < t < hi)
                entry["calls_in_pause_grace"] = sum(1 for t in times if timed["sent"] <= t <= lo)
                entry["first_call_after_pause_end_s"] = next(
                    (round(t - hi, 2) for t in times if t >= hi), None
                )
                entry["fair_share"] = self.fair_share(calls)
            else:
                entry["admitted_max_in_sliding_s"] = max_in_window(admitted, 1.0)
                pause = next(c for c in self.controls if c["label"] == "pause_b")
                resume = next(c for c in self.controls if c["label"] == "resume_b")
                lo, hi = pause["answered"] + GRACE_S, resume["sent"]
                entry["calls_while_paused"] = sum(1 for t in times if lo < t < hi)
                entry["calls_in_pause_grace"] = sum(1 for t in times if pause["sent"] <= t <= lo)
                entry["paused_s"] = round(hi - lo, 1)
                pin_b = next(c for c in self.controls if c["label"] == "pin_b")
                unpin_b = next(c for c in self.controls if c["label"] == "unpin_b")
                pinned = [t for t in times if pin_b["answered"] + GRACE_S < t < unpin_b["sent"]]
                entry["pin_b"] = {
                    "calls": len(pinned),
                    "max_in_sliding_s": max_in_window(pinned, 1.0),
                    "over_pin_at_s": [
                        round(t - origin, 2) for t in over_limit_at(pinned, PIN_B_RATE)
                    ][:20],
                }
                hours: Counter[tuple[str, str]] = Counter()
                for c in calls:
                    if c[1] == "POST":
                        hour = datetime.fromtimestamp(c[0], UTC).strftime("%H")
                        hours[(str(c[3]), hour)] += 1
                entry["writes_per_adv_hour_max"] = max(hours.values(), default=0)
                entry["writes_bq_per_hour"] = {h: n for (a, h), n in hours.items() if a == "bq"}
                entry["quota_over"] = {
                    f"{a}@{h}": n for (a, h), n in hours.items() if n > QUOTA_PER_ADV
                }
            res[name] = entry
        res["audit"] = self.audit()
        res["controls"] = [
            {k: (round(v - origin, 2) if k in ("sent", "answered") else v) for k, v in c.items()}
            for c in self.controls
        ]
        res["kills"] = self.kills
        res["bulk_jobs"] = self.snap.query("SELECT * FROM bulk_jobs")
        res["log_problems"] = {
            p.name: {
                "tracebacks": p.output().count("Traceback"),
                "error_lines": sum(
                    1
                    for line in p.output().splitlines()
                    if " ERROR " in line or '"level": "error"' in line
                ),
            }
            for p in self.cluster.procs
        }
        return res

    def fair_share(self, calls: list[list[Any]]) -> dict[str, Any]:
        """Creates per tenant at dspa in the minutes both tenants had a backlog there."""
        both = []
        for t, backlog in self.snap.backlog:
            if backlog.get("dspa/acme", 0) > 40 and backlog.get("dspa/globex", 0) > 40:
                both.append(t)
        minutes: dict[int, Counter[str]] = defaultdict(Counter)
        for c in calls:
            if c[1] == "POST" and c[5] != "refused" and c[4] in TENANTS:
                at = bisect.bisect_left(both, c[0] - FEED_EVERY_S)
                if at < len(both) and both[at] <= c[0] + FEED_EVERY_S:
                    minutes[int((c[0] - self.started) // 60)][c[4]] += 1
        total = Counter[str]()
        for counts in minutes.values():
            total.update(counts)
        ratio = total["acme"] / total["globex"] if total["globex"] else None
        pin = next(c for c in self.controls if c["label"] == "pin_a")
        before = Counter[str]()
        for minute, counts in minutes.items():
            if self.started + (minute + 1) * 60 <= pin["sent"]:
                before.update(counts)
        return {
            "creates_while_both_waiting": dict(total),
            "acme_share": round(total["acme"] / max(1, total["acme"] + total["globex"]), 3),
            "acme_share_before_pin": round(
                before["acme"] / max(1, before["acme"] + before["globex"]), 3
            ),
            "acme_to_globex": None if ratio is None else round(ratio, 2),
            "configured": TENANTS["acme"] / TENANTS["globex"],
            "per_minute": {m: dict(c) for m, c in sorted(minutes.items())},
        }

    def audit(self) -> dict[str, Any]:
        """Audit records of the controls and bulk jobs: ``{"ACTION TARGET": count}``."""
        found: dict[str, int] = {}
        for action in ("limit.", "tasks.", "quota."):
            page = self.api.call("ops", "GET", f"/api/audit?action={action}&limit=1000")
            for row in page["items"]:
                name = f"{row['action']} {row['target']}"
                found[name] = found.get(name, 0) + 1
        return found

    @staticmethod
    def brief(row: dict[str, Any]) -> dict[str, Any]:
        keep = (
            "id",
            "provider",
            "kind",
            "status",
            "phase",
            "name",
            "external_id",
            "last_error",
            "next_attempt_at",
            "claimed_by",
            "attempts",
        )
        return {k: str(row.get(k)) for k in keep}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--cpu-hog", action="store_true", help="a niced busy loop beside it")
    parser.add_argument(
        "--redis-dbs",
        default=None,
        help="BROKER,LIMITER: database numbers on the local Redis (default: a private "
        "redis-server of the run's own)",
    )
    parser.add_argument("--db-prefix", default="sluice_soakf")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "soak_features.json")
    args = parser.parse_args(argv)
    load_before = load_average()
    with ExitStack() as stack:
        if args.redis_dbs:
            broker, limiter = (f"{redis_base()}/{int(n)}" for n in args.redis_dbs.split(","))
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soakf-redis-")))
            server = stack.enter_context(redis_server(folder))
            broker, limiter = server.url.rsplit("/", 1)[0] + "/1", server.url
        run = Run(args.minutes, (broker, limiter), args.db_prefix)
        if args.cpu_hog:
            hog = subprocess.Popen(["nice", "-n", "10", sys.executable, "-c", "while 1: pass"])
            stack.callback(hog.wait)
            stack.callback(hog.kill)
        run.start(stack)
        try:
            result = run.go()
        except BaseException:
            print(run.cluster.logs(3000), file=sys.stderr)
            raise
        finally:
            default_keep = Path(tempfile.gettempdir()) / "soakf-logs"
            keep = Path(os.environ.get("SOAKF_KEEP_LOGS", default_keep))
            keep.mkdir(parents=True, exist_ok=True)
            for proc_log in run.folder.glob("*.log"):
                (keep / proc_log.name).write_bytes(proc_log.read_bytes())
    result = {
        "benchmark": "soak_features",
        "command": " ".join(["python -m bench.soak_features", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "code": code_version(),
        "load_average_1m_before": load_before,
        "load_average_1m_after": load_average(),
        **result,
    }
    write_json(args.out, json.loads(json.dumps(result, default=str)))
    summary = {k: v for k, v in result.items() if k not in ("machine", "bulk_jobs")}
    print(json.dumps(summary, indent=1, default=str)[:20000])
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
