"""What a connection costs in memory: decoder state, held connections, connect/close cycles.

The msgpack ``Unpacker`` preallocates ``read_size`` bytes, which defaults to
``min(max_buffer_size, 1 MiB)``, and holds about 20 KiB of decoder stack besides.
A decoder now has no unpacker until bytes arrive and drops it at every message
boundary; these tests hold that, with ``tracemalloc`` for the decoder and with the
process's RSS for a real server on a real socket (clients in another process, so
only the server's memory is measured). The RSS bounds are loose on purpose: they
fail on a megabyte per connection or a leak per cycle, never on noise.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import msgpack
import psutil
import pytest
import trio
import trio.testing

from omnitron.rpc import Dispatcher, ServerOptions, open_unix_server
from omnitron.rpc._wire import FrameDecoder

WAIT = 60.0

PING = msgpack.packb([0, 1, "daemon.ping", [{}]])

# Clients in another process. argv: path, count, mode. "hold" opens `count`
# connections (every other one pings first) and keeps them until stdin closes;
# "cycle" opens, pings and closes `count` times.
CLIENT = r"""
import socket, sys
path, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ping = bytes.fromhex(sys.argv[4])
held = []
for n in range(count):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
    if mode == "cycle" or n % 2:
        s.sendall(ping)
        assert s.recv(100), "no reply"
    if mode == "cycle":
        s.close()
    else:
        held.append(s)
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def sock_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="omcap-", dir="/tmp") as directory:
        yield Path(directory, "d.sock")  # mkdtemp makes it 0700, as the server requires


def test_a_decoder_holds_no_msgpack_buffer_unless_a_message_is_partial() -> None:
    """Issue: every connection preallocated about 1 MiB in its Unpacker."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        decoders = [FrameDecoder() for _ in range(50)]
        fresh = tracemalloc.get_traced_memory()[0] - before
        for decoder in decoders:
            decoder.feed(PING)
            assert decoder.next_frame() == [0, 1, "daemon.ping", [{}]]
            assert decoder.next_frame() is None
        drained = tracemalloc.get_traced_memory()[0] - before
        for decoder in decoders:
            decoder.feed(PING[:3])
            assert decoder.next_frame() is None
        partial = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert fresh < 50 * 2048, fresh  # no unpacker before the first byte
    assert drained < 50 * 2048, drained  # none after a complete message either
    assert partial < 50 * 64 * 1024, partial  # a partial message: a small buffer, not 1 MiB


async def _clients(path: Path, count: int, mode: str) -> int:
    """Run the client process; return the server's RSS once it is ready, then end it."""
    rss = 0
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-c", CLIENT, str(path), str(count), mode, PING.hex()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        )
        assert process.stdout is not None
        assert process.stdin is not None
        said = b""
        while not said.endswith(b"\n"):  # a pipe may hand over a line in pieces
            chunk = await process.stdout.receive_some(16)
            assert chunk, f"the client exited before it was ready (said {said!r})"
            said += chunk
        assert said == b"ready\n"
        await trio.testing.wait_all_tasks_blocked()
        rss = psutil.Process().memory_info().rss
        await process.stdin.aclose()
    return rss


@pytest.mark.slow
async def test_held_connections_and_connect_close_cycles_cost_bounded_memory(
    sock_path: Path,
) -> None:
    """200 held connections, then 2,000 connect/ping/close cycles: RSS stays bounded.

    Before the fix, 10,000 cycles grew the server by about 85 MB and a storm of
    reconnecting clients by hundreds of MB (cycles kept decoders alive until the
    cyclic GC ran, and freed megabyte buffers fragmented the heap).
    """
    options = ServerOptions(evict_idle=True)
    process = psutil.Process()
    with trio.fail_after(WAIT):
        async with open_unix_server(sock_path, Dispatcher(), options=options) as server:
            await _clients(sock_path, 200, "cycle")  # warm-up: allocator pools, imports
            base = process.memory_info().rss
            held = await _clients(sock_path, 200, "hold")
            assert server.statistics().accepted == 400
            assert held - base < 200 * 64 * 1024, f"{(held - base) / 200:.0f} bytes/connection"
            base = process.memory_info().rss
            await _clients(sock_path, 2000, "cycle")
            await trio.testing.wait_all_tasks_blocked()
            grown = process.memory_info().rss - base
            assert grown < 8 * 2**20, f"{grown / 2**20:.1f} MiB after 2,000 cycles"
            assert server.statistics().connections == 0
