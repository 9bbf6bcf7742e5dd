"""Requests on the wire: the kernel's timestamp of every HTTP request sent to a loopback port.

The sandbox stamps a request when its event loop gets to it. On a loaded host (and in a
virtual machine whose virtual CPUs the hypervisor takes away now and then) that can be
100 ms after the request arrived, with the requests that queued meanwhile stamped within
a millisecond of each other, however well they were spaced. A third party on its own
machine would not stall with the client's host. So the benchmarks also judge the requests
where the kernel saw them: a packet socket on ``lo`` (``AF_PACKET``, root only) with
``SO_TIMESTAMPNS``, whose timestamps the kernel takes as each packet is handed to the
loopback device, before any process is scheduled; the process that reads them may run late
without changing them.

It runs in its own process (``python -m bench._wire --port P --out FILE``), so that reading
packets costs the measured process nothing; :func:`capture` starts and stops it. Each
request is the TCP segment whose payload starts with an HTTP method and ``/v1/`` (Sluice
writes a request's head and a body of up to 256 KiB in one call: one segment on ``lo``);
a retransmitted segment counts once. Written by hand: no library in the project reads
kernel packet timestamps, and a capture tool (tcpdump) is not installed here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
PACKET_HOST = 0
RECEIVE_BUFFER = 64 * 1024 * 1024
"""Room for every packet of a run while the reader waits for a core."""
METHODS = (b"GET ", b"POST ", b"PUT ", b"PATCH ", b"DELETE ")
READY = "ready"
REPO_ROOT = Path(__file__).resolve().parents[1]


def request_start(frame: bytes, port: int) -> tuple[tuple[int, int], str] | None:
    """``((source port, sequence number), method)`` if ``frame`` (an ``lo`` frame: a
    14-byte Ethernet header, IPv4, TCP) carries the start of a request to ``port`` under
    ``/v1/``; otherwise None."""
    if len(frame) < 14 + 20 + 20 or frame[12:14] != b"\x08\x00":
        return None
    ip = 14
    if frame[ip] >> 4 != 4 or frame[ip + 9] != socket.IPPROTO_TCP:
        return None
    tcp = ip + (frame[ip] & 0x0F) * 4
    source, destination, sequence = struct.unpack_from("!HHI", frame, tcp)
    if destination != port:
        return None
    payload = frame[tcp + (frame[tcp + 12] >> 4) * 4 :]
    for method in METHODS:
        if payload.startswith(method) and payload[len(method) :].startswith(b"/v1/"):
            return (source, sequence), method.decode().strip()
    return None


def serve(port: int, out: Path) -> None:
    """Capture until SIGTERM, then write ``[[posix_seconds, method], ...]`` to ``out``.

    After SIGTERM it reads on until a frame stamped after the signal (every frame before it
    has then been read: they come in order) or until ``lo`` is quiet for 0.2 s. Other
    processes' traffic may keep ``lo`` busy for ever (a test suite's databases)."""
    stopped_at: float | None = None

    def ask_stop(*_: object) -> None:
        nonlocal stopped_at
        stopped_at = time.time()

    signal.signal(signal.SIGTERM, ask_stop)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("lo", 0))
    sock.settimeout(0.2)
    seen: set[tuple[int, int]] = set()
    requests: list[tuple[float, str]] = []
    print(READY, flush=True)
    while True:
        try:
            frame, ancillary, _, address = sock.recvmsg(65_600, socket.CMSG_SPACE(16))
        except TimeoutError:
            if stopped_at is not None:
                break
            continue
        stamp = _stamp(ancillary)
        if stopped_at is not None and (stamp is None or stamp > stopped_at):
            break
        if address[2] != PACKET_HOST:  # lo shows each packet twice: keep its arrival
            continue
        found = request_start(frame, port)
        if found is None or found[0] in seen or stamp is None:
            continue
        seen.add(found[0])
        requests.append((stamp, found[1]))
    out.write_text(json.dumps(sorted(requests)))


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """The kernel's receive time of a frame (``SO_TIMESTAMPNS``), in POSIX seconds."""
    for level, kind, data in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS):
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return float(seconds + nanoseconds / 1e9)
    return None


class Capture:
    """The requests captured by a running :func:`capture` (read once it has stopped)."""

    def __init__(self, out: Path) -> None:
        self._out = out
        self.available = False
        self.reason = ""
        self.requests: list[tuple[float, str]] = []

    def times(self) -> list[float]:
        return [t for t, _ in self.requests]


@contextlib.contextmanager
def capture(port: int) -> Iterator[Capture]:
    """Capture the requests to ``port`` on ``lo`` for the block; unavailable (``reason``
    says why) where packet sockets are not allowed (not root)."""
    with tempfile.TemporaryDirectory(prefix="sluice-wire-") as folder:
        found = Capture(Path(folder) / "requests.json")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench._wire", "--port", str(port), "--out", str(found._out)],
            cwd=REPO_ROOT,  # where ``bench`` is importable, whatever the caller's directory
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip() == READY
        if not ready:
            proc.wait(10)
            found.reason = (proc.stderr.read() if proc.stderr else "").strip().splitlines()[-1:]
            found.reason = " ".join(found.reason) or "the capture did not start"
        try:
            yield found
        finally:
            if ready:
                time.sleep(0.3)  # the last packets of the run
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
                found.requests = [(t, m) for t, m in json.loads(found._out.read_text())]
                found.available = True


def verdict(found: Capture, stamps: list[float], judge: Any) -> dict[str, Any]:
    """What the wire says: requests, ``judge(times)``'s figures, and how much later than
    the wire the sandbox stamped them (paired in order, as ``after_check`` pairs)."""
    if not found.available:
        return {"available": False, "reason": found.reason}
    times = found.times()
    figures: dict[str, Any] = {"available": True, "requests": len(times), **judge(times)}
    if len(times) == len(stamps) and times:
        gaps = sorted((s - t) * 1000 for t, s in zip(times, sorted(stamps), strict=True))
        figures["stamp_after_wire_ms"] = {
            "min": round(gaps[0], 3),
            "p50": round(gaps[len(gaps) // 2], 3),
            "p99": round(gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))], 3),
            "max": round(gaps[-1], 3),
        }
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    serve(args.port, args.out)


if __name__ == "__main__":
    main()
