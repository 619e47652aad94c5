"""A stand-in worker process for examples/embedded.py (standard library only).

It does what a real service under a supervisor does: reports ready with the
systemd ``sd_notify`` protocol (``READY=1`` to ``$NOTIFY_SOCKET``), keeps a
``STATUS=`` line up to date, writes a log line now and then, and exits cleanly on
SIGTERM. Any sd_notify library would do the same; this one needs no dependency.

Usage: ``python worker.py NAME [SECONDS_BETWEEN_LINES]``
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time


def sd_notify(message: str) -> None:
    """Send one datagram to the supervisor, if it asked for one."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path  # "@" = abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


def stop(signum: int, frame: object) -> None:
    print(f"got {signal.Signals(signum).name}, exiting")
    sys.exit(0)


def main() -> None:
    name = sys.argv[1]
    interval = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    signal.signal(signal.SIGTERM, stop)

    print("warming up", file=sys.stderr)
    time.sleep(0.2)  # pretend to open connections, load data...
    print(f"{name} up (pid {os.getpid()})")
    sd_notify("READY=1\nSTATUS=idle")

    jobs = 0
    while True:
        time.sleep(interval)
        jobs += 1
        print(f"finished job {jobs}")
        sd_notify(f"STATUS={jobs} jobs done")


if __name__ == "__main__":
    main()
