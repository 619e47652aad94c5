"""The Python child of the benchmarks (stdlib only).

Usage: ``python notify_child.py [--hello SOCKET] [EXIT_MS]``.  With ``--hello``,
first sends its pid to that datagram socket (``benchmarks/compare.py`` times every
supervisor by it; dropped if nobody has read its queue for 1 s).  Sends
``READY=1`` to ``$NOTIFY_SOCKET`` like any sd_notify client, then waits for a
signal forever -- or, given a number of milliseconds, sleeps that long and exits
with code 1.
"""

import contextlib
import os
import signal
import socket
import sys
import time


def send(path: str, message: bytes, timeout: float | None = None) -> None:
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(message, address)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--hello"]:
        with contextlib.suppress(TimeoutError, BlockingIOError):
            send(args[1], str(os.getpid()).encode(), timeout=1.0)
        args = args[2:]
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        send(path, b"READY=1")
    if args:
        time.sleep(int(args[0]) / 1000)
        sys.exit(1)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
