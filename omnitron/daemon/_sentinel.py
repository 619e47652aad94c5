"""Stops a dead daemon's apps: ``on_daemon_death = "stop"`` (the default).

A daemon killed with SIGKILL (or by the OOM killer) cannot stop its apps, and
they would run unsupervised until the next ``omnitron up``. So a daemon that
starts apps first starts a *sentinel*: a bare interpreter in a session of its
own, whose standard input is the read end of a pipe only the daemon can write
to. The sentinel blocks reading it, costing nothing:

- a daemon that exits cleanly (it has stopped its apps) writes one byte, and
  the sentinel exits;
- a daemon that dies closes the pipe without a word (the kernel closes its
  descriptors), the sentinel reads end-of-file, and only then loads the code
  that finds every process carrying this home's markers (whole trees: children
  inherit the markers) and stops them, SIGTERM then SIGKILL after
  :data:`GRACE` seconds.

No per-child mechanism is involved (``PR_SET_PDEATHSIG`` would cost each spawn
its vfork fast path), and the sentinel's idle cost is one sleeping ``/bin/sh``
(1.7 MiB resident, 0.1 MiB of it its own, against 8.5 and 2.7 MiB for a bare
Python interpreter): Python is started only once there is work to do. Its
command line reads
``/bin/sh -c ... omnitron-sentinel PYTHON HOME``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

__all__ = ["GRACE", "SENTINEL_NAME", "open_sentinel"]

#: Seconds between SIGTERM and SIGKILL for a dead daemon's apps: they must be
#: gone within a second of the daemon's death.
GRACE = 0.5

# What the sentinel runs while it waits: a shell blocked reading its stdin. A clean
# stop writes a byte ("q", no newline: `read` fails at the end of the input but has
# set the variable); end-of-file with nothing read (the daemon died) or a read
# error makes it `python -m omnitron.daemon._sentinel HOME`.
_WAIT = 'IFS= read -r said; [ -n "$said" ] || exec "$1" -m omnitron.daemon._sentinel "$2"'
SENTINEL_NAME = "omnitron-sentinel"
"""The sentinel's ``$0``, so ``ps`` shows what it is."""


@asynccontextmanager
async def open_sentinel(home: Path) -> AsyncIterator[None]:
    """Run a sentinel for ``home``'s apps for the duration of the block.

    Leaving the block normally (or by an exception) tells the sentinel that the
    daemon is stopping on purpose; only a daemon that dies inside the block
    leaves the sentinel to stop its apps.
    """
    read_end, write_end = os.pipe()  # both close-on-exec: no app inherits them
    try:
        process = await trio.lowlevel.open_process(
            ["/bin/sh", "-c", _WAIT, SENTINEL_NAME, sys.executable, os.fspath(home)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # Not one of the home's processes: `omnitron kill` and leftover scans
            # look for the markers, and the sentinel is found by its own pipe.
            env={k: v for k, v in os.environ.items() if not k.startswith("OMNITRON_")},
        )
    finally:
        os.close(read_end)
    try:
        yield
    finally:
        try:
            os.write(write_end, b"q")
        finally:
            os.close(write_end)
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()


async def _stop_apps(home: str) -> None:
    from ._leftovers import find_leftovers, terminate_leftovers

    leftovers = await trio.to_thread.run_sync(find_leftovers, home)
    if leftovers:
        await terminate_leftovers(leftovers, timeout=GRACE)


def main() -> None:  # pragma: no cover - runs in the sentinel process (tested end to end)
    """The daemon of ``sys.argv[1]`` died: stop its apps."""
    trio.run(_stop_apps, sys.argv[1])


if __name__ == "__main__":  # pragma: no cover
    main()
