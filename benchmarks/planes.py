"""RPC calls/s and latency over TLS and WebSocket, against the Unix socket, in one run.

Usage::

    python benchmarks/planes.py [--seconds 2] [--repeats 3] [--depth 32] [--json out.json]
    python benchmarks/planes.py --flood [--json out.json]

One server subprocess serves one dispatcher (``daemon.ping``, the token methods
and ``bench.noop``, a viewer method) on three planes at once: the Unix socket
(``serve_unix``, admin by peer uid), TLS (``serve_tls``, the daemon's self-signed
ECDSA certificate, TLS 1.3) and WebSocket (``serve_websocket_plane``, ``ws://`` on
loopback). The TLS and WebSocket clients log in with a viewer token first, so
every measured call goes through the token recheck.

Two clients, both in this process, one connection per plane, ``--depth`` calls
of ``bench.noop`` in flight (pipelined) for ``--seconds``; planes alternate within
each repeat:

window client
    A blocking socket (``ssl`` for TLS) keeping the window full, as
    ``benchmarks/daemon.py``'s client does: it costs little, so its rate is the
    server's. Unix and TLS.
async RpcClient
    ``omnitron.rpc``'s Trio client (``open_tls_client``, ``open_ws_client``),
    whose own per-call cost is part of the result. Unix, TLS and WebSocket.

With ``--flood`` (FAULTS RP-18), another process makes 10,000 TCP connections to
the TLS plane, at most 1,000 open at once (:data:`FLOOD`), while this process
times ``daemon.ping`` on fresh Unix socket connections: the figures during the
flood are compared with the same probes before it (the floor).

Each table gives, per plane, the median calls/s over the repeats, the p50/p99
latency of the calls of the median run, and the ratio to the Unix socket's rate
with the same client (the floor, measured in the same run). The load average
before and after is printed, and everything goes to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import trio

SERVER = """\
import functools, sys
from pathlib import Path
import trio
from omnitron import _log
from omnitron.rpc import Dispatcher, Role, serve_unix
from omnitron.rpc._auth import TokenAuthority, register_auth_methods
from omnitron.rpc._tls import ensure_self_signed, serve_tls, server_context
from omnitron.rpc._ws import serve_websocket_plane

_log.configure(_log.Console(None, level=_log.WARNING, timestamps=True))


async def noop(call):
    await trio.lowlevel.checkpoint()
    return {"ok": True}


async def main(home):
    home = Path(home)
    authority = TokenAuthority(home)
    dispatcher = Dispatcher()
    dispatcher.register("bench.noop", noop, role=Role.VIEWER)
    register_auth_methods(dispatcher, lambda: authority)
    identity = ensure_self_signed(home)
    token = authority.issue(role="viewer", ttl=3600, subject="bench")[0]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_unix, str(home / "s.sock"), dispatcher)
        tls = await nursery.start(
            serve_tls, "127.0.0.1", 0, dispatcher, server_context(identity)
        )
        ws = await nursery.start(
            functools.partial(serve_websocket_plane, "127.0.0.1", 0, dispatcher, context=None)
        )
        tls_port = tls.address.rsplit(":", 1)[1]
        ws_port = ws.address.rsplit(":", 1)[1].split("/")[0]
        print("ready", tls_port, ws_port, identity.fingerprint, token, flush=True)


trio.run(main, sys.argv[1])
"""


FLOOD = r"""
import asyncio, json, sys
host, port, total, concurrency, hold = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
)
counts = {"connected": 0, "failed": 0, "closed_by_server": 0, "held": 0}

async def one(slots):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, asyncio.TimeoutError):
        counts["failed"] += 1
        slots.release()
        return
    counts["connected"] += 1
    try:
        if await asyncio.wait_for(reader.read(1), hold) == b"":
            counts["closed_by_server"] += 1
    except asyncio.TimeoutError:
        counts["held"] += 1
    except OSError:
        counts["closed_by_server"] += 1
    finally:
        writer.close()
        slots.release()

