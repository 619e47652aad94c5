"""Fixtures for the real-process tests of the process leaf (``test_process_*.py``).

A :class:`Slot` drives one :class:`ProcessRunner` the way the supervisor engine
does: ``await nursery.start(runner.run, spawned)`` per generation, and a cancel
of that task to stop it. Fixture children live in ``tests/fixtures/children``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psutil
import pytest
import trio

from supervision._events import Event
from supervision._exit import ExitStatus
from supervision._host import ProcessHost, open_process_host
from supervision._process import ProcessRunner
from supervision._runner import RunnerContext, StopReport
from supervision._spec import ProcessChild

CHILDREN = Path(__file__).resolve().parent.parent / "fixtures" / "children"
TIMEOUT = 10.0


def child_argv(name: str, *args: object) -> list[str]:
    """The argv running fixture child ``name`` (Python ones through this interpreter)."""
    path = CHILDREN / name
    with path.open("rb") as f:
        shebang = f.read(2) == b"#!"
    argv = [str(path)] if shebang else [sys.executable, str(path)]
    return argv + [str(a) for a in args]


class Lines:
    """An ``Output.lines`` sink that tests can wait on."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = trio.Event()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(
        self, predicate: Callable[[list[str]], bool], within: float = TIMEOUT
    ) -> list[str]:
        with trio.fail_after(within):
            while not predicate(self.lines):
                await self._changed.wait()
        return self.lines

    async def line_starting(self, prefix: str, within: float = TIMEOUT) -> str:
        await self.wait_for(lambda lines: any(x.startswith(prefix) for x in lines), within)
        return next(x for x in self.lines if x.startswith(prefix))

    def pids(self, prefix: str = "pid ") -> list[int]:
        return [int(x[len(prefix) :]) for x in self.lines if x.startswith(prefix)]


class Slot:
    """One child slot: its runner, and the generation currently running."""

    def __init__(self, runner: ProcessRunner, nursery: trio.Nursery) -> None:
        self.runner = runner
        self.spawned: list[int | None] = []
        self.exit: ExitStatus | None = None
        self.error: BaseException | None = None
        self._nursery = nursery
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self._done.set()  # no generation yet

    async def start(self, within: float = TIMEOUT) -> int:
        """Start a generation; returns its pid once ready (raises StartFailure)."""
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self.exit = None
        self.error = None
        scope, done = self._scope, self._done

        async def generation(task_status: trio.TaskStatus[int | None]) -> None:
            try:
                with scope:
                    self.exit = await self.runner.run(self.spawned.append, task_status=task_status)
            except Exception as exc:
                self.error = exc
                raise
            finally:
                done.set()

        with trio.fail_after(within):
            pid = await self._nursery.start(generation)
        assert isinstance(pid, int)
        return pid

    async def stop(self, within: float = TIMEOUT) -> StopReport:
        """Cancel the running generation and wait until it is gone."""
        await self.halt(within)
        report = self.runner.stop_report
        assert report is not None
        return report

    async def halt(self, within: float = TIMEOUT) -> None:
        """Cancel the running generation and wait until it is gone, however it ended.

        A child that exits by itself just as the cancel comes ends its generation
        normally, with no stop report; teardown must not count that as a failure.
        """
        self._scope.cancel()
        with trio.fail_after(within):
            await self._done.wait()

    async def exited(self, within: float = TIMEOUT) -> ExitStatus:
        """Wait for the generation to end by itself."""
        with trio.fail_after(within):
            await self._done.wait()
        assert self.exit is not None, self.error
        return self.exit

    @property
    def running(self) -> bool:
        return not self._done.is_set()


class Slots:
    """Makes slots on one host; everything is stopped and closed at teardown."""

    def __init__(self, host: ProcessHost, nursery: trio.Nursery) -> None:
        self.host = host
        self.events: list[Event] = []
        self._nursery = nursery
        self._slots: list[Slot] = []

    def new(self, spec: ProcessChild, name: str = "child") -> Slot:
        context = RunnerContext(path=("test", name), publish=self.events.append, host=self.host)
        slot = Slot(ProcessRunner(spec, context), self._nursery)
        self._slots.append(slot)
        return slot

    async def aclose(self) -> None:
        for slot in self._slots:
            if slot.running:
                with contextlib.suppress(trio.TooSlowError):
                    await slot.halt()
            await slot.runner.aclose()


@contextlib.asynccontextmanager
async def _open_slots(host: ProcessHost) -> AsyncIterator[Slots]:
    async with trio.open_nursery() as nursery:
        slots = Slots(host, nursery)
        try:
            yield slots
        finally:
            with trio.CancelScope(shield=True):
                await slots.aclose()
            nursery.cancel_scope.cancel()


@pytest.fixture
async def slots() -> AsyncIterator[Slots]:
    """Slots on a host that is not a subreaper."""
    async with open_process_host() as host, _open_slots(host) as result:
        yield result


@pytest.fixture
async def reaper_slots() -> AsyncIterator[Slots]:
    """Slots on a host that is a child subreaper and reaps orphans."""
    async with open_process_host(subreaper=True) as host, _open_slots(host) as result:
        yield result


@pytest.fixture(params=[False, True], ids=["plain", "subreaper"])
async def any_slots(request: pytest.FixtureRequest) -> AsyncIterator[Slots]:
    """Slots on a plain host, then on a subreaper host."""
    async with open_process_host(subreaper=request.param) as host, _open_slots(host) as result:
        yield result


@pytest.fixture
def child() -> Callable[..., list[str]]:
    """``child("exit_with", 3)`` -> the argv of a fixture child."""
    return child_argv


@pytest.fixture
def lines() -> Callable[[], Lines]:
    """``lines()`` -> a new :class:`Lines` sink."""
    return Lines


async def until(predicate: Callable[[], bool], within: float = TIMEOUT) -> None:
    """Wait for a condition the OS gives no event for (process states)."""
    with trio.fail_after(within):
        # The OS gives no event for these states, so poll (bounded by the deadline).
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)


@pytest.fixture
def wait_until() -> Callable[..., object]:
    """``await wait_until(lambda: cond)``: poll an OS condition (bounded)."""
    return until


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (exited: reaped or a zombie)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def zombie_children() -> list[int]:
    """This process's unreaped children."""
    me = psutil.Process(os.getpid())
    result = []
    for proc in me.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() == psutil.STATUS_ZOMBIE:
                result.append(proc.pid)
    return result


@pytest.fixture
def process_state() -> object:
    """Helpers about OS processes: ``gone(pid)``, ``zombie_children()``."""

    class _State:
        gone = staticmethod(gone)
        zombie_children = staticmethod(zombie_children)

    return _State()
