"""The state layer of a daemon, wired as the daemon wires it, until SIGTERM.

Usage: daemon_like.py HOME COUNT

Ensures the home, takes the pid lock, loads the state, runs the writer (with a
slow fsync, so that changes are still pending when the signal comes), sends
COUNT snapshots, prints ``ready``, and waits for SIGTERM. On SIGTERM it leaves
its ``async with`` blocks normally: the last snapshot is flushed, the pid file
removed, and it exits 0 (PC-10).
"""

from __future__ import annotations

import signal
import sys

import trio

from omnitron import _log
from omnitron.state import (
    AppState,
    DaemonState,
    FileSystem,
    Home,
    StateStore,
    Step,
    load_state,
    open_pid_lock,
    open_state_writer,
)
from omnitron.state.testing import Fault, FaultyFileSystem

_log.configure(_log.Console(sys.stderr, timestamps=True))  # stdout is the test's


async def main(home: Home, count: int) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        await trio.to_thread.run_sync(home.ensure)
        async with open_pid_lock(home):
            loaded = await trio.to_thread.run_sync(load_state, home)
            fs = FaultyFileSystem(FileSystem())
            fs.inject(Step.FSYNC, Fault.delay(0.2))
            store = StateStore(home, loaded, fs=fs)
            async with open_state_writer(store) as send:
                for restarts in range(1, count + 1):
                    await send.send(DaemonState(apps=[AppState(name="api", restarts=restarts)]))
                print(f"ready {store.statistics().pending}", flush=True)
                async for _ in signals:
                    break


if __name__ == "__main__":
    trio.run(main, Home(sys.argv[1]), int(sys.argv[2]))
