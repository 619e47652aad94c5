"""A scripted fake child, so restart logic can be tested in virtual time.

:class:`FakeChild` stands where a :class:`~supervision.ProcessChild` would, but
spawns nothing: each generation follows the next step of its script (or the
commands a test sends it), in Trio's clock. Under
``trio.testing.MockClock(autojump_threshold=0)`` a test of backoff, intensity and
strategies runs in milliseconds with exact times::

    child = FakeChild(script=[Exit(1, after=0.5), Exit(1), RunForever()])
    spec = SupervisorSpec(children=[ChildSpec("a", child)])
    async with open_supervisor(spec) as sup:
        await child.wait_generation(3)
        assert child.starts == [0.0, 1.5, 3.5]

Keep real-process tests of the same behaviour next to the fake ones: the fake
proves the decisions, real processes prove the operating-system contract.
"""

from __future__ import annotations

import itertools
import signal as _signal
from collections.abc import Callable, Iterable

import attrs
import trio

from ._errors import StartFailure
from ._exit import ExitStatus
from ._runner import Runner, RunnerContext, StopReport

__all__ = ["Exit", "FailStart", "FakeChild", "Hang", "Killed", "Raise", "RunForever", "Step"]

_pids = itertools.count(1_000_000)


@attrs.frozen
class Step:
    """One generation's behaviour. Use the subclasses."""


@attrs.frozen
class Exit(Step):
    """Become ready, run ``after`` seconds, then exit with ``code``."""

    code: int = 0
    after: float = 0.0


@attrs.frozen
class Killed(Step):
    """Become ready, run ``after`` seconds, then die by ``signal``."""

    signal: int = _signal.SIGKILL
    after: float = 0.0


@attrs.frozen
class Raise(Step):
    """Become ready, run ``after`` seconds, then fail like a task raising ``exception``."""

    exception: BaseException = attrs.field(factory=lambda: RuntimeError("scripted failure"))
    after: float = 0.0


@attrs.frozen
class FailStart(Step):
    """Fail to start after ``after`` seconds, with ``reason``."""

    reason: str = "scripted start failure"
    after: float = 0.0


@attrs.frozen
class Hang(Step):
    """Never become ready; the start fails after the fake's ``startup_timeout``."""


@attrs.frozen
class RunForever(Step):
    """Become ready and run until stopped or commanded (the default)."""


class FakeChild:
    """A child that runs a script in Trio's clock instead of a process.

    Args:
        script: One :class:`Step` per generation; :class:`RunForever` once exhausted.
        ready_delay: Seconds from start to ready for every step that becomes ready.
        startup_timeout: How long a :class:`Hang` step takes to fail.
        stop_delay: Seconds it takes to exit after being asked to stop.
        ignore_stop: Ignore the stop request; it is "SIGKILLed" after ``stop_timeout``.
        stop_timeout: Seconds before the forced kill when ``ignore_stop`` is set.
        success_exit_codes: Exit codes that count as normal.
        kind: The kind reported by ``which_children`` (default ``"process"``).

    Attributes:
        starts: Trio times at which each generation started.
        ready_times: Trio times at which each generation became ready.
        stops: Trio times at which a stop was requested.
        generation: The number of generations started so far.
    """

    def __init__(
        self,
        script: Iterable[Step] = (),
        *,
        ready_delay: float = 0.0,
        startup_timeout: float = 30.0,
        stop_delay: float = 0.0,
        ignore_stop: bool = False,
        stop_timeout: float = 10.0,
        success_exit_codes: Iterable[int] = (0,),
        kind: str = "process",
    ) -> None:
        self._script = list(script)
        self.ready_delay = ready_delay
        self.startup_timeout = startup_timeout
        self.stop_delay = stop_delay
        self.ignore_stop = ignore_stop
        self.stop_timeout = stop_timeout
        self.success_exit_codes = frozenset(success_exit_codes)
        self.kind = kind
        self.starts: list[float] = []
        self.ready_times: list[float] = []
        self.stops: list[float] = []
        self.pids: list[int] = []
        self.generation = 0
        self._pending: ExitStatus | None = None
        self._wakeup = trio.Event()
        self._changed = trio.Event()
        self._running = False

    # ------------------------------------------------------------------ control

    @property
    def running(self) -> bool:
        """Whether the current generation is ready and running."""
        return self._running

    @property
    def pid(self) -> int | None:
        """The fake pid of the running generation."""
        return self.pids[-1] if self._running else None

    def exit(self, code: int = 0) -> None:
        """Make the running generation exit with ``code``."""
        self._command(ExitStatus.exited(code, normal=code in self.success_exit_codes))

    def crash(self, code: int = 1) -> None:
        """Make the running generation exit abnormally with ``code``."""
        self.exit(code)

    def kill(self, signum: int = _signal.SIGKILL) -> None:
        """Make the running generation die by ``signum``."""
        self._command(ExitStatus.killed(signum))

    def _command(self, status: ExitStatus) -> None:
        if not self._running:
            raise RuntimeError("the fake child is not running")
        self._pending = status
        self._wakeup.set()

    async def wait_generation(self, generation: int) -> None:
        """Wait until generation ``generation`` is ready and running."""
        while not (self.generation >= generation and self._running):
            await self._changed.wait()

    async def wait_stopped(self) -> None:
        """Wait until no generation is running."""
        while self._running:
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _next_step(self) -> Step:
        return self._script.pop(0) if self._script else RunForever()

    def _make_runner(self, context: RunnerContext) -> Runner:
        return _FakeRunner(self, context)


