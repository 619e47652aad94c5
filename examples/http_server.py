"""A small HTTP server made for zero-downtime reloads (standard library only).

Under omnitron, give its app a daemon-owned socket and notify readiness::

    [[apps]]
    name = "web"
    command = ["python3", "http_server.py"]
    sockets = [{ name = "http", port = 8000 }]
    ready = "notify"
    instances = 3

Every process then accepts on the same listening socket (passed as fd 3 with
``LISTEN_FDS``), so ``omnitron reload web`` and ``omnitron scale web N`` refuse
no connection. Run by hand, it binds ``127.0.0.1:$PORT`` (default 8000) itself.

- ``GET /`` answers ``pid N`` (which process served you).
- ``GET /sleep?s=0.5`` answers the same after that many seconds (at most 10).
- It tells its supervisor ``READY=1`` over ``$NOTIFY_SOCKET`` once it accepts.
- On SIGTERM it stops accepting, finishes the request in progress and exits 0;
  connections still waiting in the shared socket's queue are served by the
  other processes (or the next one).

One request at a time per process: run several processes (``instances``) for
concurrency.
"""

from __future__ import annotations

import http.server
import os
import select
import signal
import socket
import sys
import time
import urllib.parse

LISTEN_FDS_START = 3


def listening_sockets() -> list[socket.socket]:
    """The sockets passed by the supervisor (socket activation: fds 3, 4, ...), or
    one bound here."""
    count = int(os.environ.get("LISTEN_FDS", "0"))
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and count:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)  # not for our own children
        return [
            socket.socket(fileno=fd) for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count)
        ]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(os.environ.get("PORT", "8000"))))
    sock.listen(128)
    return [sock]


def notify(state: str) -> None:
    """Send ``state`` (``READY=1``) to the supervisor, if there is one (sd_notify)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(state.encode())


class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10  # a client that sends nothing does not hold the process forever

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/sleep":
            seconds = float(urllib.parse.parse_qs(url.query).get("s", ["0"])[0])
            time.sleep(min(max(seconds, 0.0), 10.0))
        elif url.path != "/":
            self.send_error(404)
            return
        body = f"pid {os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request would flood the logs under load


def serve() -> None:
    sockets = listening_sockets()
    for sock in sockets:
        # Non-blocking: when several processes share a socket, another one may take
        # the connection this one was woken for; accept() must not then wait for
        # the next one (it would not see SIGTERM meanwhile).
        sock.setblocking(False)
    server = http.server.HTTPServer(("", 0), Handler, bind_and_activate=False)
    server.socket.close()

    stopping = False
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)  # a signal wakes select() at once

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    notify("READY=1")
    while not stopping:
        readable, _, _ = select.select([*sockets, wake_read], [], [])
        for sock in readable:
            if sock is wake_read or stopping:
                continue
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another process took it
            conn.setblocking(True)
            try:
                server.process_request(conn, address)  # answers, then closes it
            except Exception:
                server.handle_error(conn, address)  # a client that went away
                server.shutdown_request(conn)
    notify("STOPPING=1")
    for sock in sockets:
        sock.close()
    sys.exit(0)


if __name__ == "__main__":
    serve()
