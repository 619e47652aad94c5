"""An HTTP API that counts its hits in the store."""

import argparse
import http.server
import os
import socket

from _notify import notify


def store_call(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(line.encode() + b"\n")
        return conn.makefile().readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=int, required=True)
    args = parser.parse_args()
    greeting = os.environ.get("GREETING", "hello")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits = int(store_call(args.store, "GET hits") or 0) + 1
            store_call(args.store, f"SET hits {hits}")
            body = f"{greeting} (hit {hits})\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            print(format % args)

    http.server.ThreadingHTTPServer.allow_reuse_address = True
    with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler) as server:
        print(f"api listening on http://127.0.0.1:{args.port}/")
        notify("READY=1\nSTATUS=serving")
        server.serve_forever()


if __name__ == "__main__":
    main()
