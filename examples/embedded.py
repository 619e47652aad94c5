"""Embed a supervision tree in a Trio program.

A pool of three worker processes (``examples/worker.py``) runs under its own
supervisor, next to a Trio task that prints the tree every two seconds. The
workers report ready with sd_notify and their output arrives here line by line.
Every lifecycle event of the tree is printed as it happens. Ctrl-C (or SIGTERM)
stops the tree gracefully: children in reverse start order, each worker with
SIGTERM first.

Usage::

    python examples/embedded.py                  # runs until Ctrl-C
    python examples/embedded.py --duration 10    # stops by itself after 10 s
    python examples/embedded.py --crash-demo     # SIGKILLs a worker after 3 s

The tree::

    embedded                 one_for_one (the defaults)
    ├── pool                 one_for_one, 3 restarts in 10 s, backoff 0.5 s .. 5 s
    │   ├── worker-1         process, Ready.notify(), output delivered as lines
    │   ├── worker-2
    │   └── worker-3
    └── ticker               task, prints which_children()
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

from supervision import (
    Backoff,
    ChildSpec,
    ChildState,
    Intensity,
    Output,
    ProcessChild,
    Ready,
    StartFailure,
    Strategy,
    Subscription,
    Supervisor,
    SupervisorGaveUp,
    SupervisorSpec,
    TaskChild,
    events,
    open_supervisor,
)

WORKER = Path(__file__).resolve().with_name("worker.py")


def say(line: str) -> None:
    print(line, flush=True)


def prefixed(prefix: str) -> Callable[[str], None]:
    """An output sink: print each line of a child's output after its name."""

    def sink(line: str) -> None:
        say(f"[{prefix}] {line}")

    return sink


def pool_spec(workers: int = 3) -> SupervisorSpec:
    """A subtree of identical worker processes."""
    children = []
    for i in range(1, workers + 1):
        name = f"worker-{i}"
        process = ProcessChild(
            [sys.executable, str(WORKER), name, str(1.0 + i / 2)],
            ready=Ready.notify(),  # ready when the worker sends READY=1
            startup_timeout=10.0,
            stop_timeout=5.0,  # SIGTERM, then SIGKILL after 5 s
            stdout=Output.lines(prefixed(f"pool/{name}")),
            stderr=Output.lines(prefixed(f"pool/{name} stderr")),
        )
        children.append(ChildSpec(name, process))
    return SupervisorSpec(
        name="pool",
        strategy=Strategy.ONE_FOR_ONE,
        intensity=Intensity(max_restarts=3, window=10.0),
        backoff=Backoff(initial=0.5, max=5.0, factor=2.0),
        children=children,
    )


def print_tree(sup: Supervisor, indent: str = "") -> None:
    for child in sup.which_children():
        pid = "-" if child.pid is None else str(child.pid)
        line = f"{indent}{child.name:<10} {child.kind:<10} {child.state.value:<10} pid={pid:<8}"
        line += f" restarts={child.restarts}"
        if child.kind == "process" and (status := sup.status_text(child.name)):
            line += f"  status={status!r}"
        say(f"[ticker] {line}")
        if child.kind == "supervisor" and child.state is ChildState.RUNNING:
            print_tree(sup.child_supervisor(child.name), indent + "  ")


async def ticker(
    sup: Supervisor, every: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """A task leaf: prints the tree every ``every`` seconds until it is cancelled."""
    task_status.started()  # ready at once; a real task would connect first
    while True:
        await trio.sleep(every)
        print_tree(sup)


def describe(event: events.Event) -> str:
    where = "/".join(event.path)
    pid = "" if event.pid is None else f" pid={event.pid}"
    match event:
        case events.ChildExited():
            detail = f" {event.exit}" + (" (start failure)" if event.start_failure else "")
        case events.ChildRestarting():
            detail = f" attempt {event.attempt} in {event.delay:g}s"
        case events.ChildStopped():
            detail = "" if event.exit is None else f" {event.exit}"
            detail += " (had to be SIGKILLed)" if event.killed else ""
        case events.SupervisorGaveUp():
            detail = f" {event.restarts} restarts in {event.window:g}s, last {event.child!r}"
        case events.EventsDropped():
            detail = f" {event.count} events dropped"
        case _:
            detail = ""
    return f"{type(event).__name__:<15} {where}{pid}{detail}"


async def print_events(subscription: Subscription) -> None:
    """Print every event; the subscription ends once the tree has stopped."""
    async with subscription:
        async for event in subscription:
            say(f"event  {describe(event)}")


async def stop_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        say(f"got {signal.Signals(signum).name}")
        scope.cancel()
        return


async def kill_a_worker(sup: Supervisor, after: float) -> None:
    await trio.sleep(after)
    victim = sup.child_supervisor("pool").which_children()[1]
    if victim.pid is not None:
        say(f"crash demo: SIGKILL {victim.name} (pid {victim.pid})")
        os.kill(victim.pid, signal.SIGKILL)


async def main(duration: float, crash_demo: bool) -> int:
    root = SupervisorSpec(name="embedded")
    # Ctrl-C and SIGTERM are received as messages for the whole run, so they never
    # interrupt the shutdown halfway: the first one starts it, later ones are ignored.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # The printer's nursery is entered first, so it outlives the tree and also
        # prints the events of its shutdown; the subscription ends after the last one.
        async with trio.open_nursery() as printer:
            try:
                async with open_supervisor(root) as sup:
                    printer.start_soon(print_events, sup.subscribe())
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(stop_on_signal, signals, nursery.cancel_scope)
                        # Children are added after subscribing, so the printer sees them
                        # start. start_child returns once the child is ready.
                        await sup.start_child(ChildSpec("pool", pool_spec()))
                        await sup.start_child(ChildSpec("ticker", TaskChild(ticker, sup, 2.0)))
                        # --duration counts from here, however long the start took.
                        nursery.cancel_scope.deadline = trio.current_time() + duration
                        say("running; press Ctrl-C to stop")
                        if crash_demo:
                            nursery.start_soon(kill_a_worker, sup, 3.0)
                        await trio.sleep_forever()
                    say("stopping the tree")
                    # Leaving the block stops every child, in reverse start order.
            except (StartFailure, SupervisorGaveUp) as exc:
                print(f"embedded: {exc}", file=sys.stderr)
                return 1
    say("stopped")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--duration", type=float, default=math.inf, metavar="SECONDS", help="stop after SECONDS"
    )
    parser.add_argument(
        "--crash-demo", action="store_true", help="SIGKILL a worker after 3 s to show a restart"
    )
    args = parser.parse_args()
    try:
        return trio.run(main, args.duration, args.crash_demo)
    except KeyboardInterrupt:  # Ctrl-C before the tree was running: nothing to stop
        return 130


if __name__ == "__main__":
    sys.exit(cli())
