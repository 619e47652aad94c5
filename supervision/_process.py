"""OS process leaves: a :class:`ProcessRunner` runs the generations of one slot.

How a child is run:

* Spawned synchronously in the Trio thread in a new session (see
  :mod:`._spawn`), registered with the :class:`~._host.ProcessHost` the tree
  shares.
* The exit is observed with a pidfd (``wait_readable``) without reaping, so the
  zombie leader keeps its pid, and therefore its process group id, reserved
  while the supervisor signals the group. The leader is reaped by its own pid,
  never with ``waitpid(-1)``.
* Every child carries ``SUPERVISION_CHILD_ID`` in its environment (unique per
  slot, stable across restarts): processes that left the group (``setsid``) are
  recognised by it, never by their command name.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any, Final

import trio

from . import _procfs
from ._errors import StartFailure
from ._exit import ExitStatus
from ._groups import raise_collapsed as _raise_collapsed
from ._host import ProcessHost
from ._procfs import MARKER_ENV, _boot_ticks, _find_tree, _kill_pinned, _read_stat, _Tree
from ._pump import _LinePump
from ._ready import NotifySocket, ReadyCheck, make_ready_check
from ._runner import RunnerContext, StopReport
from ._sockets import ListenSet, open_listen_set
from ._spawn import (
    _spawn_error,
    encode_env,
    encode_env_shared,
    exec_candidates,
    spawn_child,
)
from ._spec import (
    Output,
    OutputBatches,
    OutputDiscard,
    OutputInherit,
    OutputLines,
    ProcessChild,
    ReadyNotify,
)

__all__ = ["ProcessRunner"]

_log = logging.getLogger("supervision.process")

# Variables the supervisor may itself have received from its own supervisor
# (systemd): never pass them on, they would describe the wrong process.
_PROTOCOL_ENV: Final = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)
_DRAIN_IDLE: Final = 0.5
"""After an exit, seconds without output before the runner stops waiting for its pipes'
end: a descendant may hold them open."""
_DRAIN_MAX: Final = 5.0
"""After an exit, seconds at most spent reading what is left in its pipes."""


_NO_VARIABLES: Mapping[str, str] = types.MappingProxyType({})

_INHERITED: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], dict[str, str]]] = {}


def _inherited_env() -> tuple[dict[str, str], dict[str, str]]:
    """This process's environment, and what every child gets of it (never to be changed).

    ``os.environ`` is read once a call (each of its reads encodes the name and
    decodes the value); one pair of dicts for all the slots while the
    environment stays the same (the slots without variables of their own keep
    it, not a copy each).
    """
    items = tuple(os.environ.items())
    found = _INHERITED.get(items)
    if found is None:
        base = {
            sys.intern(k): sys.intern(v)
            for k, v in items
            if k not in _PROTOCOL_ENV and k != MARKER_ENV
        }
        base.setdefault("PYTHONUNBUFFERED", "1")
        if len(_INHERITED) >= 8:
            _INHERITED.clear()
        found = _INHERITED[items] = (dict(items), base)
    return found


@functools.cache
def _normal_signals(stop_signal: int) -> frozenset[int]:
    """``{stop_signal}``, one set shared by every runner with that stop signal."""
    return frozenset({stop_signal})


def _wait_exited_nowait(pid: int) -> None:
    """Block until ``pid`` has exited, leaving it unreaped (no-pidfd fallback)."""
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


class _Child:
    """The leader process of one generation."""

    __slots__ = ("_watch_scope", "exited", "pid", "pidfd", "reaped")

    def __init__(self, pid: int, pidfd: int | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.exited = False
        self.reaped = False
        self._watch_scope: trio.CancelScope | None = None

    async def wait(self) -> None:
        """Wait until the leader has exited (it stays unreaped); mark :attr:`exited`."""
        if self.pidfd is not None:
            await trio.lowlevel.wait_readable(self.pidfd)
        else:
            await trio.to_thread.run_sync(_wait_exited_nowait, self.pid, abandon_on_cancel=True)
        self.exited = True

    async def watch(self, changed: Callable[[], None]) -> None:
        """Mark :attr:`exited` when the leader exits, then call ``changed``."""
        with trio.CancelScope(shield=True) as self._watch_scope:
            await self.wait()
            changed()

    def stop_watching(self) -> None:
        if self._watch_scope is not None:
            self._watch_scope.cancel()

    def signal_group(self, sig: int) -> None:
        # Only while the leader is unreaped: it holds the pid, so the group id
        # cannot have been recycled for a stranger's group.
        if self.reaped:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def reap(self) -> int | None:
        """Reap the (exited) leader; its raw wait status, or ``None`` if it was lost."""
        status: int | None
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = None
        self.reaped = True
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        return status


class _Generation:
    """One run of a slot: the leader, its readiness check and its output pumps.

    When the readiness check runs no task (``Ready.on_spawn``), nothing but the
    leader's exit can change what the runner waits for: the runner's own task
    then waits on the pidfd, and no watch task, scope or event is set up.
    """

    __slots__ = ("_changed", "check", "check_error", "child", "pumps", "since", "watched")

    def __init__(
        self, child: _Child, check: ReadyCheck, pumps: list[_LinePump], since: int
    ) -> None:
        self.child = child
        self.since = since  # clock ticks since boot before the spawn: <= its start time
        self.check = check
        self.pumps = pumps
        self.check_error: BaseException | None = None
        # A task of the check may change the state: the exit is watched by a task too.
        self.watched = type(check).run is not ReadyCheck.run
        self._changed: trio.Event | None = None

    def exited(self) -> bool:
        return self.child.exited

    def ended(self) -> bool:
        """The leader exited, or the check found it hung after it was ready."""
        return self.child.exited or self.check.failure is not None

    def changed(self) -> None:
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` (which holds once the leader has exited)."""
        while not predicate():
            if not self.watched:
                assert not self.child.exited
                await self.child.wait()
                # One scheduling step, as when a watch task woke this one: a stop
                # requested in the same step is a stop (the exit is its outcome).
                await trio.lowlevel.checkpoint()
                continue
            event = self._changed
            if event is None:
                event = self._changed = trio.Event()
            await event.wait()


