"""Hold a home's pid lock until stdin closes, like a running daemon.

Usage: lock_holder.py HOME [--grandchild] [--barrier FIFO] [--pause-when-decided]

Prints ``locked <pid>`` once it holds the lock (or ``busy <message>`` and exits
1 if another process holds it). With ``--grandchild`` it first starts a
long-running child that inherits every inheritable fd (``close_fds=False``)
and our stdin, and prints ``grandchild <pid>``: the lock fd must not be among them (PC-16).
With ``--barrier FIFO`` it prints ``waiting`` and takes the lock only when the
test closes its end of the FIFO, at the same instant as every other contender.
With ``--pause-when-decided`` it prints ``decided`` once the lock is its own and
waits for a line on stdin before writing its record.
"""

from __future__ import annotations

import subprocess
import sys

from omnitron import _log
from omnitron.state import DaemonAlreadyRunning, Home, acquire_pid_lock

_log.configure(_log.Console(sys.stderr, timestamps=True))  # stdout is the test's


def main() -> int:
    home = Home(sys.argv[1])
    if "--barrier" in sys.argv:
        fifo = sys.argv[sys.argv.index("--barrier") + 1]
        with open(fifo, "rb") as barrier:  # the test holds the write end open
            print("waiting", flush=True)
            barrier.read()  # EOF when the test closes it: every contender wakes at once

    def pause() -> None:
        print("decided", flush=True)
        sys.stdin.readline()

    decided = pause if "--pause-when-decided" in sys.argv else None
    try:
        lock = acquire_pid_lock(home, _decided=decided)
    except DaemonAlreadyRunning as exc:
        print(f"busy {exc}", flush=True)
        return 1
    if "--grandchild" in sys.argv:
        # It shares our stdin, so it lives until the test closes that pipe.
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], close_fds=False
        )
        print(f"grandchild {child.pid}", flush=True)
    print(f"locked {lock.identity.pid}", flush=True)
    sys.stdin.read()
    lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
