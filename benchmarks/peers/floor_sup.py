"""The floor in Python: the least a supervisor written in Python can do.

Usage: ``python floor_sup.py N PROGRAM [ARG...]``.  Starts N copies of PROGRAM
(``os.posix_spawn``, each in a new session), then blocks in ``os.wait()`` and
starts a new copy as soon as one exits.  On SIGTERM or SIGINT it kills its
children and exits.
"""

import os
import signal
import sys


class Stop(Exception):
    pass


def main() -> None:
    count, argv = int(sys.argv[1]), sys.argv[2:]
    env = dict(os.environ)

    def spawn() -> int:
        return os.posix_spawn(argv[0], argv, env, setsid=True)

    def stop(signum: int, frame: object) -> None:
        raise Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    slots: dict[int, None] = {}
    try:
        for _ in range(count):
            slots[spawn()] = None
        while True:
            if not slots:
                signal.pause()
                continue
            pid, _ = os.wait()
            if pid in slots:
                del slots[pid]
                slots[spawn()] = None
    except Stop:
        pass
    finally:
        for pid in slots:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


if __name__ == "__main__":
    main()
