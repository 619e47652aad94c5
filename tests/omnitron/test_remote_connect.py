"""``omnitron.rpc.connect_url``'s deadline: a peer that accepts and never answers.

A real listening socket that accepts and stays silent; Trio's mock clock
(autojump) makes the wait deterministic.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from omnitron.rpc import RpcTimeout, connect_url


async def test_a_silent_peer_times_out_the_handshake(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[trio.SocketStream] = []

    async def hold() -> None:
        while True:
            accepted.append(await listeners[0].accept())  # and never say a word

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        started = trio.current_time()
        with pytest.raises(RpcTimeout, match=r"connecting to tls://127.0.0.1:\d+ took longer"):
            async with connect_url(
                f"tls://127.0.0.1:{port}",
                fingerprint="SHA256:" + "A" * 43,
                known_hosts=str(tmp_path / "known_hosts"),
                connect_timeout=3.0,
            ):
                pytest.fail("connected to a silent peer")
        assert trio.current_time() - started == pytest.approx(3.0)
        nursery.cancel_scope.cancel()
    for stream in accepted:
        await stream.aclose()
    for listener in listeners:
        await listener.aclose()


async def test_only_unix_and_tls_urls(tmp_path: Path) -> None:
    for url in ("ws://127.0.0.1:1", "http://127.0.0.1:1"):
        with pytest.raises(ValueError, match="tls://"):
            async with connect_url(url, known_hosts=str(tmp_path / "k")):
                pytest.fail("connected")
