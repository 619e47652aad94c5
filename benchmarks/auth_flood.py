"""A legitimate client's latency under a flood of bad logins (FAULTS AU-21), in one run.

Usage::

    python benchmarks/auth_flood.py [--rounds 5] [--seconds 5] [--json out.json]
    python benchmarks/auth_flood.py --depth 32   # each attacking connection pipelines 32 logins
    python benchmarks/auth_flood.py --profile server.prof [--rounds 2]

A server subprocess serves the TLS plane as the daemon does (``serve_tls`` with
the self-signed ECDSA certificate, ``auth.login`` with the per-address backoff,
the daemon's log configuration writing to a file) with one viewer method,
``bench.noop``. A *twin* subprocess serves the same, on another port.

This process keeps one logged-in TLS client calling ``bench.noop`` back to back
(one call in flight: each sample is one round trip) through rounds of four
windows, in an order rotated each round:

alone
    nothing else runs for ``--seconds``: the floor of the round.
hold
    an attacker process opens ten TLS connections and holds them, idle, for
    ``--seconds``: what ten idle connections and a busy neighbour process cost.
twin
    the attacker makes 500 bad logins (ten connections of one address, 50 logins
    each, a well-signed token that was never issued) against the *twin*: the same
    CPU is spent on the machine's two cores (the attacker's and a server's), but
    not on the measured server's event loop. This is the fair floor of the attack.
attack
    the same 500 bad logins against the measured server.

Each attack comes from a fresh loopback address (127.0.0.N), so that each round
meets the backoff from its start (five verified failures, then 0.5 s doubling),
as a new attacker would. The table gives per round the p50 and p99 of each
window, the p99 ratio to the round's ``alone`` window, the attacker's CPU (its
own ``process_time`` over its run) and the measured server's CPU over the window;
then the median ratio over the rounds. The server's work for the attack is what
``attack`` adds over ``twin``. The load average before and after is printed.

With ``--profile PATH`` the measured server runs under ``cProfile`` and its
statistics are written to PATH when it stops (load them with ``pstats``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

SERVER = """\
import cProfile, json, sys, time
from pathlib import Path
import trio
from omnitron.daemon._logging import configure_logging
from omnitron.rpc import Dispatcher, Role
from omnitron.rpc._auth import TokenAuthority, register_auth_methods
from omnitron.rpc._tls import ensure_self_signed, open_tls_client, serve_tls, server_context


async def noop(call):
    await trio.lowlevel.checkpoint()
    return {"ok": True}


async def main(home):
    configure_logging(home / "logs" / "daemon.log")
    authority = TokenAuthority(home)
    dispatcher = Dispatcher()
    dispatcher.register("bench.noop", noop, role=Role.VIEWER)
    register_auth_methods(dispatcher, lambda: authority)
    identity = ensure_self_signed(home)
    token = authority.issue(role="viewer", ttl=3600, subject="bench")[0]
    async with trio.open_nursery() as nursery:
        tls = await nursery.start(serve_tls, "127.0.0.1", 0, dispatcher, server_context(identity))
        port = int(tls.address.rsplit(":", 1)[1])
        print("ready", port, identity.fingerprint, token, flush=True)
        async with open_tls_client(
            "127.0.0.1", port, fingerprint=identity.fingerprint, token=token
        ) as client:
            for _ in range(2000):  # warm-up
                await client.call("bench.noop")
            print("warm", flush=True)
            stdin = trio.wrap_file(sys.stdin)
            # "start" begins timing calls of the client in this process, "stop" ends
            # it and prints the samples; an empty line or EOF stops the server.
            while (await stdin.readline()).strip() == "start":
                samples = []
                stop = trio.Event()
                async with trio.open_nursery() as timing:

                    async def measure():
                        # Never cancelled mid-call: that would cut a request and
                        # close the connection.
                        while not stop.is_set():
                            started = time.perf_counter()
                            await client.call("bench.noop")
                            samples.append(time.perf_counter() - started)

                    timing.start_soon(measure)
                    await stdin.readline()
                    stop.set()
                print(json.dumps(samples), flush=True)
        nursery.cancel_scope.cancel()


home, profile = Path(sys.argv[1]), sys.argv[2]
(home / "logs").mkdir(mode=0o700, exist_ok=True)
if profile:
    profiler = cProfile.Profile(time.thread_time)
    profiler.runcall(trio.run, main, home)
    profiler.dump_stats(profile)
else:
    trio.run(main, home)
"""
"""``python -c SERVER HOME PROFILE``: prints ``ready PORT FINGERPRINT TOKEN`` and serves;
``start``/``stop`` lines on stdin time a client in the server's own process (the
samples are printed as JSON); another line stops it (then writes the profile, if
PROFILE is not empty)."""

ATTACKER = r"""
import json, sys, time
import trio
from omnitron.rpc import Unauthenticated
from omnitron.rpc._client import open_client
from omnitron.rpc._tls import client_context

