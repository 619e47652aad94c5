"""Real worker processes on real Unix sockets, for the worker tests.

A plain module the tests import, not a ``conftest``: two directories' conftest
modules both named ``conftest`` clash when one pytest command collects both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import attrs
import trio

PROJECT = Path(__file__).parent / "project"
BOOTSTRAP = PROJECT / "bootstrap.py"
START_TIMEOUT = 60.0


@attrs.define
class RunningWorker:
    process: trio.Process
    socket: str
    marker: Path
    directory: Path
    notify: trio.socket.SocketType

    async def notified(self, message: bytes) -> None:
        """Wait until the worker sends ``message`` (e.g. ``STOPPING=1``) to NOTIFY_SOCKET."""
        while message not in (await self.notify.recv(4096)).split(b"\n"):
            pass

    def events(self) -> list[str]:
        return self.marker.read_text().splitlines() if self.marker.exists() else []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.process.pid, sig)


@contextlib.asynccontextmanager
async def running_worker(
    process: str = "calc", env: Mapping[str, str] | None = None
) -> AsyncIterator[RunningWorker]:
    """Start ``python -m omnitron.worker serve`` and wait for its READY=1 (real sd_notify)."""
    # A short private directory: a Unix socket path has at most 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="ow-", dir="/tmp"))
    os.chmod(directory, 0o700)
    sock_path = str(directory / "w.sock")
    notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await notify.bind(str(directory / "notify.sock"))
    marker = directory / "events"
    child_env = {
        **os.environ,
        "OMNITRON_WORKER_SOCKET": sock_path,
        "OMNITRON_INSTANCE": "3",
        "NOTIFY_SOCKET": str(directory / "notify.sock"),
        "LAB_MARKER": str(marker),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "omnitron.worker", "serve", str(BOOTSTRAP), process],
        env=child_env,
        stdin=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(START_TIMEOUT):
            async with trio.open_nursery() as nursery:

                async def exited() -> None:
                    code = await proc.wait()
                    raise AssertionError(f"the worker exited with {code} before it was ready")

                nursery.start_soon(exited)
                while b"READY=1" not in (await notify.recv(4096)).split(b"\n"):
                    pass
                nursery.cancel_scope.cancel()
        yield RunningWorker(proc, sock_path, marker, directory, notify)
    finally:
        notify.close()
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
        shutil.rmtree(directory, ignore_errors=True)
