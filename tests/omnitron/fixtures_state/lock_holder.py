"""Hold a home's pid lock until stdin closes, like a running daemon.

Usage: lock_holder.py HOME [--grandchild]

Prints ``locked <pid>`` once it holds the lock (or ``busy <message>`` and exits
1 if another process holds it). With ``--grandchild`` it first starts a
long-running child that inherits every inheritable fd (``close_fds=False``)
and our stdin, and prints ``grandchild <pid>``: the lock fd must not be among them (PC-16).
"""

from __future__ import annotations

import subprocess
import sys

import structlog

from omnitron.state import DaemonAlreadyRunning, Home, acquire_pid_lock

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def main() -> int:
    home = Home(sys.argv[1])
    try:
        lock = acquire_pid_lock(home)
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