port, token, source = int(sys.argv[1]), sys.argv[2], sys.argv[3]
connections, attempts, hold = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
depth = int(sys.argv[7])
refused = {}

async def connection():
    tcp = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    stream = trio.SSLStream(tcp, client_context(), server_hostname=None)
    await stream.do_handshake()
    async with open_client(stream) as client:
        if hold:
            await trio.sleep(hold)

        async def logins(count):
            for _ in range(count):
                try:
                    await client.call("auth.login", token=token)
                except Unauthenticated as exc:
                    reason = exc.data.get("reason")
                    refused[reason] = refused.get(reason, 0) + 1

        async with trio.open_nursery() as pipelined:
            for lane in range(depth):
                pipelined.start_soon(logins, attempts // depth + (lane < attempts % depth))

async def main():
    print("ready", flush=True)
    await trio.wrap_file(sys.stdin).readline()
    cpu, wall = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(connection)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(json.dumps({"cpu": cpu, "wall": wall, "refused": refused}), flush=True)

trio.run(main)
"""
"""``python -c ATTACKER PORT TOKEN SOURCE CONNECTIONS ATTEMPTS HOLD DEPTH``: prints
``ready``, and on a line on stdin opens CONNECTIONS TLS connections from address
SOURCE; each holds HOLD seconds, then makes ATTEMPTS logins with TOKEN, DEPTH of them
in flight at once. Prints its CPU seconds, wall seconds and the refusal reasons as
JSON."""

WINDOWS = ("alone", "hold", "twin", "attack")
CONNECTIONS, ATTEMPTS = 10, 50


@functools.cache
def unissued_token(home: str) -> str:
    """A token signed with the server's own key (so it is verified) but never issued."""
    import secrets

    import jwt
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(
        (Path(home) / "auth" / "signing.key").read_bytes(), password=None
    )
    issuer = "omnitron-" + (Path(home) / "auth" / "daemon.id").read_text().strip()
    now = int(time.time())
    claims = {
        "sub": "x",
        "role": "admin",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "jti": secrets.token_hex(16),
        "iss": issuer,
        "aud": "omnitron",
    }
    return jwt.encode(claims, key, algorithm="EdDSA")  # type: ignore[arg-type]


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Server:
    """A server subprocess (``SERVER``) and what it printed."""

    def __init__(self, home: str, profile: str = "") -> None:
        os.chmod(home, 0o700)
        self.home = home
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, home, profile],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        _, port, self.fingerprint, self.token = self.process.stdout.readline().split()
        self.port = int(port)
        self.process.stdout.readline()  # warm
        self.usage = psutil.Process(self.process.pid)

    def cpu(self) -> float:
        times = self.usage.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("start\n")
        self.process.stdin.flush()

    def samples(self) -> list[float]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        return list(json.loads(self.process.stdout.readline()))

    def stop(self) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


class Client:
    """A logged-in TLS client on a blocking ``ssl`` socket, one call in flight.

    It costs little (the TLS and the socket are C), so most of a sample is the
    server's turn-around, and one window holds thousands of samples.
    """

    def __init__(self, server: Server) -> None:
        import msgpack

        from omnitron.rpc._tls import client_context

        self.sock = client_context().wrap_socket(
            socket.create_connection(("127.0.0.1", server.port))
        )
        self.unpacker = msgpack.Unpacker()
        self.request = msgpack.packb([0, 1, "bench.noop", []])
        self.sock.sendall(msgpack.packb([0, 1, "auth.login", [{"token": server.token}]]))
        if self.reply()[2] is not None:
            raise RuntimeError("the benchmark's token was refused")

    def reply(self) -> Any:
        while True:
            for message in self.unpacker:
                return message
            data = self.sock.recv(1 << 16)
            if not data:
                raise RuntimeError("the server closed the connection")
            self.unpacker.feed(data)

    def call(self) -> float:
        started = time.perf_counter()
        self.sock.sendall(self.request)
        message = self.reply()
        elapsed = time.perf_counter() - started
        if message[2] is not None:
            raise RuntimeError(f"error reply: {message[2]}")
        return elapsed


