"""The supervisor engine: one Trio task per child, one loop that decides.

Every decision (start, stop, restart, give up) is taken by a single loop task per
supervisor, fed by a channel: child exits and API commands arrive there and are
handled one at a time, so no two decisions race. Children run as tasks of the
supervisor's nursery; stopping one means cancelling its task, whose runner then
stops the child (shielded) before the task ends. Restart delays are deadlines the
loop waits on with ``trio.move_on_at``: there is no polling and no timer thread,
and under ``trio.testing.MockClock`` every delay is exact.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

import attrs
import outcome
import trio

from . import _events as ev
from ._errors import (
    ChildAlreadyExists,
    ChildNotFound,
    ChildRunning,
    InvalidSpecType,
    StartFailure,
    SupervisorGaveUp,
    SupervisorNotRunning,
)
from ._exit import ExitStatus
from ._flag import Flag
from ._groups import raise_collapsed
from ._pubsub import DEFAULT_BUFFER, Broadcaster, Subscription
from ._runner import Runner, RunnerContext, StopReport
from ._spec import AutoShutdown, ChildSpec, Restart, Strategy, SupervisorSpec

__all__ = [
    "ChildCounts",
    "ChildInfo",
    "ChildState",
    "Supervisor",
    "SubtreeRunner",
    "open_supervisor",
    "run_supervisor",
]

if TYPE_CHECKING:
    from ._host import ProcessHost

T = TypeVar("T")


_CHILD_TASK: Final = f"{__name__}.Supervisor._child_task"
"""The name of every child's task."""


class ChildState(enum.Enum):
    """Where a child is in its life."""

    STARTING = "starting"
    """Spawned or scheduled, not ready yet."""
    RUNNING = "running"
    """Ready and running."""
    RESTARTING = "restarting"
    """Waiting for its restart delay (or for its turn in a group restart)."""
    STOPPING = "stopping"
    """Being stopped by its supervisor."""
    STOPPED = "stopped"
    """Stopped with ``terminate_child``; kept until restarted or deleted."""
    EXITED = "exited"
    """Exited normally and is not restarted (a transient child's normal exit)."""


_ACTIVE = frozenset({ChildState.STARTING, ChildState.RUNNING, ChildState.RESTARTING})
_DONE = frozenset({ChildState.STOPPED, ChildState.EXITED})


@attrs.frozen
class ChildInfo:
    """One row of :meth:`Supervisor.which_children`.

    Attributes:
        name: The child's name.
        kind: ``"process"``, ``"task"`` or ``"supervisor"``.
        pid: The current process id, ``None`` where there is no process.
        state: See :class:`ChildState`.
        restarts: How many times the supervisor restarted it.
    """

    name: str
    kind: str
    pid: int | None
    state: ChildState
    restarts: int


@attrs.frozen
class ChildCounts:
    """What :meth:`Supervisor.count_children` returns (OTP's ``count_children``).

    Attributes:
        specs: Children known to the supervisor, running or not.
        active: Children that are starting, running, or about to restart.
        supervisors: Children that are subtrees.
        workers: Children that are processes or tasks.
    """

    specs: int
    active: int
    supervisors: int
    workers: int


class _Slot:
    """The supervisor's record of one child, kept across its generations."""

    def __init__(self, spec: ChildSpec, runner: Runner) -> None:
        self.spec = spec
        self.runner = runner
        self.state = ChildState.RESTARTING
        self.generation = 0
        self.pid: int | None = None
        self.restarts = 0
        self.attempt = 0
        self.ready_at: float | None = None
        self.restart_at: float | None = None
        self.counts_as_restart = False
        # The slot whose exit scheduled this one's pending restart (group restarts).
        self.restart_group: _Slot | None = None
        self.scope: trio.CancelScope | None = None
        self.finished: Flag | None = None
        self.last_exit: ExitStatus | None = None
        # Callers waiting for the outcome of the generation being started.
        self.waiters: list[_Pending] = []
        # The generation being started was added by start_child: a failure removes it.
        self.dynamic = False
        # It has been ready at least once: the tree's first start is done with it.
        self.started = False

    def info(self) -> ChildInfo:
        return ChildInfo(
            name=self.spec.name,
            kind=self.spec.kind,
            pid=self.pid,
            state=self.state,
            restarts=self.restarts,
        )

    def resolve(self, error: BaseException | None = None) -> None:
        """Tell every waiter how the start ended (``error`` is None if it is ready)."""
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.settle(self.info() if error is None else None, error)


@attrs.frozen
class _Ready:
    slot: _Slot
    generation: int
    pid: int | None


