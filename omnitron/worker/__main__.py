"""``python -m omnitron.worker describe BOOTSTRAP`` | ``serve BOOTSTRAP PROCESS``.

Run by the daemon with the app's own interpreter. ``describe`` prints one JSON
object on stdout (exit 0; exit 2 with ``errors`` when the definition is invalid
or the file fails to import). ``serve`` runs one instance of one process: see
:mod:`omnitron.worker._serve`. Exit code 2 also means a usage error.
"""

from __future__ import annotations

import json
import sys

USAGE = (
    "usage: python -m omnitron.worker describe BOOTSTRAP_FILE\n"
    "       python -m omnitron.worker serve BOOTSTRAP_FILE PROCESS_NAME\n"
    "         (env: OMNITRON_WORKER_SOCKET=PATH, OMNITRON_INSTANCE=N)\n"
)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "describe":
        from ._bootstrap import describe

        code, answer = describe(argv[1])
        sys.stdout.write(json.dumps(answer, default=str) + "\n")
        sys.stdout.flush()
        return code
    if len(argv) == 3 and argv[0] == "serve":
        from ._serve import main as serve_main

        return serve_main(argv[1], argv[2])
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
