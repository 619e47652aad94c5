"""The persistence task: the only writer of ``state.json``.

One task, :func:`run_persistence`, writes the daemon's intent, an immutable
:class:`DaemonState`, atomically. It takes the state from one of two sources:

- a ``snapshot()`` callable, pulled only when a write is due. The daemon calls
  :meth:`StateStore.mark_dirty` after every change (cheap, synchronous) and
  ``await store.flush()`` where a reply must wait until its change is on disk;
  a burst of changes costs one snapshot and one write;
- or a Trio memory channel of snapshots (:func:`open_state_writer`), each
  received one being the newest state.

Each write:

1. refresh the backup: hard-link ``state.json`` to ``state.json.bak.tmp``
   and rename that over ``state.json.bak`` (both atomic);
2. write the new content to a fresh ``state.json.<random>.tmp``, fsync it,
   close it, rename it over ``state.json``;
3. fsync the directory. Only now is the generation *acknowledged*.

A crash at any instant leaves ``state.json`` holding the previous or the new
generation, never a mix (PC-01), and ``state.json.bak`` holding a good older
one. Every blocking call runs in a worker thread through the
:class:`FileSystem` seam, so a slow disk never stalls supervision (PC-08).

Changes are coalesced: while a write is in flight (or within
``min_write_interval`` of the last one, ``background_interval`` while no
``flush()`` waits), further changes only mark the state dirty, so there is at
most one write in flight plus one pending, whatever the rate of changes (PC-08,
PC-09). On the real disk the steps of a write run in one worker thread. A failed write
(``ENOSPC``, ``EROFS``, ``EIO``...) leaves the old file intact and no temporary
file behind, is logged and counted, turns :meth:`StateStore.health` to
``persistence: degraded (ENOSPC)``, and is retried with exponential backoff
with the newest snapshot; the first write that succeeds clears it (PC-06,
PC-07). Every ``flush_interval`` seconds without a write, the latest state is
written again (the baseline flush).

A burst whose intermediate states nobody needs on disk (the daemon starting its
apps: each start changes the state, and a full snapshot per write makes the
burst quadratic) can be held: :meth:`StateStore.hold` delays the writes of
changes until :meth:`StateStore.release` or a deadline, while a ``flush()``
(a reply waiting for durability) still writes at once.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import attrs
import trio

from supervision._groups import raise_collapsed

from .._log import get_logger
from ._codec import encode_state
from ._fs import _NO_HARD_LINKS, FileSystem, Step, WriteProgress
from ._home import Home
from ._load import LoadResult, StateSource
from ._records import DaemonState

__all__ = [
    "PersistenceHealth",
    "PersistenceStatistics",
    "PersistenceStatus",
    "StateStore",
    "open_persistence",
    "open_state_writer",
    "run_persistence",
]

_log = get_logger()

T = TypeVar("T")


class PersistenceStatus(enum.Enum):
    """Whether the daemon's intent is reaching the disk."""

    OK = "ok"
    """The latest state is written, or being written."""
    DEGRADED = "degraded"
    """Writes are failing (or were refused); the old file is intact; retrying."""
    READ_ONLY = "read-only"
    """The file on disk must not be overwritten (e.g. a newer schema); nothing is written."""


@attrs.frozen(kw_only=True)
class PersistenceHealth:
    """The health of persistence, as ``health`` and ``status`` report it.

    ``str(health)`` is the one-line form: ``persistence: ok`` or
    ``persistence: degraded (ENOSPC)``.

    Attributes:
        status: OK, degraded or read-only.
        reason: A short cause when not OK: an errno name (``"ENOSPC"``), an
            exception type, or why the store is read-only.
        consecutive_failures: Failed attempts since the last success.
        last_error: The last failure in full (step, errno, message).
        generation: The last acknowledged generation.
    """

    status: PersistenceStatus
    reason: str | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    generation: int = 0

    def __str__(self) -> str:
        if self.reason is None:
            return f"persistence: {self.status.value}"
        return f"persistence: {self.status.value} ({self.reason})"