@attrs.frozen
class _StartFailed:
    slot: _Slot
    generation: int
    error: StartFailure


@attrs.frozen
class _Exited:
    slot: _Slot
    generation: int
    exit: ExitStatus


class _Pending:
    """The outcome of a start the loop began for a caller, who waits for it outside."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: ChildInfo | None = None
        self.error: BaseException | None = None

    def settle(self, value: ChildInfo | None, error: BaseException | None) -> None:
        if not self.done.is_set():
            self.value, self.error = value, error
            self.done.set()


class _Command(Generic[T]):
    """An API call executed by the supervisor loop on behalf of a caller.

    ``fn`` must not wait for a child to become ready: a command that starts a
    child returns a :class:`_Pending`, which the caller waits on outside the loop.
    """

    def __init__(self, fn: Callable[[], Awaitable[T | _Pending]]) -> None:
        self.fn = fn
        self.done = trio.Event()
        self.result: T | _Pending | None = None
        self.error: BaseException | None = None

    async def execute(self) -> None:
        try:
            self.result = await self.fn()
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()

    def abandon(self) -> None:
        if not self.done.is_set():
            self.error = SupervisorNotRunning("the supervisor has stopped")
            self.done.set()


_Message = _Command[Any] | _Ready | _StartFailed | _Exited


class _Inbox:
    """The loop's queue of messages: unbounded, one receiver (the loop task).

    A plain list and the parked loop task, instead of a memory channel (two
    ordered dicts, a deque and two channel objects per supervisor). Messages
    are received in the order they were sent.
    """

    __slots__ = ("_items", "_receiver")

    def __init__(self) -> None:
        self._items: list[_Message] = []
        self._receiver: trio.lowlevel.Task | None = None

    def send_nowait(self, message: _Message) -> None:
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            trio.lowlevel.reschedule(receiver, outcome.Value(message))
        else:
            self._items.append(message)

    def receive_nowait(self) -> _Message:
        """The oldest message.

        Raises:
            trio.WouldBlock: There is none.
        """
        if not self._items:
            raise trio.WouldBlock
        return self._items.pop(0)

    async def receive(self) -> _Message:
        """The oldest message, waiting for one if there is none.

        Cancellation: a checkpoint; a cancelled wait takes no message.
        """
        if self._items:
            await trio.lowlevel.checkpoint()
            return self._items.pop(0)
        assert self._receiver is None, "the inbox has one receiver"
        self._receiver = trio.lowlevel.current_task()
        message: _Message = await trio.lowlevel.wait_task_rescheduled(self._abort)
        return message

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._receiver = None
        return trio.lowlevel.Abort.SUCCEEDED


class Supervisor:
    """A handle on a running supervisor.

    Methods that change the tree are executed by the supervisor's own loop, one at a
    time, in the order they were called; if the caller is cancelled while waiting,
    the operation still completes. The loop never waits for a child to become
    ready: a call that starts a child returns once it is ready, while the loop goes
    on serving other calls, exits and restarts.
    """

    def __init__(self, engine: _Engine) -> None:
        self._engine = engine

    @property
    def name(self) -> str:
        """The supervisor's name."""
        return self._engine.path[-1]

    @property
    def path(self) -> tuple[str, ...]:
        """The supervisor's path in the tree."""
        return self._engine.path

    @property
    def running(self) -> bool:
        """``False`` once the supervisor has stopped."""
        return not self._engine.closed

    def which_children(self) -> list[ChildInfo]:
        """Every child, in start order."""
        return [slot.info() for slot in self._engine.slots]

    def count_children(self) -> ChildCounts:
        """Counts of children by kind and activity."""
        slots = self._engine.slots
        supervisors = sum(1 for s in slots if s.spec.kind == "supervisor")
        return ChildCounts(
            specs=len(slots),
            active=sum(1 for s in slots if s.state in _ACTIVE),
            supervisors=supervisors,
            workers=len(slots) - supervisors,
        )

    def child_spec(self, name: str) -> ChildSpec:
        """The spec of child ``name``.

        Raises:
            ChildNotFound: No such child.
        """
        return self._engine.find(name).spec

    def child_supervisor(self, name: str) -> Supervisor:
        """The handle of subtree child ``name`` while it runs.

        Raises:
            ChildNotFound: No such child, or it is not a running subtree.
        """
        slot = self._engine.find(name)
        runner = slot.runner
        if not isinstance(runner, SubtreeRunner) or runner.handle is None:
            raise ChildNotFound(f"{name!r} is not a running subtree of {self.name!r}")
        return runner.handle

    def status_text(self, name: str) -> str | None:
        """The last ``STATUS=`` text child ``name`` sent over sd_notify, if any."""
        runner = self._engine.find(name).runner
        text = getattr(runner, "status_text", None)
        return text if isinstance(text, str) else None

    def subscribe(self, *, buffer: int = DEFAULT_BUFFER) -> Subscription:
        """Subscribe to lifecycle events of this supervisor and everything below it.

        Args:
            buffer: Events kept for a slow reader; older ones are dropped and
                reported with an :class:`~supervision.events.EventsDropped` marker.

        Returns:
            An async iterator (and context manager) that ends when the tree stops.
        """
        return self._engine.broadcaster.subscribe(buffer=buffer)

    async def start_child(self, spec: ChildSpec) -> ChildInfo:
        """Add a child at the end and start it; returns once it is ready.

        Raises:
            ChildAlreadyExists: A child with that name exists.
            StartFailure: It could not start (or was terminated before it was
                ready); it is not added.
        """
        if not isinstance(spec, ChildSpec):
            raise InvalidSpecType(f"start_child: expected a ChildSpec, got {type(spec).__name__}")
        return await self._engine.call_until_ready(partial(self._engine.do_start_child, spec))

    async def terminate_child(self, name: str) -> None:
        """Stop a child and keep its spec (a temporary child is removed).

        A child that is still starting is stopped at once (its start is cancelled);
        a pending restart of the child is cancelled. Under ``rest_for_one``, the
        children after it whose restart was scheduled together with its own stay
        stopped too, as in OTP. Stopping a stopped child is a no-op.
        """
        await self._engine.call(partial(self._engine.do_terminate_child, name))

    async def restart_child(self, name: str) -> ChildInfo:
        """Stop the child if it runs, then start it again; returns once it is ready.

        This restarts only that child (the strategy is not applied) and does not count
        toward the restart intensity. Its backoff is reset.

        Raises:
            ChildNotFound: No such child.
            StartFailure: It could not start again (or was terminated before it
                was ready); a failure to start is then handled like a crash
                (restart policy and intensity apply).
        """
        return await self._engine.call_until_ready(partial(self._engine.do_restart_child, name))

    async def delete_child(self, name: str) -> None:
        """Forget a stopped child.

        Raises:
            ChildNotFound: No such child.
            ChildRunning: It is running or about to restart; terminate it first.
        """
        await self._engine.call(partial(self._engine.do_delete_child, name))

    async def stop(self) -> None:
        """Stop every child in reverse start order, then the supervisor itself.

        Returns once everything has stopped. Calling it again is harmless.
        """
        engine = self._engine
        if not engine.closed:
            engine.request_shutdown()
        await engine.finished.wait()


