"""One persistent API client of a supervisor, timing each status call.

Usage: ``python probe.py KIND TARGET START END INTERVAL``

Connects to the supervisor KIND at TARGET, makes one call, waits until the wall
clock reaches START, then calls its status API until END, pausing INTERVAL
seconds after each call (0: back to back).  Prints a JSON list of
``[seconds since START, seconds the call took]``.  KIND and TARGET:

- ``supervisord``: ``http://127.0.0.1:PORT`` (XML-RPC ``supervisor.getAllProcessInfo``)
- ``circus``: the ``ipc://`` endpoint (``circus.client``, ``status`` of every
  watcher); run with the Python that has circus
- ``omnitron``: the daemon's socket (``daemon.status``)
- ``erlang``: ``127.0.0.1:PORT``, the control socket of bench_sup.erl (``status``)
"""

import json
import socket
import sys
import time
from collections.abc import Callable


def supervisord(target: str) -> Callable[[], object]:
    import xmlrpc.client

    proxy = xmlrpc.client.ServerProxy(target)  # keeps its HTTP/1.1 connection
    return proxy.supervisor.getAllProcessInfo  # type: ignore[no-any-return]


def circus(target: str) -> Callable[[], object]:
    from circus.client import CircusClient  # type: ignore[import-not-found]

    client = CircusClient(endpoint=target, timeout=30)
    return lambda: client.call({"command": "status", "properties": {}})


def omnitron(target: str) -> Callable[[], object]:
    from omnitron.rpc.sync_client import connect_unix_sync

    client = connect_unix_sync(target, timeout=30)
    return lambda: client.call("daemon.status")


def erlang(target: str) -> Callable[[], object]:
    host, port = target.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    reader = sock.makefile("rb")

    def call() -> bytes:
        sock.sendall(b"status\n")
        return reader.readline()

    return call


KINDS = {"supervisord": supervisord, "circus": circus, "omnitron": omnitron, "erlang": erlang}


def main() -> None:
    kind, target = sys.argv[1], sys.argv[2]
    start, end, interval = float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    call = KINDS[kind](target)
    call()
    while time.time() < start:
        time.sleep(0.001)
    base = time.perf_counter() - (time.time() - start)
    samples = []
    while time.time() < end:
        begin = time.perf_counter()
        call()
        done = time.perf_counter()
        samples.append([round(begin - base, 6), round(done - begin, 7)])
        if interval:
            time.sleep(interval)
    print(json.dumps(samples))


if __name__ == "__main__":
    main()