class ProcessRunner:
    """Runs the generations of one :class:`ProcessChild` slot (the ``Runner`` protocol).

    Resources kept across generations (listening sockets, the notify socket) are
    opened by the first :meth:`run` and released by :meth:`aclose`.
    """

    def __init__(self, spec: ProcessChild, context: RunnerContext) -> None:
        self._spec = spec
        self._context = context
        self._host: ProcessHost = context.host
        self._child_id = self._host.new_child_id()
        self._base_env: dict[str, str] | None = None
        self._base_env_list: list[bytes] | None = None
        self._executables: tuple[bytes, ...] | None = None  # argv[0] on the base PATH
        self._listeners: ListenSet | None = None
        self._notify: NotifySocket | None = None
        self._generation: _Generation | None = None
        self._generations = 0
        self._stop_report: StopReport | None = None
        self._status_text: str | None = None
        self._running = False
        self._closed = False
        self._normal_signals = _normal_signals(int(spec.stop_signal))

    # -- introspection

    @property
    def pid(self) -> int | None:
        """The current generation's pid, while its process exists."""
        gen = self._generation
        return None if gen is None or gen.child.reaped else gen.child.pid

    @property
    def stop_report(self) -> StopReport | None:
        """How the last stop went: set when :meth:`run` was cancelled, or when it had
        to kill a child that did not become ready in time; ``None`` otherwise."""
        return self._stop_report

    @property
    def status_text(self) -> str | None:
        """The last ``STATUS=`` text the child sent (``Ready.notify`` only)."""
        gen = self._generation
        if gen is not None and gen.check.status_text is not None:
            return gen.check.status_text
        return self._status_text

    @property
    def child_id(self) -> str:
        """The ``SUPERVISION_CHILD_ID`` value every process of this slot carries."""
        return self._child_id

    @property
    def generations(self) -> int:
        """How many processes this slot has spawned."""
        return self._generations

    @property
    def listen_addresses(self) -> tuple[Any, ...]:
        """The bound addresses of the slot's listening sockets (after the first run)."""
        return () if self._listeners is None else self._listeners.addresses

    @property
    def notify_socket(self) -> str | None:
        """The path of the slot's ``$NOTIFY_SOCKET`` (after the first run)."""
        return None if self._notify is None else self._notify.path

    # -- Runner protocol

    async def run(
        self,
        spawned: Callable[[int | None], None],
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> ExitStatus:
        """Run one generation: spawn, wait until ready, wait for the exit.

        Calls ``spawned(pid)`` right after the spawn and ``task_status.started(pid)``
        once the readiness protocol says so. When the child exits by itself, what
        is left of its process group is killed before this returns (on a subreaper
        host, descendants that left the group are killed shortly after, off the
        restart path), so no old process holds a port when the child restarts.

        Returns:
            How the child ended (a missed watchdog is an abnormal exit).

        Raises:
            SpawnError: the OS refused to start the process.
            StartFailure: it exited before becoming ready, did not become ready
                within ``startup_timeout`` (it is then stopped), or a listening
                socket could not be opened.

        Cancellation: stops the child (``stop_signal`` and SIGCONT to its process
        group, ``stop_timeout``, then SIGKILL; escaped descendants are killed too),
        shielded; records :attr:`stop_report` and re-raises ``Cancelled``.
        """
        try:
            return await self._run(spawned, task_status)
        except BaseExceptionGroup as group:
            _raise_collapsed(group)

    async def aclose(self) -> None:
        """Close the listening and notify sockets. Idempotent.

        Cancellation: not a checkpoint; always completes.
        """
        self._closed = True
        if self._listeners is not None:
            self._listeners.close()
        if self._notify is not None:
            self._notify.close()

    # -- internals

    @property
    def _path(self) -> tuple[str, ...]:
        return self._context.path

    async def _run(
        self, spawned: Callable[[int | None], None], task_status: trio.TaskStatus[int | None]
    ) -> ExitStatus:
        if self._closed:
            raise RuntimeError(f"{'/'.join(self._path)}: the runner is closed")
        if self._running:
            raise RuntimeError(f"{'/'.join(self._path)}: a generation is already running")
        self._running = True
        self._stop_report = None
        try:
            try:
                # Spawning yields to nobody: a generation stopped before it
                # began must not start a process.
                await trio.lowlevel.checkpoint_if_cancelled()
                await self._open_slot()
                gen = await self._spawn_generation()
            except trio.Cancelled:
                self._stop_report = StopReport()
                raise
            self._generation = gen
            try:
                if gen.watched:
                    async with trio.open_nursery() as nursery:
                        outcome = await self._supervise(gen, nursery, spawned, task_status)
                else:
                    # Nothing to run beside this task: no nursery (nor its scope).
                    outcome = await self._supervise(gen, None, spawned, task_status)
            finally:
                gen.check.close()
            if isinstance(outcome, StartFailure):
                raise outcome
            return outcome
        finally:
            self._running = False

    async def _open_slot(self) -> None:
        spec = self._spec
        if spec.listen and self._listeners is None:
            try:
                self._listeners = await open_listen_set(spec.listen)
            except OSError as exc:
                raise StartFailure(
                    self._path, f"cannot open listening socket: {exc.strerror or exc}"
                ) from exc
        if isinstance(spec.ready, ReadyNotify) and self._notify is None:
            try:
                self._notify = NotifySocket(self._host.socket_path(self._child_id))
            except OSError as exc:
                raise StartFailure(
                    self._path, f"cannot open the notify socket: {exc.strerror or exc}"
                ) from exc

    def _output_fd(
        self, output: Output, pumps: list[_LinePump], child_ends: list[int]
    ) -> int | None:
        if isinstance(output, OutputInherit):
            return None
        if isinstance(output, OutputDiscard):
            return self._host.devnull
        if isinstance(output, OutputLines | OutputBatches):
            read_end, write_end = os.pipe()
            child_ends.append(write_end)
            pumps.append(_LinePump(read_end, output))
            return write_end
        raise TypeError(f"unsupported output: {output!r}")

    def _child_env(self, check: ReadyCheck) -> tuple[dict[str, str], list[bytes]]:
        """The generation's environment, and the same encoded for ``execve``."""
        # The supervisor's own environment is read and encoded once per slot (at
        # its first start), not anew on every restart: that is on the restart path.
        base = self._base_env
        own_env = self._spec.env or _NO_VARIABLES
        if base is None:
            # Every slot keeps the one shared dict of what children inherit; a
            # slot's own variables stay in its spec (not merged into a copy).
            environ, base = _inherited_env()
            self._base_env = base
            merged = base
            if own_env:
                merged = {**base, **own_env}
                merged.pop(MARKER_ENV, None)
            # What comes unchanged from this process's environment is encoded once
            # for every slot; the slot's own variables (and its marker) are its own.
            inherited: list[tuple[str, str]] = []
            own: list[tuple[str, str]] = []
            for item in merged.items():
                (inherited if environ.get(item[0]) == item[1] else own).append(item)
            own.append((MARKER_ENV, self._child_id))
            self._base_env_list = encode_env_shared(inherited) + encode_env(own)
        assert self._base_env_list is not None
        extra = dict(check.child_env())
        if self._listeners is not None:
            extra.update(self._listeners.child_env())
        # Built for this spawn only (the encoded list is what is kept).
        env = {**base, **own_env, MARKER_ENV: self._child_id, **extra}
        if not extra:
            return env, self._base_env_list
        if any(name == MARKER_ENV or name in base or name in own_env for name in extra):
            return env, encode_env(env.items())  # a protocol variable set twice
        return env, self._base_env_list + encode_env(extra.items())

    async def _spawn_generation(self) -> _Generation:
        spec = self._spec
        pumps: list[_LinePump] = []
        child_ends: list[int] = []
        check = make_ready_check(spec.ready, notify=self._notify)
        try:
            try:
                stdout = self._output_fd(spec.stdout, pumps, child_ends)
                stderr = self._output_fd(spec.stderr, pumps, child_ends)
            except OSError as exc:
                raise _spawn_error(self._path, exc, spec.argv[0], os.environ, spec.cwd) from exc
            env, env_list = self._child_env(check)
            # No checkpoint between the turn and the registration (see spawn_turn).
            host = self._host
            held = await host.spawn_turn()
            try:
                since = _boot_ticks()
                pid = self._spawn(env, env_list, stdout, stderr, check)
                host.register(pid, self._child_id)
            finally:
                host.end_spawn_turn(held)
        except BaseException:
            for pump in pumps:
                pump.close()
            check.close()
            raise
        finally:
            for fd in child_ends:
                os.close(fd)
        self._generations += 1
        pidfd: int | None = None
        if _procfs._HAVE_PIDFD:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(pid)
        check.spawned()
        return _Generation(_Child(pid, pidfd), check, pumps, since)

    def _spawn(
        self,
        env: dict[str, str],
        env_list: list[bytes],
        stdout: int | None,
        stderr: int | None,
        check: ReadyCheck,
    ) -> int:
        spec = self._spec
        extra = dict(check.child_fds())
        if self._listeners is not None:
            extra.update(self._listeners.child_fds())
        executables = self._executables
        if executables is None:
            # The generation's variables never include PATH: the base's decides.
            executables = self._executables = exec_candidates(spec.argv[0], env)
        try:
            return spawn_child(
                spec.argv,
                env=env,
                cwd=spec.cwd,
                stdin=self._host.devnull,
                stdout=stdout,
                stderr=stderr,
                extra_fds=extra,
                listen_pid=self._listeners is not None,
                env_list=env_list,
                executables=executables,
            )
        except OSError as exc:
            raise _spawn_error(self._path, exc, spec.argv[0], env, spec.cwd) from exc

    async def _supervise(
        self,
        gen: _Generation,
        nursery: trio.Nursery | None,
        spawned: Callable[[int | None], None],
        task_status: trio.TaskStatus[int | None],
    ) -> ExitStatus | StartFailure:
        spec = self._spec
        child = gen.child
        if nursery is not None:
            nursery.start_soon(child.watch, gen.changed)
            nursery.start_soon(self._run_check, gen)
        try:
            for pump in gen.pumps:
                self._host.start_pump(pump)
            spawned(child.pid)
            if not gen.check.ready:
                with trio.move_on_after(spec.startup_timeout):
                    await gen.until(
                        lambda: gen.check.ready or child.exited or gen.check_error is not None
                    )
            if not gen.check.ready and child.exited:
                # Its last words (READY=1, a newline on the fd) may still be queued.
                gen.check.settle(child.pid)
            if not gen.check.ready:
                if child.exited:
                    status = self._finish(gen)
                    return StartFailure(self._path, f"exited before becoming ready ({status})")
                with trio.CancelScope(shield=True):
                    self._stop_report = await self._stop(gen, spec.stop_signal, spec.stop_timeout)
                if gen.check_error is not None:
                    return StartFailure(self._path, f"readiness check failed: {gen.check_error!r}")
                return StartFailure(
                    self._path, f"readiness timeout after {spec.startup_timeout:g}s"
                )
            task_status.started(child.pid)
            await gen.until(gen.ended)
            if child.exited:
                return self._finish(gen)
            with trio.CancelScope(shield=True):
                report = await self._stop(gen, signal.SIGABRT, spec.stop_timeout)
            end = report.exit or ExitStatus()
            return ExitStatus(
                code=end.code,
                signal=end.signal,
                normal=False,
                reason=f"{gen.check.failure}; {end.reason}",
            )
        except BaseException:
            if not child.reaped:
                with trio.CancelScope(shield=True):
                    self._stop_report = await self._stop(gen, spec.stop_signal, spec.stop_timeout)
            raise
        finally:
            if child.reaped:
                gen.check.settle(child.pid)
            self._status_text = gen.check.status_text or self._status_text
            # Output pipes usually reach their end with the child: then no scope
            # and no timer are set up on the restart path.
            if any(not pump.done.is_set() for pump in gen.pumps):
                with trio.CancelScope(shield=True):
                    await self._drain(gen)
            for pump in gen.pumps:
                pump.stop()
            child.stop_watching()
            if nursery is not None:
                nursery.cancel_scope.cancel()

    async def _run_check(self, gen: _Generation) -> None:
        try:
            await gen.check.run(gen.child.pid, gen.changed)
        except Exception as exc:
            if gen.check.ready:
                _log.warning(
                    "%s: readiness protocol failed after ready: %r", "/".join(self._path), exc
                )
            else:
                gen.check_error = exc
                gen.changed()

    async def _drain(self, gen: _Generation) -> None:
        """Wait until the pumps have read their pipe's end.

        As long as output still comes (on a loaded machine, reading what a child wrote
        just before it exited can take seconds), up to ``_DRAIN_MAX``; a pipe that stays
        silent for ``_DRAIN_IDLE`` is held open by a descendant and not waited for.
        """
        with trio.move_on_after(_DRAIN_MAX):
            for pump in gen.pumps:
                while not pump.done.is_set():
                    seen = pump.received
                    with trio.move_on_after(_DRAIN_IDLE):
                        await pump.done.wait()
                    if pump.received == seen and not pump.done.is_set():
                        break

    def _exit_status(self, status: int | None) -> ExitStatus:
        if status is None:
            return ExitStatus(normal=False, reason="exit status lost (reaped elsewhere)")
        # Death by the child's own stop signal is a normal exit, whoever sent it
        # (OTP's ``shutdown``); any other signal is abnormal.
        return ExitStatus.from_wait_status(
            status,
            success_codes=self._spec.success_exit_codes,
            normal_signals=self._normal_signals,
        )

    def _reap(self, child: _Child) -> ExitStatus:
        status = child.reap()
        self._host.unregister(child.pid)
        return self._exit_status(status)

    async def _tree(self, child: _Child) -> _Tree:
        host = self._host
        child_id = self._child_id

        def claim(leader_ticks: int) -> list[tuple[int, int]]:
            return host.claimed_by(child_id, leader_ticks)

        try:
            tree = await trio.to_thread.run_sync(
                _find_tree, child.pid, claim if host.subreaper else None
            )
        except Exception:
            # Never let the walk keep a stop from killing the group.
            _log.exception("%s: cannot walk the process tree", "/".join(self._path))
            return _Tree([], [])
        host.expect_orphans(
            ((t.pid, t.ticks) for t in (*tree.escapees, *tree.members)), self._child_id
        )
        return tree

    def _finish(self, gen: _Generation) -> ExitStatus:
        """The leader exited by itself: kill what is left of its group, then reap it."""
        child = gen.child
        # The unreaped leader keeps the group id ours: clear leftovers now, so no
        # old group member holds a port when the child is restarted.
        child.signal_group(signal.SIGKILL)
        end = self._reap(child)
        self._host.after_crash(self._child_id, self._leader_starttime, gen.since)
        return end

    def _leader_starttime(self) -> int | None:
        # Read lazily (by the orphan reaper, when it finds a leftover): never on
        # the spawn or restart path.
        gen = self._generation
        if gen is None or gen.child.reaped:
            return None
        entry = _read_stat(gen.child.pid)
        return None if entry is None else entry.ticks

    async def _stop(self, gen: _Generation, sig: int, grace: float) -> StopReport:
        """Stop the generation: ``sig`` + SIGCONT, ``grace`` seconds, then SIGKILL.

        Call it shielded: a stop always completes.
        """
        child = gen.child
        # Walk the tree before signalling: once the leader is gone, its escaped
        # descendants are reparented and cannot be told apart from strangers.
        walk = not child.exited or self._host.subreaper
        tree = await self._tree(child) if walk else _Tree([], [])
        killed = False
        if not child.exited:
            child.signal_group(sig)
            child.signal_group(signal.SIGCONT)
            for target in tree.escapees:
                target.send(sig)
                target.send(signal.SIGCONT)
            with trio.move_on_after(grace):
                await gen.until(gen.exited)
            killed = not child.exited
        child.signal_group(signal.SIGKILL)
        await gen.until(gen.exited)
        end = self._reap(child)
        # SIGKILL every escapee, and wait until the whole tree is really gone.
        escaped = await _kill_pinned([*tree.escapees, *tree.members])
        if escaped:
            _log.warning(
                "%s: processes of the child survived SIGKILL: %s", "/".join(self._path), escaped
            )
        return StopReport(exit=end, killed=killed, escaped=escaped)