class _Engine:
    def __init__(
        self,
        spec: SupervisorSpec,
        *,
        path: tuple[str, ...],
        host: ProcessHost,
        broadcaster: Broadcaster,
    ) -> None:
        self.spec = spec
        self.path = path
        self.host = host
        self.broadcaster = broadcaster
        self.handle = Supervisor(self)
        self.slots: list[_Slot] = []
        self.closed = False
        self.finished = Flag()
        # Restart times within the intensity window, oldest first; trimmed in place.
        self._restart_log: list[float] = []
        self._inbox = _Inbox()
        self._nursery: trio.Nursery | None = None
        self._shutdown = False
        self._gave_up: SupervisorGaveUp | None = None
        self._started = False
        for child in spec.children:
            self.slots.append(self._new_slot(child))

    # ------------------------------------------------------------------ plumbing

    def _new_slot(self, spec: ChildSpec) -> _Slot:
        context = RunnerContext(
            path=(*self.path, spec.name), publish=self.broadcaster.publish, host=self.host
        )
        runner: Runner = spec.child._make_runner(context)
        return _Slot(spec, runner)

    def _publish(self, event: ev.Event) -> None:
        self.broadcaster.publish(event)

    def _path(self, slot: _Slot) -> tuple[str, ...]:
        return (*self.path, slot.spec.name)

    def find(self, name: str) -> _Slot:
        for slot in self.slots:
            if slot.spec.name == name:
                return slot
        raise ChildNotFound(f"supervisor {'/'.join(self.path)} has no child {name!r}")

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self.closed:
            raise SupervisorNotRunning(f"supervisor {'/'.join(self.path)} has stopped")
        command: _Command[T] = _Command(fn)
        self._inbox.send_nowait(command)
        await command.done.wait()
        if command.error is not None:
            raise command.error
        return command.result  # type: ignore[return-value]

    async def call_until_ready(self, fn: Callable[[], Awaitable[_Pending]]) -> ChildInfo:
        """Run a command that begins a start, then wait (outside the loop) for its end."""
        pending = await self.call(fn)
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.value is not None
        return pending.value

    def request_shutdown(self) -> None:
        async def shutdown() -> None:
            self._shutdown = True

        if not self.closed:
            self._inbox.send_nowait(_Command(shutdown))

    # ------------------------------------------------------------------ main

    async def run(self, task_status: trio.TaskStatus[Supervisor]) -> None:
        """Run until stopped; raises SupervisorGaveUp (never inside a group)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    await self._loop(task_status)
                    if not self._started and self._gave_up is None:
                        # Shut down (auto_shutdown) before everything was ready: the
                        # caller still gets the handle, of a tree that has finished.
                        self._started = True
                        task_status.started(self.handle)
                finally:
                    with trio.CancelScope(shield=True):
                        await self._stop_all()
                        for slot in self.slots:
                            await slot.runner.aclose()
                    self._close_inbox()
                nursery.cancel_scope.cancel()
        finally:
            self.closed = True
            self.finished.set()
        if self._gave_up is not None:
            raise self._gave_up

    def _close_inbox(self) -> None:
        self.closed = True
        stopped = SupervisorNotRunning(f"supervisor {'/'.join(self.path)} has stopped")
        for slot in self.slots:
            slot.resolve(stopped)
        while True:
            try:
                message = self._inbox.receive_nowait()
            except trio.WouldBlock:
                break
            if isinstance(message, _Command):
                message.abandon()

    async def _loop(self, task_status: trio.TaskStatus[Supervisor]) -> None:
        for slot in self.slots:
            slot.restart_at = -math.inf
        while not self._shutdown and self._gave_up is None:
            # Checked after every message: a tree whose children are all ready is
            # handed out at once, even if an exit is already waiting behind the
            # last "ready".
            if not self._started and self._settled():
                self._started = True
                task_status.started(self.handle)
            # Whatever has arrived is served before the next start: a call is never
            # starved by a child that keeps failing to start (OTP-9549).
            try:
                message: _Message | None = self._inbox.receive_nowait()
            except trio.WouldBlock:
                message = None
            if message is None:
                due = self._next_due()
                if due is not None:
                    self._begin_start(due)
                    continue
                # Only the wait is bounded by the next restart's deadline: handling a
                # message is never cut short by another child's timer. Without a
                # restart pending (a storm's immediate restarts), no scope is set up.
                deadline = self._next_deadline()
                if deadline == math.inf:
                    message = await self._inbox.receive()
                else:
                    with trio.move_on_at(deadline):
                        message = await self._inbox.receive()
                if message is None:
                    continue
            await self._handle(message)

    async def _handle(self, message: _Message) -> None:
        if isinstance(message, _Command):
            await message.execute()
        elif isinstance(message, _Ready):
            self._on_ready(message)
        elif isinstance(message, _StartFailed):
            await self._on_start_failed(message)
        else:
            await self._on_exited(message)

    def _settled(self) -> bool:
        """The first start is done: every child has been ready once (as in OTP, a
        child that crashed since is being restarted as usual and holds nobody up;
        one that never became ready is retried until it does)."""
        return all(s.started or s.state in _DONE for s in self.slots)

    def _startable(self) -> list[_Slot]:
        """Slots whose scheduled start may begin now.

        Children start in order, each ready before the next begins: at the first
        start of the tree, and always under ``one_for_all``/``rest_for_one``, where a
        group restarts in order. Under ``one_for_one`` a running tree restarts each
        child on its own.
        """
        if self._started and self.spec.strategy is Strategy.ONE_FOR_ONE:
            return self.slots
        for index, slot in enumerate(self.slots):
            # During the first start only a child's first start holds up the ones
            # after it: one that was ready and crashed restarts beside them.
            if slot.state is ChildState.STARTING and (self._started or not slot.started):
                return self.slots[:index]
        return self.slots

    def _next_due(self) -> _Slot | None:
        now = trio.current_time()
        for slot in self._startable():
            if slot.restart_at is not None and slot.restart_at <= now:
                return slot
        return None

    def _next_deadline(self) -> float:
        deadlines = [s.restart_at for s in self._startable() if s.restart_at is not None]
        return min(deadlines, default=math.inf)

    # ------------------------------------------------------------------ children

    async def _child_task(
        self, slot: _Slot, generation: int, scope: trio.CancelScope, finished: Flag
    ) -> None:
        """Run one generation; report ready, start failure and exit to the loop."""
        exit_status: ExitStatus | None = None
        failure: StartFailure | None = None
        report = _GenerationReport(self, slot, generation, scope)
        try:
            with scope:
                try:
                    exit_status = await slot.runner.run(
                        report.spawned,
                        task_status=cast("trio.TaskStatus[int | None]", report),
                    )
                except Exception as exc:
                    # A runner that breaks is a crash of that child, never of the tree.
                    if report.ready:
                        exit_status = ExitStatus.raised(exc)
                    elif isinstance(exc, StartFailure):
                        failure = exc
                    else:
                        failure = StartFailure(self._path(slot), f"raised {exc!r}")
                        failure.__cause__ = exc
                if exit_status is not None and not report.ready:
                    failure = StartFailure(
                        self._path(slot), f"ended before it was ready: {exit_status.reason}"
                    )
        finally:
            if exit_status is not None:
                slot.last_exit = exit_status
            finished.set()
        if scope.cancel_called:
            return  # stopped on purpose: the stopper reports it
        if failure is not None:
            self._inbox.send_nowait(_StartFailed(slot, generation, failure))
        elif exit_status is not None:
            self._inbox.send_nowait(_Exited(slot, generation, exit_status))

    def _report_ready(self, slot: _Slot, generation: int, pid: int | None) -> None:
        self._inbox.send_nowait(_Ready(slot, generation, pid))

    def _spawned(self, slot: _Slot, generation: int, pid: int | None) -> None:
        if slot.generation != generation:
            return
        slot.pid = pid
        self._publish(ev.ChildStarted(path=self._path(slot), pid=pid, generation=generation))

    def _begin_start(self, slot: _Slot, waiter: _Pending | None = None) -> None:
        """Start a new generation in its own task; the loop learns how it went."""
        assert self._nursery is not None
        if slot.restart_at is not None and slot.counts_as_restart:
            slot.restarts += 1
        slot.restart_at = None
        slot.restart_group = None
        slot.counts_as_restart = False
        slot.generation += 1
        slot.state = ChildState.STARTING
        slot.pid = None
        slot.last_exit = None
        slot.scope = trio.CancelScope()
        slot.finished = Flag()
        if waiter is not None:
            slot.waiters.append(waiter)
        self._nursery.start_soon(
            self._child_task,
            slot,
            slot.generation,
            slot.scope,
            slot.finished,
            name=_CHILD_TASK,  # the name Trio would make, one string for every child
        )

    def _current(self, slot: _Slot, generation: int) -> bool:
        return slot in self.slots and slot.generation == generation

    def _on_ready(self, message: _Ready) -> None:
        slot = message.slot
        if not self._current(slot, message.generation) or slot.state is not ChildState.STARTING:
            return
        slot.pid = message.pid if message.pid is not None else slot.pid
        slot.state = ChildState.RUNNING
        slot.dynamic = False
        slot.started = True
        slot.ready_at = trio.current_time()
        self._publish(
            ev.ChildReady(path=self._path(slot), pid=slot.pid, generation=slot.generation)
        )
        slot.resolve()

    async def _on_start_failed(self, message: _StartFailed) -> None:
        slot, error = message.slot, message.error
        if not self._current(slot, message.generation) or slot.state is not ChildState.STARTING:
            return
        slot.scope = None
        failed = ExitStatus.start_failed(error, error.reason)
        slot.last_exit = failed
        if slot.dynamic:
            # start_child: the child is not added; the caller gets the failure.
            self._publish(
                ev.ChildExited(path=self._path(slot), pid=slot.pid, exit=failed, start_failure=True)
            )
            slot.pid = None
            slot.state = ChildState.STOPPED
            slot.resolve(error)
            await self._remove(slot)
            return
        waiting = bool(slot.waiters)
        slot.waiters, waiters = [], slot.waiters
        await self._handle_exit(slot, failed, start_failure=True)
        if waiting:
            # The caller learns that its (re)start did not come up; the failure is
            # handled like a crash all the same (restart policy, intensity).
            for waiter in waiters:
                waiter.settle(None, StartFailure(self._path(slot), error.reason))

    async def _stop_slot(self, slot: _Slot) -> None:
        """Stop a generation, starting or running (shielded by the caller at shutdown)."""
        slot.restart_at = None
        slot.restart_group = None
        if slot.scope is None or slot.finished is None:
            return
        was_starting = slot.state is ChildState.STARTING
        if slot.finished.is_set():
            exit_status, report = slot.last_exit, StopReport(exit=slot.last_exit)
        else:
            slot.state = ChildState.STOPPING
            slot.scope.cancel()
            await slot.finished.wait()
            report = slot.runner.stop_report or StopReport(exit=slot.last_exit)
            exit_status = report.exit
        self._publish(
            ev.ChildStopped(
                path=self._path(slot),
                pid=slot.pid,
                exit=exit_status,
                killed=report.killed,
                escaped=report.escaped,
            )
        )
        slot.scope = None
        slot.pid = None
        self._note_uptime(slot, trio.current_time())
        if was_starting:
            slot.resolve(StartFailure(self._path(slot), "stopped before it was ready"))

    async def _stop_all(self) -> None:
        for slot in reversed(self.slots):
            await self._stop_slot(slot)
            if slot.state is not ChildState.EXITED:
                slot.state = ChildState.STOPPED

    # ------------------------------------------------------------------ exits

    async def _on_exited(self, message: _Exited) -> None:
        slot = message.slot
        if not self._current(slot, message.generation) or slot.state is not ChildState.RUNNING:
            return  # a late exit of a generation already stopped or replaced
        await self._handle_exit(slot, message.exit)

    async def _handle_exit(
        self, slot: _Slot, exit_status: ExitStatus, *, start_failure: bool = False
    ) -> None:
        now = trio.current_time()
        self._publish(
            ev.ChildExited(
                path=self._path(slot), pid=slot.pid, exit=exit_status, start_failure=start_failure
            )
        )
        slot.scope = None
        slot.pid = None
        self._note_uptime(slot, now)

        restart = slot.spec.restart
        if restart is Restart.TEMPORARY or (restart is Restart.TRANSIENT and exit_status.normal):
            if restart is Restart.TEMPORARY:
                await self._remove(slot)
            else:
                slot.state = ChildState.EXITED
            self._check_auto_shutdown(slot)
            return

        # A restart is due: count it against the intensity first.
        window = self.spec.intensity.window
        log = self._restart_log
        log.append(now)
        expired = 0
        while now - log[expired] > window:
            expired += 1
        if expired:
            del log[:expired]
        if len(log) > self.spec.intensity.max_restarts:
            self._give_up(slot, exit_status)
            return

        affected = self._affected(slot)
        for other in reversed(affected):
            if other is not slot:
                await self._stop_slot(other)
        for other in affected:
            if other is not slot and other.spec.restart is Restart.TEMPORARY:
                await self._remove(other)
        affected = [s for s in affected if s in self.slots]

        slot.attempt += 1
        backoff = self._backoff(slot)
        spread = 0.0
        if backoff.jitter:
            # The random module's shared generator: no 5 KB of state per
            # supervisor, and ``random.seed()`` makes the spread reproducible.
            spread = random.uniform(-1.0, 1.0)
        delay = backoff.delay(slot.attempt, spread=spread)
        due = now + delay
        for other in affected:
            other.state = ChildState.RESTARTING
            other.restart_at = due
            other.restart_group = slot
            other.counts_as_restart = True
            self._publish(
                ev.ChildRestarting(path=self._path(other), attempt=slot.attempt, delay=delay)
            )

    def _note_uptime(self, slot: _Slot, now: float) -> None:
        """End a run: a run longer than ``reset_after`` resets the backoff count."""
        reset_after = self._backoff(slot).reset_after or self.spec.intensity.window
        if slot.ready_at is not None and now - slot.ready_at >= reset_after:
            slot.attempt = 0
        slot.ready_at = None

    def _affected(self, slot: _Slot) -> list[_Slot]:
        strategy = self.spec.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            return [slot]
        index = self.slots.index(slot)
        candidates = self.slots if strategy is Strategy.ONE_FOR_ALL else self.slots[index:]
        # As in OTP, a group restart includes children that exited normally; only
        # children stopped on purpose (terminate_child) stay stopped.
        return [
            s for s in candidates if s is slot or s.state in _ACTIVE or s.state is ChildState.EXITED
        ]

    def _backoff(self, slot: _Slot) -> Any:
        return slot.spec.backoff or self.spec.backoff

    async def _remove(self, slot: _Slot) -> None:
        self.slots.remove(slot)
        await slot.runner.aclose()

    def _check_auto_shutdown(self, slot: _Slot) -> None:
        mode = self.spec.auto_shutdown
        if not slot.spec.significant or mode is AutoShutdown.NEVER:
            return
        if mode is AutoShutdown.ANY_SIGNIFICANT:
            self._shutdown = True
            return
        if not any(s.spec.significant and s.state in _ACTIVE for s in self.slots):
            self._shutdown = True

    def _give_up(self, slot: _Slot, last: ExitStatus) -> None:
        restarts = len(self._restart_log)
        window = self.spec.intensity.window
        reason = _describe_exit(slot.spec.name, last)
        self._publish(
            ev.SupervisorGaveUp(
                path=self.path,
                restarts=restarts,
                window=window,
                child=slot.spec.name,
                last=reason,
            )
        )
        slot.state = ChildState.STOPPED
        gave_up = SupervisorGaveUp(
            self.path, restarts=restarts, window=window, child=slot.spec.name, last=reason
        )
        gave_up.__cause__ = last.exception
        self._gave_up = gave_up

    # ------------------------------------------------------------------ commands

    async def do_start_child(self, spec: ChildSpec) -> _Pending:
        if any(s.spec.name == spec.name for s in self.slots):
            raise ChildAlreadyExists(
                f"supervisor {'/'.join(self.path)} already has a child {spec.name!r}"
            )
        self.spec.check_child(spec)
        slot = self._new_slot(spec)
        self.slots.append(slot)
        slot.dynamic = True
        pending = _Pending()
        self._begin_start(slot, pending)
        return pending

    async def do_terminate_child(self, name: str) -> None:
        slot = self.find(name)
        group = slot.restart_group if slot.restart_at is not None else None
        was = slot.state
        await self._stop_slot(slot)
        if slot.dynamic:
            # Terminated before its first start finished: start_child never added it.
            await self._remove(slot)
            return
        if slot.spec.restart is Restart.TEMPORARY:
            await self._remove(slot)
        elif slot.state is not ChildState.EXITED:
            slot.state = ChildState.STOPPED
            if was is ChildState.RESTARTING:
                self._publish(ev.ChildStopped(path=self._path(slot)))
        if group is not None and self.spec.strategy is Strategy.REST_FOR_ONE:
            # As in OTP, the children after it that were to restart with it stay down.
            index = self.slots.index(slot) if slot in self.slots else len(self.slots)
            for other in self.slots[index + 1 :]:
                if other.restart_at is not None and other.restart_group is group:
                    other.restart_at = None
                    other.restart_group = None
                    other.state = ChildState.STOPPED
                    self._publish(ev.ChildStopped(path=self._path(other)))

    async def do_restart_child(self, name: str) -> _Pending:
        slot = self.find(name)
        await self._stop_slot(slot)
        slot.attempt = 0
        pending = _Pending()
        self._begin_start(slot, pending)
        return pending

    async def do_delete_child(self, name: str) -> None:
        slot = self.find(name)
        if slot.state in _ACTIVE or slot.state is ChildState.STOPPING:
            raise ChildRunning(
                f"child {name!r} is {slot.state.value}; terminate it before deleting it"
            )
        await self._remove(slot)


class _GenerationReport:
    """What the runner of one generation calls: ``spawned(pid)``, and ``started(pid)``
    as its ``task_status`` (one small object instead of closures and partials)."""

    __slots__ = ("engine", "generation", "ready", "scope", "slot")

    def __init__(
        self, engine: _Engine, slot: _Slot, generation: int, scope: trio.CancelScope
    ) -> None:
        self.engine = engine
        self.slot = slot
        self.generation = generation
        self.scope = scope
        self.ready = False

    def spawned(self, pid: int | None) -> None:
        self.engine._spawned(self.slot, self.generation, pid)

    def started(self, pid: int | None = None) -> None:
        self.ready = True
        # From now on only the supervisor stops this child (by cancelling
        # `scope`), one child at a time in reverse order: a cancellation of the
        # whole tree must not reach every child at once.
        self.scope.shield = True
        self.engine._report_ready(self.slot, self.generation, pid)


def _describe_exit(name: str, exit_status: ExitStatus) -> str:
    """``child 'cache' failed to start: executable not found: redis-server``."""
    reason = exit_status.reason
    if reason.startswith("start failed: "):
        return f"child {name!r} failed to start: {reason.removeprefix('start failed: ')}"
    return f"child {name!r} {reason}"


# ---------------------------------------------------------------------- subtrees


class SubtreeRunner:
    """Runs a nested :class:`SupervisorSpec` as a child of another supervisor."""

    def __init__(self, spec: SupervisorSpec, context: RunnerContext) -> None:
        self._spec = spec
        self._context = context
        self._stop_report: StopReport | None = None
        self.handle: Supervisor | None = None

    @property
    def pid(self) -> int | None:
        return None

    @property
    def stop_report(self) -> StopReport | None:
        return self._stop_report

    async def run(
        self,
        spawned: Callable[[int | None], None],
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> ExitStatus:
        self._stop_report = None
        spawned(None)
        broadcaster = _SubtreeBroadcaster(self._context)
        engine = _Engine(
            self._spec, path=self._context.path, host=self._context.host, broadcaster=broadcaster
        )
        self.handle = engine.handle
        started = _SubtreeStarted(task_status)
        status = cast("trio.TaskStatus[Supervisor]", started)
        try:
            await engine.run(status)
        except SupervisorGaveUp as exc:
            if not started.ready:
                raise StartFailure(self._context.path, str(exc)) from exc
            return ExitStatus.raised(exc)
        except trio.Cancelled:
            self._stop_report = StopReport()
            raise
        finally:
            self.handle = None
            broadcaster.close()
        if not started.ready:
            raise StartFailure(self._context.path, "shut down before all its children were ready")
        return ExitStatus.returned()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _SubtreeStarted:
    """The ``task_status`` a subtree's engine reports its start to: the parent's
    generation is ready once the subtree is."""

    __slots__ = ("_task_status", "ready")

    def __init__(self, task_status: trio.TaskStatus[int | None]) -> None:
        self._task_status = task_status
        self.ready = False

    def started(self, handle: Supervisor) -> None:
        self.ready = True
        self._task_status.started(None)


class _SubtreeBroadcaster(Broadcaster):
    """A subtree publishes into its root's broadcaster; subscribing to it filters by path."""

    def __init__(self, context: RunnerContext) -> None:
        super().__init__(context.path)
        self._root_publish = context.publish

    def publish(self, event: ev.Event) -> None:
        super().publish(event)
        self._root_publish(event)


