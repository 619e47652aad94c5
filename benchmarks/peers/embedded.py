"""The ``supervision`` library embedded in a Trio program: the peer "supervision".

Usage: ``python embedded.py N PROGRAM [ARG...]``.  Supervises N copies of PROGRAM
with the public API only (one_for_one, ``Backoff.none()``, a restart limit of a
million per second, ``Ready.notify()``) until SIGTERM or SIGINT.
"""

import signal
import sys
from collections.abc import Mapping, Sequence

import trio

from supervision import (
    Backoff,
    ChildSpec,
    Intensity,
    ProcessChild,
    Ready,
    Strategy,
    SupervisorSpec,
    open_supervisor,
)


def spec(
    argv: Sequence[str],
    count: int,
    *,
    notify: bool = True,
    env: Mapping[str, str] | None = None,
    prefix: str = "c",
) -> SupervisorSpec:
    """``count`` copies of ``argv``, restarted at once (also used by restart_latency.py)."""
    ready = Ready.notify() if notify else Ready.on_spawn()
    return SupervisorSpec(
        name="bench",
        strategy=Strategy.ONE_FOR_ONE,
        intensity=Intensity(max_restarts=10**6, window=1.0),
        backoff=Backoff.none(),
        children=[
            ChildSpec(
                f"{prefix}{i:03d}" if count > 1 else prefix,
                ProcessChild(list(argv), env=dict(env) if env else None, ready=ready),
            )
            for i in range(count)
        ],
    )


async def main(count: int, argv: list[str]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_supervisor(spec(argv, count)):
            async for _ in signals:
                return


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), sys.argv[2:])
