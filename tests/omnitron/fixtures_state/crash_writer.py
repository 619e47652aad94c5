"""Write one state generation and crash at a chosen step, like a SIGKILLed daemon.

Usage: crash_writer.py HOME RESTARTS [STEP WHEN]

Takes the pid lock, loads the state, and writes a snapshot with one app whose
``restarts`` is RESTARTS. With STEP and WHEN (``before``/``after``), the
process ends with ``os._exit(137)`` at that step of the write: no cleanup, no
lock release, exactly as if it had been killed there. Without them it writes
and exits 0.
"""

from __future__ import annotations

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
    acquire_pid_lock,
    load_state,
    open_state_writer,
)
from omnitron.state.testing import Fault, FaultyFileSystem

_log.configure(_log.Console(sys.stderr, timestamps=True))  # stdout is the test's


async def main(home: Home, restarts: int, fault: tuple[Step, str] | None) -> None:
    lock = acquire_pid_lock(home)
    loaded = load_state(home)
    fs = FaultyFileSystem(FileSystem())
    if fault is not None:
        step, when = fault
        fs.inject(step, Fault.exit(137), when=when)  # type: ignore[arg-type]
    store = StateStore(home, loaded, fs=fs)
    async with open_state_writer(store) as send:
        await send.send(DaemonState(apps=[AppState(name="api", restarts=restarts)]))
    lock.release()


if __name__ == "__main__":
    home = Home(sys.argv[1])
    restarts = int(sys.argv[2])
    fault = (Step(sys.argv[3]), sys.argv[4]) if len(sys.argv) > 3 else None
    trio.run(main, home, restarts, fault)
