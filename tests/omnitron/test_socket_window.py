"""AU-14: the control socket is private from the instant it exists.

Binding with the usual umask and then ``chmod 0600`` leaves a window in which
another user can connect; these tests probe that window instead of looking at
the socket once the server is up.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from omnitron.rpc import Dispatcher, ServerOptions, open_unix_server

FAST = ServerOptions(hello_deadline=5.0, frame_deadline=5.0, idle_timeout=None)

# Another process stats the path in a tight loop from before the bind until the
# server is up, and prints every distinct mode it saw.
PROBE = """
import os, stat, sys
path, stop = sys.argv[1], sys.argv[2]
print("probing", flush=True)
seen = set()
while not os.path.exists(stop):
    try:
        seen.add(stat.S_IMODE(os.lstat(path).st_mode))
    except FileNotFoundError:
        pass
print(" ".join(oct(mode) for mode in sorted(seen)), flush=True)
"""


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="omw-", dir="/tmp"))
    directory.chmod(0o700)
    try:
        yield directory
    finally:
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
async def test_no_chmod_is_needed_for_a_private_socket(
    sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without any chmod at all, the socket is 0600: its mode is set at bind."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the socket's mode must come from the bind, not a chmod")

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(os, "fchmod", refuse)
    path = sock_dir / "daemon.sock"
    async with open_unix_server(path, Dispatcher(), options=FAST):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600


@pytest.mark.slow
@pytest.mark.usefixtures("open_umask")
async def test_another_process_never_sees_the_socket_with_a_wider_mode(sock_dir: Path) -> None:
    path, stop = sock_dir / "daemon.sock", sock_dir / "stop"
    with subprocess.Popen(  # noqa: ASYNC220 - read through a thread below
        [sys.executable, "-c", PROBE, str(path), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    ) as probe:
        try:
            assert probe.stdout is not None
            assert await trio.to_thread.run_sync(probe.stdout.readline) == "probing\n"
            for _ in range(20):  # each start is another chance to catch a window
                async with open_unix_server(path, Dispatcher(), options=FAST):
                    pass
            stop.touch()
            with trio.fail_after(20):
                seen = await trio.to_thread.run_sync(probe.stdout.readline)
            assert seen.split() == ["0o600"]
        finally:
            probe.kill()