# ---------------------------------------------------------------------- entry points


async def run_supervisor(
    spec: SupervisorSpec,
    *,
    subreaper: bool = False,
    observer: Callable[[ev.Event], None] | None = None,
    token: str | None = None,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a supervision tree as a task of your own nursery.

    Use it with ``sup = await nursery.start(run_supervisor, spec)``: ``start`` returns
    the :class:`Supervisor` handle once every child is ready.

    Args:
        spec: The tree.
        subreaper: On Linux, make this process a child subreaper so descendants that
            escape their process group are reparented here, found and reaped.
        observer: Called synchronously with every event of the tree from the very
            first one (before the handle exists); it must not block or raise.
        token: The prefix of the ``SUPERVISION_CHILD_ID`` marker every process of
            the tree carries (1 to 64 of ``A-Za-z0-9_-``; random if ``None``).
            Pass a stable one to find the leftovers of an earlier run with
            :func:`find_marked` (``SUPERVISION_CHILD_ID`` starting with
            ``token + "."``).

    Raises:
        SupervisorGaveUp: The root exceeded its restart intensity.
        ValueError: ``token`` is malformed.

    Cancellation: stops every child in reverse start order (each with its own stop
    timeout, shielded), then re-raises.
    """
    if not isinstance(spec, SupervisorSpec):
        raise InvalidSpecType(
            f"run_supervisor: expected a SupervisorSpec, got {type(spec).__name__}"
        )
    from ._host import open_process_host

    async with open_process_host(subreaper=subreaper, token=token) as host:
        broadcaster = Broadcaster((spec.name,), observer=observer)
        engine = _Engine(spec, path=(spec.name,), host=host, broadcaster=broadcaster)
        try:
            await engine.run(task_status)
        finally:
            broadcaster.close()


@asynccontextmanager
async def open_supervisor(
    spec: SupervisorSpec,
    *,
    subreaper: bool = False,
    observer: Callable[[ev.Event], None] | None = None,
    token: str | None = None,
) -> AsyncIterator[Supervisor]:
    """Run a supervision tree for the duration of an ``async with`` block.

    Entering returns once every child is ready. Leaving stops the tree gracefully,
    children in reverse start order. If the tree gives up while the block runs, the
    block is cancelled and :class:`SupervisorGaveUp` is raised (never wrapped in an
    exception group).

    Args:
        spec: The tree.
        subreaper: See :func:`run_supervisor`.
        observer: See :func:`run_supervisor`.
        token: See :func:`run_supervisor`.
    """
    try:
        async with trio.open_nursery() as nursery:
            supervisor: Supervisor = await nursery.start(
                partial(run_supervisor, spec, subreaper=subreaper, observer=observer, token=token)
            )
            try:
                yield supervisor
            finally:
                with trio.CancelScope(shield=True):
                    await supervisor.stop()
    except BaseExceptionGroup as group:
        raise_collapsed(group)