@attrs.frozen(kw_only=True)
class PersistenceStatistics:
    """Counters of the persistence task (all since the store was created).

    Attributes:
        generation: The last acknowledged generation.
        snapshots_received: Changes announced: snapshots received over the channel,
            or calls of :meth:`StateStore.mark_dirty`.
        snapshots_coalesced: Changes announced while an earlier one was not
            written yet (written together with it).
        writes: Writes completed (acknowledged), baseline flushes included.
        write_failures: Write attempts that failed.
        writes_refused: Snapshots refused because they would erase every app.
        pending: A snapshot is waiting to be written.
        writing: A write is in flight.
    """

    generation: int
    snapshots_received: int
    snapshots_coalesced: int
    writes: int
    write_failures: int
    writes_refused: int
    pending: bool
    writing: bool


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    return type(exc).__name__


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
    return float(value)


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name}: expected a number of seconds >= 0, got {value!r}")
    return float(value)


class StateStore:
    """The persistent side of the daemon's intent: what is on disk, and how it gets there.

    The store is passive; :func:`run_persistence` (or :func:`open_persistence`,
    :func:`open_state_writer`) runs its one writer task. Build it from the :class:`LoadResult` of
    :func:`load_state`, so it continues the generation count and knows whether
    it may write at all.

    Args:
        home: The daemon's home.
        loaded: What :func:`load_state` found; ``None`` means nothing was on disk.
        fs: The filesystem seam (default: the real disk, in worker threads).
        flush_interval: Rewrite the latest state after this many seconds without a write.
        min_write_interval: Wait at least this long after a write before the next one,
            so a storm of changes costs a handful of writes (the final flush does not wait).
        background_interval: Wait at least this long after a write before writing
            changes that no :meth:`StateStore.flush` waits for (default:
            ``min_write_interval``): churn nobody asked to be durable (processes
            crashing and restarting) costs few writes, while a waiting reply is
            written ``min_write_interval`` after the last write.
        retry_initial: Delay before the first retry of a failed write; doubles per failure.
        retry_max: Upper bound of the retry delay.
        shutdown_timeout: How long the final flush may take when the task is cancelled.
    """

    def __init__(
        self,
        home: Home,
        loaded: LoadResult | None = None,
        *,
        fs: FileSystem | None = None,
        flush_interval: float = 30.0,
        min_write_interval: float = 0.2,
        background_interval: float | None = None,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        shutdown_timeout: float = 5.0,
    ) -> None:
        loaded = LoadResult() if loaded is None else loaded
        self._home = home
        self._fs = FileSystem() if fs is None else fs
        self._flush_interval = _positive("flush_interval", flush_interval)
        self._min_write_interval = _non_negative("min_write_interval", min_write_interval)
        self._background_interval = max(
            self._min_write_interval,
            self._min_write_interval
            if background_interval is None
            else _non_negative("background_interval", background_interval),
        )
        self._retry_initial = _positive("retry_initial", retry_initial)
        self._retry_max = _positive("retry_max", retry_max)
        self._shutdown_timeout = _positive("shutdown_timeout", shutdown_timeout)
        self._read_only_reason = (
            (loaded.read_only_reason or "read-only state") if loaded.read_only else None
        )

        self._latest = loaded.state  # the newest state received over the channel
        self._snapshot: Callable[[], DaemonState] = lambda: self._latest
        self._dirty = False  # a change is not written yet
        self._changes = 0  # changes announced so far
        self._settled = 0  # changes written (or refused) so far
        self._latest_refused = False
        self._permit_empty = False
        # Apps in the newest state known to be on disk: the guard against erasing them.
        self._disk_apps = len(loaded.state.apps) if loaded.source is not StateSource.NONE else 0
        self._generation = loaded.generation
        self._next_generation = loaded.generation + 1

        self._backup_fresh = False  # state.json.bak already holds the current state.json
        self._writing = False
        self._closed = False
        self._started = False
        self._finished = False
        self._last_write_at = -math.inf  # baseline flush timer; set when the task starts
        self._last_write_end = -math.inf  # min_write_interval timer
        self._held_until = -math.inf  # hold(): changes wait until then, unless flushed
        self._flushing = 0  # flush() calls waiting: they lift a hold
        self._retry_at: float | None = None
        self._failures = 0
        self._reason: str | None = None
        self._last_error: str | None = None
        self._step: Step | None = None

        self._received = 0
        self._coalesced = 0
        self._writes = 0
        self._write_failures = 0
        self._refused = 0

        self._wake = trio.Event()
        self._idle = trio.Event()
        self._receive_channel: trio.MemoryReceiveChannel[DaemonState] | None = None

    # ----------------------------------------------------------------- introspection

    @property
    def home(self) -> Home:
        """The home this store writes to."""
        return self._home

    @property
    def generation(self) -> int:
        """The last acknowledged generation (0: none yet)."""
        return self._generation

    @property
    def read_only(self) -> bool:
        """Whether this store never writes (see :attr:`LoadResult.read_only`)."""
        return self._read_only_reason is not None

    def health(self) -> PersistenceHealth:
        """The current health record (cheap; safe to call from RPC handlers)."""
        if self._read_only_reason is not None:
            return PersistenceHealth(
                status=PersistenceStatus.READ_ONLY,
                reason=self._read_only_reason,
                generation=self._generation,
            )
        if self._reason is not None:
            return PersistenceHealth(
                status=PersistenceStatus.DEGRADED,
                reason=self._reason,
                consecutive_failures=self._failures,
                last_error=self._last_error,
                generation=self._generation,
            )
        return PersistenceHealth(status=PersistenceStatus.OK, generation=self._generation)

    def statistics(self) -> PersistenceStatistics:
        """Counters, for ``status`` and for tests."""
        return PersistenceStatistics(
            generation=self._generation,
            snapshots_received=self._received,
            snapshots_coalesced=self._coalesced,
            writes=self._writes,
            write_failures=self._write_failures,
            writes_refused=self._refused,
            pending=self._dirty,
            writing=self._writing,
        )

    def permit_empty(self) -> None:
        """Allow the next snapshot with no apps to replace a state that has some.

        Without this, such a snapshot is refused (logged, counted, health
        degraded): an empty app list silently replacing a full one is how
        supervisors lose everything after a failed start (PC-03). Call it when
        the emptiness is deliberate, e.g. a reloaded config that defines no
        apps. The permission is used up by the first empty snapshot written.
        """
        self._permit_empty = True

    def mark_dirty(self) -> None:
        """Announce a change: the writer pulls a snapshot when the next write is due.

        Synchronous and cheap; call it after every change, as often as changes happen.
        """
        self._received += 1
        pending = self._dirty and not self._latest_refused
        if self._dirty:
            self._coalesced += 1
        self._changes += 1
        self._dirty = True
        self._latest_refused = False
        if not pending:
            # A change already pending has set when the next write is due: the
            # writer need not wake for each of a burst (a crash storm makes a
            # few changes per restart).
            self._wake.set()

    def hold(self, seconds: float) -> None:
        """Write no change for up to ``seconds``, or until :meth:`release`.

        For a burst of changes whose intermediate states are of no use on disk
        (the daemon starting its apps). Changes still mark the state dirty; a
        :meth:`flush` lifts the hold for its write, so a reply still means durable;
        the baseline flush, retries and the final write are not affected.
        """
        seconds = _non_negative("seconds", seconds)
        self._held_until = trio.current_time() + seconds
        self._wake.set()

    def release(self) -> None:
        """End a :meth:`hold`: a pending change is written as usual from now on."""
        self._held_until = -math.inf
        self._wake.set()

    async def flush(self) -> None:
        """Return once every change announced so far is on disk.

        Also returns when the change is refused (see :meth:`permit_empty`), the
        store is read-only, or the writer has finished. While writes fail this
        waits for the retry that succeeds: put a deadline around it.
        """
        target = self._changes
        self._flushing += 1
        self._wake.set()
        try:
            while not (
                self._settled >= target or self._read_only_reason is not None or self._finished
            ):
                await self._idle.wait()
        finally:
            self._flushing -= 1

    async def wait_idle(self) -> None:
        """Wait until every snapshot sent so far is written (or refused, or read-only).

        "Sent" means a ``send()`` on the task's channel that has returned. While
        writes fail this waits for the retry that succeeds: put a deadline around it.
        """
        while True:
            if not self._receiver_caught_up():
                # A snapshot was handed over but the receiving task has not run yet.
                await trio.lowlevel.checkpoint()
            elif self._is_idle():
                return
            else:
                await self._idle.wait()

    # ----------------------------------------------------------------- the task

    def _receiver_caught_up(self) -> bool:
        channel = self._receive_channel
        if channel is None or self._closed:
            return True
        stats = channel.statistics()
        return stats.current_buffer_used == 0 and stats.tasks_waiting_receive > 0

    def _is_idle(self) -> bool:
        if self._read_only_reason is not None or self._finished:
            return True  # nothing more will be written
        return not (self._dirty or self._writing)

    def _notify(self) -> None:
        self._wake.set()
        self._idle.set()
        self._idle = trio.Event()

    def _claim(self) -> None:
        if self._started:
            raise RuntimeError("this StateStore already has a persistence task")
        self._started = True

    async def _receive(self, receive_channel: trio.MemoryReceiveChannel[DaemonState]) -> None:
        try:
            async with receive_channel:
                async for state in receive_channel:
                    self._latest = state
                    self.mark_dirty()
        finally:
            self._closed = True
            self._wake.set()

    async def _run_writer(self) -> None:
        self._last_write_at = trio.current_time()
        try:
            await self._write_loop()
        finally:
            # Cancelled (daemon shutting down) or done: one last, bounded attempt.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self._shutdown_timeout
                if self._dirty and self._read_only_reason is None:
                    await self._attempt()
            if self._dirty and self._read_only_reason is None:
                _log.error(
                    "state_final_write_failed",
                    path=str(self._home.state_file),
                    generation=self._generation,
                    reason=self._reason or "timeout",
                )

    async def _write_loop(self) -> None:
        while True:
            if self._closed:
                return  # the final attempt happens in _run_writer
            now = trio.current_time()
            due: float
            if self._read_only_reason is not None:
                due = math.inf
            elif self._retry_at is not None:
                due = self._retry_at
            elif self._dirty and self._flushing:
                due = max(now, self._last_write_end + self._min_write_interval)
            elif self._dirty:
                due = max(now, self._last_write_end + self._background_interval, self._held_until)
            elif self._latest_refused:
                due = math.inf
            else:
                due = self._last_write_at + self._flush_interval
            if due <= now:
                await self._attempt()
                continue
            with trio.move_on_at(due):
                await self._wake.wait()
            self._wake = trio.Event()

    async def _attempt(self) -> None:
        changes = self._changes
        state = self._snapshot()
        if not state.apps and self._disk_apps > 0 and not self._permit_empty:
            self._refuse_empty(changes)
            return
        generation = self._next_generation
        self._next_generation += 1
        data = encode_state(state, generation)
        self._dirty = False
        self._writing = True
        done = False
        try:
            await self._write(data)
            done = True
        except (OSError, RuntimeError) as exc:
            # RuntimeError: no worker thread could be started (RX-05). Bugs propagate.
            self._on_failure(exc)
        finally:
            self._writing = False
            if not done:
                self._dirty = True  # the newest snapshot still has to reach the disk
            self._notify()
        if done:
            self._on_success(generation, state, changes)

    def _refuse_empty(self, changes: int) -> None:
        self._settled = changes
        self._refused += 1
        self._dirty = False
        self._latest_refused = True
        self._reason = f"refused to replace {self._disk_apps} apps with none"
        self._last_error = (
            f"a snapshot with no apps would replace the {self._disk_apps} apps in "
            f"{self._home.state_file}; refused (use --reset-state or permit_empty())"
        )
        _log.error(
            "state_write_refused",
            path=str(self._home.state_file),
            apps_on_disk=self._disk_apps,
            message=self._last_error,
        )
        self._notify()

    def _on_success(self, generation: int, state: DaemonState, changes: int) -> None:
        recovered = self._reason is not None
        self._settled = changes
        self._generation = generation
        self._writes += 1
        self._last_write_at = self._last_write_end = trio.current_time()
        self._disk_apps = len(state.apps)
        if not state.apps:
            self._permit_empty = False
        self._retry_at = None
        self._failures = 0
        self._reason = None
        self._last_error = None
        if recovered:
            _log.info(
                "state_persistence_recovered",
                path=str(self._home.state_file),
                generation=generation,
            )
        else:
            _log.debug("state_written", path=str(self._home.state_file), generation=generation)

    def _on_failure(self, exc: OSError | RuntimeError) -> None:
        self._failures += 1
        self._write_failures += 1
        step = self._step.value if self._step else "unknown"
        self._reason = _reason(exc)
        self._last_error = f"{step}: {exc}"
        delay = min(self._retry_max, self._retry_initial * 2 ** (self._failures - 1))
        self._retry_at = trio.current_time() + delay
        _log.error(
            "state_write_failed",
            path=str(self._home.state_file),
            step=step,
            reason=self._reason,
            error=str(exc),
            consecutive_failures=self._failures,
            retry_in=delay,
        )

    # ----------------------------------------------------------------- one atomic write

    async def _run(self, step: Step, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        self._step = step
        await self._fs.before(step)
        result = await fn(*args)
        await self._fs.after(step)
        return result

    async def _cleanup(self, fd: int | None, path: Any) -> None:
        """Best effort after a failure: close and remove the temporary file."""
        try:
            if fd is not None:
                with contextlib.suppress(OSError):
                    await self._fs.close(fd)
            if path is not None:
                await self._fs.unlink(path)
        except (OSError, RuntimeError) as exc:
            # Left for the boot-time sweep of *.tmp files.
            _log.warning("state_temp_cleanup_failed", path=str(path), error=str(exc))

    async def _refresh_backup(self) -> None:
        if self._backup_fresh:
            return  # a failed attempt already backed up this state.json
        fs, home = self._fs, self._home
        bak_tmp = home.path / "state.json.bak.tmp"
        try:
            try:
                await self._run(Step.BACKUP_LINK, fs.link, home.state_file, bak_tmp)
            except FileExistsError:  # left by an earlier failure
                await fs.unlink(bak_tmp)
                await self._run(Step.BACKUP_LINK, fs.link, home.state_file, bak_tmp)
        except FileNotFoundError:
            return  # no previous state.json: nothing to keep
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            await self._run(Step.BACKUP_LINK, fs.copy, home.state_file, bak_tmp)
        try:
            await self._run(Step.BACKUP_REPLACE, fs.replace, bak_tmp, home.backup_file)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._cleanup(None, bak_tmp)
            raise
        self._backup_fresh = True

    async def _write(self, data: bytes) -> None:
        fs, home = self._fs, self._home
        if type(fs) is FileSystem:
            # No hook to call between the steps: all of them in one worker thread.
            progress = WriteProgress(backup_fresh=self._backup_fresh)
            try:
                await fs.write_atomically(
                    home.state_file, home.backup_file, "state.json.", data, progress
                )
            finally:
                self._step = progress.step
                self._backup_fresh = progress.backup_fresh
            return
        await self._refresh_backup()
        fd, tmp = await self._run(Step.CREATE, fs.create_temp, home.path, "state.json.")
        open_fd: int | None = fd
        try:
            await self._run(Step.WRITE, fs.write, fd, data)
            await self._run(Step.FSYNC, fs.fsync, fd)
            open_fd = None
            await self._run(Step.CLOSE, fs.close, fd)
            self._backup_fresh = False  # from here on, state.json may be the new file
            await self._run(Step.REPLACE, fs.replace, tmp, home.state_file)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._cleanup(open_fd, tmp)
            raise
        await self._run(Step.FSYNC_DIR, fs.fsync_dir, home.path)
        self._step = None


@contextlib.contextmanager
def _collapsed() -> Iterator[None]:
    """Let a lone exception out of a nursery as itself, not as an ``ExceptionGroup``."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise_collapsed(group)


async def run_persistence(
    store: StateStore,
    source: trio.MemoryReceiveChannel[DaemonState] | Callable[[], DaemonState],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the one task that writes ``state.json``.

    Start it with ``await nursery.start(run_persistence, store, source)``; it
    reports started at once. ``source`` is either

    - a ``snapshot()`` callable, called on the event loop when a write is due
      (after :meth:`StateStore.mark_dirty`, and for the baseline flush); the
      task runs until cancelled;
    - or the receive side of a channel: send every new :class:`DaemonState`
      into its send side. Closing every send side ends the task after a final
      write of the last snapshot.

    Cancellation: the latest unwritten state is written once more, shielded,
    within ``shutdown_timeout``; then ``Cancelled`` propagates.

    Raises:
        RuntimeError: The store already has a running task.
    """
    store._claim()
    try:
        with _collapsed():
            async with trio.open_nursery() as nursery:
                if isinstance(source, trio.MemoryReceiveChannel):
                    store._receive_channel = source
                    nursery.start_soon(store._receive, source)
                else:
                    store._snapshot = source
                task_status.started()
                await store._run_writer()
                nursery.cancel_scope.cancel()
    finally:
        store._finished = True
        store._notify()


@contextlib.asynccontextmanager
async def open_persistence(
    store: StateStore, snapshot: Callable[[], DaemonState]
) -> AsyncIterator[StateStore]:
    """Run the persistence task, pulling from ``snapshot``, for the duration of the block.

    Yields ``store``: call :meth:`StateStore.mark_dirty` after every change and
    ``await store.flush()`` to wait until the changes so far are on disk. Leaving
    the block makes a last write of a fresh snapshot (bounded by the store's
    ``shutdown_timeout``). An exception raised in the block comes out as itself,
    not wrapped in an ``ExceptionGroup``.

    Raises:
        RuntimeError: The store already has a running task.
    """
    with _collapsed():
        async with trio.open_nursery() as nursery:
            await nursery.start(run_persistence, store, snapshot)
            try:
                yield store
            finally:
                store.mark_dirty()  # the final write has the very last state
                nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def open_state_writer(
    store: StateStore,
) -> AsyncIterator[trio.MemorySendChannel[DaemonState]]:
    """Run the persistence task for the duration of the block.

    Yields the send side of an unbuffered channel: ``await send.send(snapshot)``
    hands a snapshot over (returning as soon as the task has it, not when it is
    written). Clone it for more producers, and close the clones before the
    block ends. Leaving the block writes the last snapshot, then returns.

    Cancellation: the task makes one shielded final write, bounded by the
    store's ``shutdown_timeout``. An exception raised in the block comes out
    as itself, not wrapped in an ``ExceptionGroup``.

    Raises:
        RuntimeError: The store already has a running task.
    """
    send, receive = trio.open_memory_channel[DaemonState](0)
    with _collapsed():
        async with trio.open_nursery() as nursery:
            await nursery.start(run_persistence, store, receive)
            async with send:
                yield send