class _FakeRunner:
    def __init__(self, fake: FakeChild, context: RunnerContext) -> None:
        self._fake = fake
        self._context = context
        self._stop_report: StopReport | None = None
        self._pid: int | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def stop_report(self) -> StopReport | None:
        return self._stop_report

    async def run(
        self,
        spawned: Callable[[int | None], None],
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> ExitStatus:
        fake = self._fake
        self._stop_report = None
        fake.generation += 1
        fake.starts.append(trio.current_time())
        self._pid = next(_pids)
        fake.pids.append(self._pid)
        spawned(self._pid)
        step = fake._next_step()
        path = self._context.path
        try:
            if isinstance(step, FailStart):
                await trio.sleep(step.after)
                raise StartFailure(path, step.reason)
            if isinstance(step, Hang):
                await trio.sleep(fake.startup_timeout)
                raise StartFailure(path, f"readiness timeout after {fake.startup_timeout:g}s")
            await trio.sleep(fake.ready_delay)
            fake._pending = None
            fake._wakeup = trio.Event()
            fake._running = True
            fake.ready_times.append(trio.current_time())
            fake._notify()
            task_status.started(self._pid)
            scripted: ExitStatus | None = None
            after = float("inf")
            if isinstance(step, Exit):
                scripted = ExitStatus.exited(step.code, normal=step.code in fake.success_exit_codes)
                after = step.after
            elif isinstance(step, Killed):
                # The fake's stop signal is SIGTERM: dying by it is a normal exit.
                scripted = ExitStatus.killed(step.signal, normal=step.signal == _signal.SIGTERM)
                after = step.after
            elif isinstance(step, Raise):
                scripted = ExitStatus.raised(step.exception)
                after = step.after
            with trio.move_on_after(after):
                await fake._wakeup.wait()
            status = fake._pending or scripted
            assert status is not None
            self._finish()
            return status
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await self._stop()
            raise

    async def _stop(self) -> None:
        fake = self._fake
        fake.stops.append(trio.current_time())
        if not fake._running:
            self._stop_report = StopReport()
            return
        if fake.ignore_stop:
            await trio.sleep(fake.stop_timeout)
            status = ExitStatus.killed(_signal.SIGKILL)
            self._stop_report = StopReport(exit=status, killed=True)
        else:
            await trio.sleep(fake.stop_delay)
            status = ExitStatus.killed(_signal.SIGTERM, normal=True)
            self._stop_report = StopReport(exit=status)
        self._finish()

    def _finish(self) -> None:
        self._fake._running = False
        self._pid = None
        self._fake._notify()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
