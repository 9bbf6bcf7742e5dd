"""A small DSP of the benchmarks' own that counts and records every call (``bench.soak_features``).

Independent of Sluice's bundled sandbox, so that what it records is an outside check:

* ``POST /v1/{campaigns,ad_groups,ads}``: creates an object (``pending``; ``active``, or
  ``rejected`` when its name holds ``lateerror``, after 0.5-2.5 s: asynchronous
  processing). A negative ``budget`` is a validation error (400 naming the field). A child
  whose parent (``campaign_id`` / ``ad_group_id``) does not exist or is not ``active`` yet
  is answered 409 ``PARENT_NOT_READY`` and recorded as a violation.
* ``GET /v1/status?ids=a,b``: the batch status poll; ``GET /v1/{collection}?client_ref=R``:
  the lookup (``{"data": [...]}``).
* Limits, judged strictly on a sliding window over the calls it admitted: ``limit`` calls
  a second provider-wide and ``per_advertiser`` creates a second per ``advertiser_id``;
  over either: 429 + ``Retry-After: 1``, recorded as ``refused``.
* Faults drawn from a seeded generator on admitted creates: ``fault_500`` (nothing
  created), ``fault_commit_500`` (created, then answered 500: a lookup must find it),
  ``fault_503`` (503 + ``Retry-After: 1``), ``fault_429`` (a rate-limit answer of its own).
* ``GET /_dsp/log``: every call ``[t, method, route, advertiser, account, outcome, name]``;
  ``GET /_dsp/objects``: every object; ``PUT /_dsp/config``: change ``limit``/faults.

Run: ``python -m bench._counting_dsp --port P --config '{"limit": 12, ...}'``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

COLLECTIONS = {"campaigns": None, "ad_groups": "campaign_id", "ads": "ad_group_id"}
PARENT_COLLECTION = {"ad_groups": "campaigns", "ads": "ad_groups"}


class Dsp:
    """The state: objects, sliding logs, the call log; one lock for all of it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = {
            "limit": 20,
            "per_advertiser": 0,
            "fault_500": 0.0,
            "fault_commit_500": 0.0,
            "fault_503": 0.0,
            "fault_429": 0.0,
            "seed": 1,
            **config,
        }
        self.random = random.Random(self.config["seed"])
        self.lock = threading.Lock()
        self.admitted: deque[float] = deque()
        self.admitted_by_adv: dict[str, deque[float]] = {}
        self.objects: dict[str, dict[str, Any]] = {}
        self.log: list[list[Any]] = []
        self.violations: list[dict[str, Any]] = []
        self.next_id = 1
        self.pending: list[tuple[float, str]] = []
        self.by_ref: dict[tuple[str, str], list[str]] = {}

    # --- limits -------------------------------------------------------------------------

    @staticmethod
    def _fits(window: deque[float], now: float, limit: int) -> bool:
        while window and now - window[0] >= 1.0:
            window.popleft()
        return len(window) < limit

    def admit(self, now: float, advertiser: str | None) -> bool:
        """Judge one call on the sliding second (provider-wide, and per advertiser for
        creates); admitted calls are counted."""
        if not self._fits(self.admitted, now, int(self.config["limit"])):
            return False
        per = int(self.config["per_advertiser"])
        if advertiser is not None and per:
            window = self.admitted_by_adv.setdefault(advertiser, deque())
            if not self._fits(window, now, per):
                return False
            window.append(now)
        self.admitted.append(now)
        return True

    def settle(self, now: float) -> None:
        while self.pending and self.pending[0][0] <= now:
            _, object_id = heapq.heappop(self.pending)
            obj = self.objects[object_id]
            if obj["status"] == "pending":
                obj["status"] = "rejected" if "lateerror" in str(obj["name"]) else "active"
                if obj["status"] == "rejected":
                    obj["error_message"] = "creative rejected by review"

    def public(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}


