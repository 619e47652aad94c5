"""The Python child of the peer comparison (stdlib only).

Usage: ``python hello_child.py SOCKET [EXIT_MS]``: sends its pid to the harness's
datagram socket, ``READY=1`` to ``$NOTIFY_SOCKET`` if set, then waits for a signal
forever -- or sleeps ``EXIT_MS`` and exits with code 1.  The pid is dropped if the
harness has not read its queue for 1 s.
"""

import contextlib
import os
import signal
import socket
import sys
import time


def send(path: str, message: bytes, *, timeout: float | None = None) -> None:
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        # A harness that has stopped reading holds the child for ``timeout`` at most.
        with contextlib.suppress(TimeoutError, BlockingIOError):
            sock.sendto(message, address)


def main() -> None:
    send(sys.argv[1], str(os.getpid()).encode(), timeout=1.0)
    notify = os.environ.get("NOTIFY_SOCKET")
    if notify:
        send(notify, b"READY=1")
    if len(sys.argv) > 2:
        time.sleep(int(sys.argv[2]) / 1000)
        sys.exit(1)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
