"""The Python child of the restart-latency benchmark (stdlib only).

Sends ``READY=1`` to ``$NOTIFY_SOCKET`` like any sd_notify client, then waits for a
signal forever -- or, given a number of milliseconds, sleeps that long and exits
with code 1.
"""

import os
import signal
import socket
import sys
import time


def notify_ready() -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)


def main() -> None:
    notify_ready()
    if len(sys.argv) > 1:
        time.sleep(int(sys.argv[1]) / 1000)
        sys.exit(1)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
