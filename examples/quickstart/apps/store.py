"""A tiny line-based key-value store: `SET key value`, `GET key`."""

import argparse
import socketserver

DATA: dict[str, str] = {}


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for raw in self.rfile:
            parts = raw.decode(errors="replace").split(maxsplit=2)
            if len(parts) == 3 and parts[0] == "SET":
                DATA[parts[1]] = parts[2]
                self.wfile.write(b"OK\n")
            elif len(parts) == 2 and parts[0] == "GET":
                self.wfile.write((DATA.get(parts[1], "") + "\n").encode())
            else:
                self.wfile.write(b"ERR\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", args.port), Handler) as server:
        print(f"store listening on 127.0.0.1:{args.port}")
        server.serve_forever()


if __name__ == "__main__":
    main()
