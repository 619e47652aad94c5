"""The control plane of a real daemon: connection storms (RP-18) and standard clients.

A storm is another process that opens hundreds of connections to the daemon's
socket (idle ones and slow ones that send one byte of a message and stop), more
than the connection cap, and holds them. Meanwhile ``daemon.status`` is probed
with fresh connections: every probe must answer, and the daemon's memory stays
bounded. The p99 probe latency is printed, not asserted (timing belongs in
benchmarks); each probe only has a generous deadline.

The interoperability tests drive the daemon with msgpack-rpc client libraries
this project did not write (``pynvim``'s msgpack-rpc session and
``aio-msgpack-rpc``), each in its own process: ``daemon.ping``, ``daemon.status``
and an error reply, with the notifications these clients send on their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
from fault_harness import CLI_TIMEOUT, Daemon, app_toml

from omnitron.rpc.sync_client import connect_unix_sync

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

STORM = r"""
import socket, sys, time
path, idle, slow, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
held = []
for n in range(idle + slow):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5.0)
    try:
        s.connect(path)
        if n >= idle:
            s.sendall(b"\x94\x00")  # the first two bytes of a request, then nothing
    except OSError:
        s.close()
        continue
    held.append(s)
print(len(held), flush=True)
time.sleep(hold)  # bounded: the test ends the process sooner
"""

STORM_IDLE = 500
STORM_SLOW = 200
PROBES = 60


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def test_status_answers_during_a_connection_storm(daemon: Daemon) -> None:
    """RP-18 (Unix plane): 700 idle or slow connections from another process, more
    than the cap of 256; a fresh client's ``daemon.status`` answers every time.

    At the cap a newcomer evicts the longest-idle connection, the storm's slow
    connections count as idle (no call running), and a connection costs no decoder
    buffer until it sends, so the daemon's memory stays bounded.
    """
    daemon.start('project = "storm"\n\n' + app_toml("a", ["sleep", "3600"]))
    daemon.wait_online("a")
    proc = psutil.Process(daemon.pid)
    baseline = proc.memory_info().rss
    latencies: list[float] = []
    peak = baseline
    with subprocess.Popen(
        [sys.executable, "-c", STORM, daemon.socket, str(STORM_IDLE), str(STORM_SLOW), "120"],
        stdout=subprocess.PIPE,
        text=True,
    ) as storm:
        try:
            for _ in range(PROBES):
                started = time.monotonic()
                with connect_unix_sync(daemon.socket, timeout=20.0) as client:
                    assert client.call("daemon.status")["daemon"]["pid"] == daemon.pid
                latencies.append(time.monotonic() - started)
                peak = max(peak, proc.memory_info().rss)
            assert storm.stdout is not None
            opened = int(storm.stdout.readline())
            # The storm is in place (every connection made); probe a little more.
            for _ in range(10):
                started = time.monotonic()
                with connect_unix_sync(daemon.socket, timeout=20.0) as client:
                    assert client.call("daemon.status")["daemon"]["pid"] == daemon.pid
                latencies.append(time.monotonic() - started)
            peak = max(peak, proc.memory_info().rss)
        finally:
            storm.kill()
    assert opened == STORM_IDLE + STORM_SLOW
    print(
        f"\nstatus during a storm of {opened} connections: {len(latencies)} probes, "
        f"p50 {1000 * percentile(latencies, 50):.1f} ms, "
        f"p99 {1000 * percentile(latencies, 99):.1f} ms, "
        f"max {1000 * max(latencies):.1f} ms; "
        f"RSS {baseline / 2**20:.1f} -> peak {peak / 2**20:.1f} MiB"
    )
    # 256 connections at about 30 KiB each at most (a partial message's decoder);
    # before the decoder was made lazily, each connection cost about 1 MiB.
    assert peak - baseline < 48 * 2**20
    assert daemon.status()["daemon"]["pid"] == daemon.pid


# --------------------------------------------------------------------------- interop

PYNVIM_CLIENT = r"""
import json, sys
from pynvim import socket_session

# socket_session() itself sends an nvim_set_client_info notification on connect.
session = socket_session(sys.argv[1])
session.error_wrapper = lambda error: LookupError(error)
out = {"ping": session.request("daemon.ping")}
out["status"] = session.request("daemon.status", {})["daemon"]
try:
    session.request("daemon.get_app", {"name": 5})
except LookupError as exc:
    out["error"] = exc.args[0]
try:
    session.request("daemon.no_such_method")
except LookupError as exc:
    out["unknown"] = exc.args[0]
out["ping_after"] = session.request("daemon.ping", {})
session.close()
print(json.dumps(out))
"""

AIO_CLIENT = r"""
import asyncio, json, sys
from aio_msgpack_rpc import Client
from aio_msgpack_rpc.error import RPCResponseError

async def main():
    reader, writer = await asyncio.open_unix_connection(sys.argv[1])
    client = Client(reader, writer, response_timeout=30)
    await client.notify("client.hello", "aio-msgpack-rpc")
    out = {"ping": await client.call("daemon.ping")}
    out["status"] = (await client.call("daemon.status", {}))["daemon"]
    try:
        await client.call("daemon.get_app", {"name": 5})
    except RPCResponseError as exc:
        out["error"] = exc.args[0]
    try:
        await client.call("daemon.no_such_method")
    except RPCResponseError as exc:
        out["unknown"] = exc.args[0]
    out["ping_after"] = await client.call("daemon.ping", {})
    client.close()
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.mark.parametrize(
    "script",
    [pytest.param(PYNVIM_CLIENT, id="pynvim"), pytest.param(AIO_CLIENT, id="aio-msgpack-rpc")],
)
def test_standard_msgpack_rpc_clients_reach_the_daemon(daemon: Daemon, script: str) -> None:
    """SPEC 4: any msgpack-rpc client can talk to the daemon, notifications and all.

    Both libraries send a notification before their first request; it gets no
    reply, and the connection keeps working through an error reply.
    """
    daemon.start('project = "interop"\n\n' + app_toml("a", ["sleep", "3600"]))
    daemon.wait_online("a")
    result = subprocess.run(
        [sys.executable, "-c", script, daemon.socket],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    assert out["ping"] == {"pong": True}
    assert out["status"]["pid"] == daemon.pid
    assert out["error"]["code"] == "INVALID_PARAMS"
    assert "name" in out["error"]["message"]
    assert out["unknown"]["code"] == "METHOD_NOT_FOUND"
    assert out["ping_after"] == {"pong": True}