def window(
    client: Client | None,
    kind: str,
    seconds: float,
    server: Server,
    twin: Server,
    source: str,
    depth: int = 1,
) -> dict[str, Any]:
    """Time back-to-back calls during one window of ``kind``: of ``client``, or of the
    client in the server's process when ``client`` is ``None``."""
    samples: list[float] = []
    attacker: dict[str, Any] = {}
    target = twin if kind == "twin" else server

    def busy() -> None:
        if client is None:
            time.sleep(0.005)
        else:
            samples.extend(client.call() for _ in range(32))

    if client is None:
        server.start()
    if kind == "alone":
        server_cpu, twin_cpu = server.cpu(), twin.cpu()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            busy()
    else:
        argv = [
            sys.executable,
            "-c",
            ATTACKER,
            str(target.port),
            unissued_token(target.home),
            source,
            str(CONNECTIONS),
            str(0 if kind == "hold" else ATTEMPTS),
            str(seconds if kind == "hold" else 0.0),
            str(depth),
        ]
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            process.stdout.readline()  # ready: imports done
            server_cpu, twin_cpu = server.cpu(), twin.cpu()
            process.stdin.write("go\n")
            process.stdin.flush()
            while process.poll() is None:
                busy()
            attacker = json.loads(process.stdout.readline())
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        if process.returncode != 0:
            raise RuntimeError(f"the attacker failed ({kind})")
    if client is None:
        samples = server.samples()
    elapsed = attacker.get("wall", seconds)
    return {
        "kind": kind,
        "calls": len(samples),
        "p50_ms": percentile(samples, 0.5) * 1e3,
        "p99_ms": percentile(samples, 0.99) * 1e3,
        "server_cpu": (server.cpu() - server_cpu) / elapsed,
        "twin_cpu_s": twin.cpu() - twin_cpu,
        "attacker_cpu": attacker.get("cpu", 0.0) / elapsed,
        "attacker_cpu_s": attacker.get("cpu", 0.0),
        "refused": attacker.get("refused", {}),
    }


def run(
    server: Server, twin: Server, rounds: int, seconds: float, remote: bool, depth: int
) -> list[dict[str, Any]]:
    client = Client(server) if remote else None
    with contextlib.closing(client.sock) if client is not None else contextlib.nullcontext():
        for _ in range(2000 if client is not None else 0):  # warm-up
            client.call()  # type: ignore[union-attr]
        results = []
        for number in range(rounds):
            order = WINDOWS[number % 4 :] + WINDOWS[: number % 4]
            measured = {}
            for kind in order:
                source = f"127.0.{1 + (kind == 'twin')}.{10 + number}"
                measured[kind] = window(client, kind, seconds, server, twin, source, depth)
            results.append(measured)
            report_round(number, measured)
    return results


def report_round(number: int, measured: dict[str, dict[str, Any]]) -> None:
    base = measured["alone"]["p99_ms"]
    for kind in WINDOWS:
        row = measured[kind]
        print(
            f"  {number + 1:>5} {kind:<7} {row['calls']:>7} {row['p50_ms']:>7.2f} "
            f"{row['p99_ms']:>7.2f} {row['p99_ms'] / base:>6.2f}x "
            f"{row['attacker_cpu']:>8.0%} {row['server_cpu']:>8.0%} "
            f"{row['twin_cpu_s'] * 1e3:>8.0f}  "
            f"{' '.join(f'{k}={v}' for k, v in sorted(row['refused'].items()))}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="alone and hold windows")
    parser.add_argument(
        "--client",
        choices=("server", "process"),
        default="server",
        help="time a client in the server's process (as the test does) or in this one",
    )
    parser.add_argument(
        "--depth", type=int, default=1, help="logins in flight per attacking connection"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="cProfile the measured server")
    args = parser.parse_args()

    load_before = os.getloadavg()
    print(
        f"  {'round':>5} {'window':<7} {'calls':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99/alone':>7}"
        f" {'attacker':>8} {'server':>8} {'twin ms':>8}  refusals"
    )
    with (
        tempfile.TemporaryDirectory(prefix="omt-bench-", dir="/tmp") as home,
        tempfile.TemporaryDirectory(prefix="omt-bench-", dir="/tmp") as twin_home,
    ):
        server = Server(home, str(args.profile.resolve()) if args.profile else "")
        try:
            twin = Server(twin_home)
            try:
                results = run(
                    server, twin, args.rounds, args.seconds, args.client == "process", args.depth
                )
            finally:
                twin.stop()
        finally:
            server.stop()
    load_after = os.getloadavg()

    medians = {
        kind: statistics.median(r[kind]["p99_ms"] / r["alone"]["p99_ms"] for r in results)
        for kind in WINDOWS
    }
    cpu = {kind: statistics.median(r[kind]["attacker_cpu"] for r in results) for kind in WINDOWS}
    server_cpu = {
        kind: statistics.median(r[kind]["server_cpu"] for r in results) for kind in WINDOWS
    }
    twin_cpu = statistics.median(r["twin"]["twin_cpu_s"] for r in results)
    print("median over the rounds: p99 / alone, attacker CPU, measured server CPU")
    for kind in WINDOWS:
        print(f"  {kind:<7} {medians[kind]:>6.2f}x {cpu[kind]:>8.0%} {server_cpu[kind]:>8.0%}")
    print(f"CPU of a server for 500 bad logins (the twin's, median): {twin_cpu * 1e3:.0f} ms")
    print(
        f"attack over its floor (twin): {medians['attack'] / medians['twin']:.2f}x; "
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    if args.json is not None:
        report = {
            "rounds": results,
            "median_p99_ratio": medians,
            "median_attacker_cpu": cpu,
            "median_server_cpu": server_cpu,
            "median_twin_cpu_s_per_attack": twin_cpu,
            "load_before": load_before,
            "load_after": load_after,
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