async def main():
    slots = asyncio.Semaphore(concurrency)
    tasks = []
    for n in range(total):
        await slots.acquire()
        tasks.append(asyncio.create_task(one(slots)))
        if n == concurrency:
            print("flooding", flush=True)
    await asyncio.gather(*tasks)
    print(json.dumps(counts), flush=True)

asyncio.run(main())
"""
"""A connection flood: ``python -c FLOOD HOST PORT TOTAL CONCURRENCY HOLD`` connects
TOTAL times, at most CONCURRENCY open at once, each held until the server closes it
or for HOLD seconds; prints ``flooding`` once CONCURRENCY are open, then the counts
as JSON."""


def unix_ping(path: str) -> float:
    """Seconds to connect to the Unix socket and get ``daemon.ping`` answered."""
    import msgpack

    started = time.perf_counter()
    with raw_unix(path) as sock:
        sock.settimeout(30.0)
        sock.sendall(msgpack.packb([0, 1, "daemon.ping", []]))
        unpacker = msgpack.Unpacker()
        while next(unpacker, None) is None:
            data = sock.recv(4096)
            if not data:
                raise RuntimeError("the server closed the connection")
            unpacker.feed(data)
    return time.perf_counter() - started


def flood_run(path: str, tls_port: int, probes: int) -> dict[str, Any]:
    """Unix socket pings before and during a 10,000-connect flood of the TLS plane."""
    alone = [unix_ping(path) for _ in range(probes)]
    flood = subprocess.Popen(
        [sys.executable, "-c", FLOOD, "127.0.0.1", str(tls_port), "10000", "1000", "2.0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert flood.stdout is not None
    flood.stdout.readline()
    during = []
    while flood.poll() is None:
        during.append(unix_ping(path))
    counts = json.loads(flood.stdout.readline())
    flood.stdout.close()
    print(f"flood of 10,000 connects, 1,000 at a time: {counts}")
    print(f"  {'unix ping':<14} {'probes':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    report: dict[str, Any] = {"flood": counts}
    for name, samples in (("before flood", alone), ("during flood", during)):
        p50, p99 = percentile(samples, 0.5) * 1e3, percentile(samples, 0.99) * 1e3
        worst = max(samples) * 1e3
        print(f"  {name:<14} {len(samples):>7} {p50:>8.2f} {p99:>8.2f} {worst:>8.2f}")
        report[name] = {"probes": len(samples), "p50_ms": p50, "p99_ms": p99, "max_ms": worst}
    within = sum(sample < 0.2 for sample in during) / len(during)
    print(f"  during the flood, {within:.1%} of the pings answered within 200 ms")
    report["share_within_200ms"] = within
    return report


def window_client(sock: socket.socket, seconds: float, window: int) -> tuple[float, list[float]]:
    """Calls/s and latencies of a blocking socket keeping ``window`` calls in flight.

    ``sock`` is connected (a Unix socket, or an ``ssl.SSLSocket`` already logged in):
    this client costs little, so the rate is the server's.
    """
    import msgpack

    unpacker = msgpack.Unpacker(max_buffer_size=64 << 20)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    next_msgid = 1

    def requests(n: int) -> bytes:
        nonlocal next_msgid
        now = time.perf_counter()
        frames = []
        for msgid in range(next_msgid, next_msgid + n):
            sent_at[msgid] = now
            frames.append(msgpack.packb([0, msgid, "bench.noop", []]))
        next_msgid += n
        return b"".join(frames)

    sock.sendall(requests(window))
    start = time.perf_counter()
    stopping = False
    while sent_at:
        data = sock.recv(1 << 16)
        if not data:
            raise RuntimeError("the server closed the connection")
        unpacker.feed(data)
        done = 0
        now = time.perf_counter()
        for message in unpacker:
            if message[2] is not None:
                raise RuntimeError(f"error reply: {message[2]}")
            latencies.append(now - sent_at.pop(message[1]))
            done += 1
        if not stopping:
            stopping = now - start >= seconds
            elapsed = now - start
            if not stopping and done:
                sock.sendall(requests(done))
    return len(latencies) / max(elapsed, 1e-9), latencies


def raw_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def raw_tls(port: int, token: str) -> socket.socket:
    """A TLS socket to the plane, logged in with ``token``."""
    import msgpack

    from omnitron.rpc._tls import client_context

    sock = client_context().wrap_socket(socket.create_connection(("127.0.0.1", port)))
    sock.sendall(msgpack.packb([0, 0, "auth.login", [{"token": token}]]))
    unpacker = msgpack.Unpacker()
    while True:
        unpacker.feed(sock.recv(1 << 16))
        for reply in unpacker:
            if reply[2] is not None:
                raise RuntimeError(f"login refused: {reply[2]}")
            return sock


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def drive(
    connect: Callable[[], AbstractAsyncContextManager[Any]], seconds: float, depth: int
) -> tuple[float, list[float]]:
    """Calls/s and per-call latencies of one pipelined client."""
    latencies: list[float] = []
    async with connect() as client:
        for _ in range(200):  # warm-up
            await client.call("bench.noop")
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await client.call("bench.noop")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(depth):
                nursery.start_soon(worker)
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


def summarize(runs: dict[str, list[tuple[float, list[float]]]]) -> dict[str, Any]:
    floor = statistics.median(rate for rate, _ in runs["unix"])
    print(f"  {'plane':<10} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs unix':>8}")
    summary = {}
    for name, results in runs.items():
        ordered = sorted(results, key=lambda run: run[0])
        rate, latencies = ordered[len(ordered) // 2]
        p50, p99 = percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3
        print(f"  {name:<10} {rate:>9.0f} {p50:>8.2f} {p99:>8.2f} {rate / floor:>7.0%}")
        summary[name] = {
            "rates": [r for r, _ in results],
            "median_rate": rate,
            "p50_ms": p50,
            "p99_ms": p99,
            "ratio_to_unix": rate / floor,
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--flood", action="store_true", help="RP-18: Unix pings during a flood")
    parser.add_argument("--probes", type=int, default=200)
    args = parser.parse_args()

    from omnitron.rpc._client import connect_unix
    from omnitron.rpc._tls import open_tls_client
    from omnitron.rpc._ws import open_ws_client

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="omt-bench-", dir="/tmp") as home:
        os.chmod(home, 0o700)
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, home], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            _, tls_port, ws_port, fingerprint, token = server.stdout.readline().split()
            if args.flood:
                load_before = os.getloadavg()
                report = flood_run(os.path.join(home, "s.sock"), int(tls_port), args.probes)
                load_after = os.getloadavg()
                print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
                if args.json is not None:
                    report |= {"load_before": load_before, "load_after": load_after}
                    args.json.write_text(json.dumps(report, indent=2))
                return
            planes: dict[str, Callable[[], AbstractAsyncContextManager[Any]]] = {
                "unix": lambda: connect_unix(os.path.join(home, "s.sock")),
                "tls": lambda: open_tls_client(
                    "127.0.0.1", int(tls_port), fingerprint=fingerprint, token=token
                ),
                "websocket": lambda: open_ws_client("127.0.0.1", int(ws_port), token=token),
            }
            raw: dict[str, Callable[[], socket.socket]] = {
                "unix": lambda: raw_unix(os.path.join(home, "s.sock")),
                "tls": lambda: raw_tls(int(tls_port), token),
            }
            runs: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in planes}
            raw_runs: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in raw}
            for _ in range(args.repeats):
                for name, opener in raw.items():
                    with opener() as sock:
                        raw_runs[name].append(window_client(sock, args.seconds, args.depth))
                for name, connect in planes.items():
                    runs[name].append(trio.run(drive, connect, args.seconds, args.depth))
        finally:
            server.terminate()
            server.wait()
    load_after = os.getloadavg()

    report: dict[str, Any] = {"load_before": load_before, "load_after": load_after}
    for title, table in (
        ("window client (blocking socket, the server's rate)", raw_runs),
        ("async RpcClient (trio, the client's cost included)", runs),
    ):
        print(title)
        report[title] = summarize(table)
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