def handler_for(dsp: Dsp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b"{}"
            try:
                value = json.loads(raw or b"{}")
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/_dsp/log":
                with dsp.lock:
                    self.answer(200, {"log": dsp.log, "violations": dsp.violations})
                return
            if url.path == "/_dsp/objects":
                with dsp.lock:
                    self.answer(200, [dsp.public(o) for o in dsp.objects.values()])
                return
            if url.path == "/healthz":
                self.answer(200, {"ok": True})
                return
            self.call("GET", url.path, query, {})

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            self.call("POST", url.path, parse_qs(url.query), self.body())

        def do_PUT(self) -> None:
            if urlsplit(self.path).path == "/_dsp/config":
                patch = self.body()
                with dsp.lock:
                    dsp.config.update(patch)
                self.answer(200, dsp.config)
                return
            self.answer(404, {"error": {"message": "not found"}})

        def call(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> None:
            now = time.time()
            account = self.headers.get("X-Account", "")
            parts = path.strip("/").split("/")
            collection = parts[1] if len(parts) == 2 and parts[0] == "v1" else ""
            route = f"{method} /v1/{collection}"
            advertiser = str(body.get("advertiser_id")) if method == "POST" else None
            name = str(body.get("name", "")) if method == "POST" else ""
            status, answer, headers = 404, {"error": {"message": "not found"}}, {}
            with dsp.lock:
                entry = [now, method, route, advertiser, account, "", name]
                dsp.log.append(entry)
                dsp.settle(now)
                if not dsp.admit(now, advertiser if method == "POST" else None):
                    entry[5] = "refused"
                    status, answer, headers = (
                        429,
                        {"error": {"code": "RATE_LIMITED", "message": "slow down"}},
                        {"Retry-After": "1"},
                    )
                elif method == "GET" and collection == "status":
                    ids = [i for i in (query.get("ids") or [""])[0].split(",") if i]
                    found = [dsp.objects[i] for i in ids if i in dsp.objects]
                    entry[5] = "poll"
                    status, answer = (
                        200,
                        [
                            {
                                "id": o["id"],
                                "status": o["status"],
                                "error_message": o.get("error_message"),
                            }
                            for o in found
                        ],
                    )
                elif method == "GET" and collection in COLLECTIONS:
                    ref = (query.get("client_ref") or [""])[0]
                    entry[5] = "lookup"
                    ids = dsp.by_ref.get((collection, ref), [])
                    status, answer = 200, {"data": [dsp.public(dsp.objects[i]) for i in ids]}
                elif method == "POST" and collection in COLLECTIONS:
                    status, answer, headers = self.create(now, collection, body, entry)
            self.answer(status, answer, headers)

        def create(
            self, now: float, collection: str, body: dict[str, Any], entry: list[Any]
        ) -> tuple[int, Any, dict[str, str]]:
            draw = dsp.random.random()
            cfg = dsp.config
            edges = [
                ("fault_429", cfg["fault_429"]),
                ("fault_503", cfg["fault_503"]),
                ("fault_500", cfg["fault_500"]),
                ("fault_commit_500", cfg["fault_commit_500"]),
            ]
            fault = None
            for label, chance in edges:
                if draw < chance:
                    fault = label
                    break
                draw -= chance
            if fault == "fault_429":
                entry[5] = fault
                return 429, {"error": {"message": "slow down"}}, {"Retry-After": "1"}
            if fault == "fault_503":
                entry[5] = fault
                return 503, {"error": {"message": "busy"}}, {"Retry-After": "1"}
            if fault == "fault_500":
                entry[5] = fault
                return 500, {"error": {"message": "internal"}}, {}
            budget = body.get("budget")
            if isinstance(budget, int | float) and budget < 0:
                entry[5] = "invalid"
                error = {"code": "INVALID", "field": "budget", "message": "must be >= 0"}
                return 400, {"error": error}, {}
            parent_field = COLLECTIONS[collection]
            if parent_field is not None:
                parent = dsp.objects.get(str(body.get(parent_field)))
                if parent is None or parent["status"] != "active":
                    entry[5] = "parent_not_ready"
                    dsp.violations.append(
                        {
                            "t": now,
                            "name": body.get("name"),
                            "parent": body.get(parent_field),
                            "parent_status": None if parent is None else parent["status"],
                        }
                    )
                    error = {"code": "PARENT_NOT_READY", "message": "parent not ready"}
                    return 409, {"error": error}, {}
            object_id = f"{collection[:2]}{dsp.next_id}"
            dsp.next_id += 1
            dsp.objects[object_id] = {
                "id": object_id,
                "_collection": collection,
                "_ready_at": now + 0.5 + 2.0 * dsp.random.random(),
                "_created_at": now,
                "collection": collection,
                "created_at": now,
                "name": body.get("name"),
                "client_ref": body.get("client_ref"),
                "advertiser_id": body.get("advertiser_id"),
                "parent": body.get(parent_field) if parent_field else None,
                "account": self.headers.get("X-Account", ""),
                "status": "pending",
            }
            heapq.heappush(dsp.pending, (dsp.objects[object_id]["_ready_at"], object_id))
            ref_key = (collection, str(body.get("client_ref")))
            dsp.by_ref.setdefault(ref_key, []).append(object_id)
            if fault == "fault_commit_500":
                entry[5] = fault
                return 500, {"error": {"message": "internal"}}, {}
            entry[5] = "created"
            return 201, {"id": object_id, "status": "pending"}, {}

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--config", default="{}")
    args = parser.parse_args()
    server = ThreadingHTTPServer(
        ("127.0.0.1", args.port), handler_for(Dsp(json.loads(args.config)))
    )
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
