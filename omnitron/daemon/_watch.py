"""Hot reload in development: watch an app's files, reload it when they change.

One task per watched app, in the :class:`Watching` nursery: a *source* pushes
batches of changed paths (by default :func:`file_changes`, the Rust-backed
``watchfiles`` watcher in a worker thread), :func:`debounced` waits for a quiet
``debounce`` period, then the app is *reloaded* (never restarted: the new
process must become ready before the old one is stopped, so a broken save
leaves the old one serving). Outcomes are kept for ``omnitron watch status`` and
written as notes in the app's log.

Which apps are watched: an app's ``watch`` config, switched for every app by
``omnitron up --watch/--no-watch`` and at run time by ``omnitron watch on|off
[APP]``. The run-time switches last until the daemon stops: a daemon started
again watches what its config and its ``up`` flags say.

``watchfiles`` is imported only when a watcher starts, so neither the CLI nor a
daemon that watches nothing pays for it.
"""

from __future__ import annotations

import contextlib
import enum
import fnmatch
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from .._log import get_logger
from ..config import AppConfig, WatchConfig
from ..errors import OmnitronError
from ..rpc import Call, Dispatcher, Handler, Name, Role
from ._errors import AppNotFound

if TYPE_CHECKING:
    from ._records import AppRecord
    from ._workers import WorkerClient

__all__ = [
    "ChangeSource",
    "IgnoreFilter",
    "Outcome",
    "WatchRecord",
    "Watching",
    "debounced",
    "file_changes",
    "importers",
    "register_watch_methods",
]

log = get_logger("omnitron.watch")

RAW_STEP_MS = 50
"""Milliseconds without a new event after which ``watchfiles`` hands over a batch;
also how often its thread looks at the stop event (how fast a watcher stops)."""
RAW_GROUP_MS = 200
"""The longest ``watchfiles`` groups events into one batch while they keep coming."""
BATCH_BUFFER = 16
"""Batches queued between a source and its debouncer (then the source waits, and
``watchfiles`` keeps accumulating events meanwhile)."""
SHOWN_PATHS = 5
"""Changed paths kept per reload for ``watch status``."""

OnChange = Callable[[str, set[str]], Awaitable[None]]
"""``on_change(app, paths)``: what a debounced change of ``app``'s files does."""


class ChangeSource(Protocol):
    """Pushes each batch of changed paths under ``directory`` that ``keep`` accepts
    into ``send``, until cancelled (or the directory can no longer be watched: it
    raises)."""

    def __call__(
        self,
        directory: Path,
        keep: Callable[[str], bool],
        send: trio.MemorySendChannel[set[str]],
    ) -> Awaitable[None]: ...


class IgnoreFilter:
    """Which changed paths matter: not those matching an ignore pattern, nor those
    under an excluded directory (the daemon's home, its log directory).

    A pattern without ``/`` is matched (``fnmatch``) against every part of the
    path relative to the watched directory, so ``__pycache__`` ignores the whole
    tree below any directory of that name and ``*.pyc`` any such file; a pattern
    with ``/`` is matched against the whole relative path (``build/*``).

    Args:
        directory: The watched directory (absolute).
        patterns: Ignore patterns (the defaults followed by the app's own).
        exclude: Directories whose contents never count.
    """

    def __init__(
        self, directory: Path, patterns: Iterable[str], exclude: Iterable[Path] = ()
    ) -> None:
        self.directory = directory
        patterns = tuple(patterns)
        self._parts = tuple(p for p in patterns if "/" not in p)
        self._paths = tuple(p.strip("/") for p in patterns if "/" in p)
        self._exclude = tuple(Path(os.path.abspath(e)) for e in exclude)

    def __call__(self, path: str) -> bool:
        """Whether a change of ``path`` (absolute) should trigger a reload."""
        target = Path(path)
        for excluded in self._exclude:
            if target == excluded or target.is_relative_to(excluded):
                return False
        try:
            relative = target.relative_to(self.directory)
        except ValueError:
            return True  # outside the tree (a symbolic link's target): not ours to judge
        parts = relative.parts
        for part in parts:
            for pattern in self._parts:
                if fnmatch.fnmatchcase(part, pattern):
                    return False
        text = relative.as_posix()
        return not any(
            fnmatch.fnmatchcase(text, pattern) or text.startswith(pattern + "/")
            for pattern in self._paths
        )


async def _stop_when_cancelled(stop: threading.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        stop.set()


async def file_changes(
    directory: Path,
    keep: Callable[[str], bool],
    send: trio.MemorySendChannel[set[str]],
) -> None:
    """The real :class:`ChangeSource`: ``watchfiles`` (inotify on Linux) in a thread.

    ``watchfiles.awatch`` is not used: through anyio on Trio, its worker thread
    cannot be cancelled, so a cancelled watcher lingers until the Rust side's
    timeout (5 s by default), and it takes a token of Trio's default thread
    limiter for as long as it waits, which the daemon's own file I/O shares.
    Here the blocking ``watchfiles.watch`` generator is stepped in a thread of a
    limiter of its own, and cancellation sets its ``stop_event``: the thread
    returns within :data:`RAW_STEP_MS` and no thread outlives the watcher.

    Raises:
        FileNotFoundError: ``directory`` does not exist (or vanished).
        OSError: It cannot be watched (e.g. the inotify watch limit).
    """
    import watchfiles

    stop = threading.Event()
    limiter = trio.CapacityLimiter(1)
    batches = watchfiles.watch(
        directory,
        watch_filter=lambda change, path: keep(path),
        debounce=RAW_GROUP_MS,
        step=RAW_STEP_MS,
        stop_event=stop,
        raise_interrupt=False,
    )
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_when_cancelled, stop)
            while True:
                batch = await trio.to_thread.run_sync(next, batches, None, limiter=limiter)
                if batch is None:  # stopped
                    break
                paths = {path for _change, path in batch}
                if paths:
                    await send.send(paths)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _single(group) from None
    finally:
        stop.set()
        batches.close()  # not running (every step was waited for): closes its notifier


def _single(error: BaseException) -> BaseException:
    """The one exception a nursery wrapped (a source raises the error itself)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


async def debounced(
    batches: trio.MemoryReceiveChannel[set[str]],
    delay: float,
    act: Callable[[set[str]], Awaitable[None]],
) -> None:
    """Call ``act(paths)`` once the batches have been quiet for ``delay`` seconds.

    Batches that arrive while ``act`` runs are gathered for the next call, so a
    burst of saves during a reload makes one more reload, not one per save.
    Returns when ``batches`` is closed (after acting on what it had gathered).
    """
    async for first in batches:
        pending = set(first)
        closed = False
        while True:
            with trio.move_on_after(delay) as quiet:
                try:
                    pending |= await batches.receive()
                except trio.EndOfChannel:
                    closed = True
                    break
            if quiet.cancelled_caught:
                break
        await act(pending)
        if closed:
            return


class Outcome(enum.Enum):
    """What the last debounced change of an app's files did."""

    RELOADED = "reloaded"
    FAILED = "failed"
    """The new processes did not become ready; the old ones kept serving."""
    SKIPPED = "skipped"
    """The app was not meant to run: watching never starts an app."""


@attrs.frozen(kw_only=True)
class WatchRecord:
    """What ``watch status`` shows for one app.

    Attributes:
        app: The app.
        watching: Whether its files are watched now.
        directory: The watched directory (``None``: not watched).
        debounce: Seconds of quiet before a reload.
        changes: Debounced changes seen (each one reload, or skipped).
        reloads: Reloads that succeeded.
        failures: Reloads that failed (the old processes kept serving).
        last_change: Wall-clock time of the last debounced change.
        last_paths: Up to :data:`SHOWN_PATHS` of the paths it changed.
        last_result: What the last change did (``None``: nothing changed yet).
        last_error: Why the last reload failed (``None`` once one succeeds).
        watch_error: Why watching stopped by itself (the directory vanished, the
            inotify watch limit); cleared when the app is watched again.
    """

    app: str
    watching: bool = False
    directory: str | None = None
    debounce: float | None = None
    changes: int = 0
    reloads: int = 0
    failures: int = 0
    last_change: float | None = None
    last_paths: tuple[str, ...] = ()
    last_result: Outcome | None = None
    last_error: str | None = None
    watch_error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["last_paths"] = list(self.last_paths)
        data["last_result"] = None if self.last_result is None else self.last_result.value
        return data


class _Running:
    """One app's watcher task: its config and the scope that stops it."""

    def __init__(self, config: WatchConfig) -> None:
        self.config = config
        self.scope = trio.CancelScope()


class Watching:
    """Runs the watchers of the apps that should be watched.

    Args:
        apps: Returns the apps by name (the config in force, read at every change).
        on_change: What a debounced change does (the daemon: reload the app).
        running: Whether an app should be running; a change to one that should
            not is recorded as skipped.
        enabled: ``True``: watch every app (its ``watch`` settings, or its ``cwd``);
            ``False``: none; ``None``: those with a ``watch`` config
            (``up --watch`` / ``--no-watch`` / neither).
        exclude: Returns the directories whose changes never count (the home, the
            logs), read when a watcher starts.
        source: Where changes come from (:func:`file_changes`; tests inject theirs).
        note: Writes a line into an app's log.
    """

    def __init__(
        self,
        apps: Callable[[], Mapping[str, AppConfig]],
        on_change: OnChange,
        *,
        running: Callable[[str], bool] = lambda app: True,
        enabled: bool | None = None,
        exclude: Callable[[], Iterable[Path]] = tuple,
        source: ChangeSource = file_changes,
        note: Callable[[str, str], None] = lambda app, text: None,
    ) -> None:
        self._apps = apps
        self._on_change = on_change
        self._running_app = running
        self._enabled = enabled
        self._overrides: dict[str, bool] = {}
        self._exclude = exclude
        self._source = source
        self._note = note
        self._nursery: trio.Nursery | None = None
        self._tasks: dict[str, _Running] = {}
        self._records: dict[str, WatchRecord] = {}
        self._stopped = False

    # ------------------------------------------------------------------ choice

    def wanted(self, app: AppConfig) -> WatchConfig | None:
        """The watch settings ``app`` runs with now, or ``None`` if it is not watched."""
        on = self._overrides.get(app.name, self._enabled)
        if on is None:
            return app.watch
        if not on:
            return None
        return app.watch or WatchConfig(directory=app.cwd)

    def _names(self, app: str | None) -> list[str]:
        apps = self._apps()
        if app is None:
            return list(apps)
        if app not in apps:
            raise AppNotFound(app, known=list(apps))
        return [app]

    def turn_on(self, app: str | None = None) -> list[str]:
        """Watch ``app`` (its ``watch`` settings, or its ``cwd``), or every app.

        Returns:
            The apps watched now that were not before.
        """
        return self._switch(app, on=True)

    def turn_off(self, app: str | None = None) -> list[str]:
        """Stop watching ``app``, or every app. Returns the apps no longer watched."""
        return self._switch(app, on=False)

    def _switch(self, app: str | None, *, on: bool) -> list[str]:
        names = self._names(app)
        before = set(self._tasks)
        if app is None:
            self._enabled = on
            self._overrides.clear()
        else:
            self._overrides[app] = on
        self.refresh()
        after = set(self._tasks)
        changed = after - before if on else before - after
        return [name for name in names if name in changed]

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the watchers until cancelled or :meth:`stop` (every watcher thread has
        ended when it returns)."""
        async with trio.open_nursery() as nursery:
            if self._stopped:
                return
            self._nursery = nursery
            try:
                self.refresh()
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self._tasks.clear()
                for name, record in self._records.items():
                    if record.watching:
                        self._records[name] = attrs.evolve(record, watching=False)

    def stop(self) -> None:
        """Stop every watcher for good (the daemon is shutting down: no reload may
        start now)."""
        self._stopped = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def refresh(self) -> None:
        """Start, stop or restart watchers to match the apps and the switches
        (after ``watch on|off`` and after a config reload)."""
        apps = self._apps()
        for name in [n for n in self._records if n not in apps]:
            del self._records[name]
        for name in [n for n in self._overrides if n not in apps]:
            del self._overrides[name]
        for name, running in list(self._tasks.items()):
            config = apps.get(name)
            if config is None or self.wanted(config) != running.config:
                running.scope.cancel()
                del self._tasks[name]
                self._set(name, watching=False, directory=None, debounce=None)
        if self._nursery is None:
            return
        for name, app in apps.items():
            watch = self.wanted(app)
            if watch is None or name in self._tasks:
                continue
            running = self._tasks[name] = _Running(watch)
            self._set(
                name,
                watching=True,
                directory=str(watch.directory),
                debounce=watch.debounce,
                watch_error=None,
            )
            self._nursery.start_soon(self._watch, name, running)

    def _set(self, app: str, **changes: Any) -> None:
        record = self._records.get(app) or WatchRecord(app=app)
        self._records[app] = attrs.evolve(record, **changes)

    async def _watch(self, app: str, running: _Running) -> None:
        config = running.config
        keep = IgnoreFilter(config.directory, config.ignore, self._exclude())
        with running.scope:
            log.info("watch_started", app=app, directory=str(config.directory))
            try:
                send, receive = trio.open_memory_channel[set[str]](BATCH_BUFFER)
                async with trio.open_nursery() as nursery, send, receive:
                    nursery.start_soon(self._feed, config.directory, keep, send)
                    await debounced(
                        receive, config.debounce, lambda paths: self._changed(app, paths)
                    )
            except Exception as exc:  # the watcher stops; the daemon and the app do not
                reason = _reason(exc)
                log.error("watch_failed", app=app, error=reason)
                self._note(app, f"watch: stopped watching {config.directory}: {reason}")
                if self._tasks.get(app) is running:
                    del self._tasks[app]
                    self._set(app, watching=False, watch_error=reason)
            finally:
                log.info("watch_stopped", app=app)

    async def _feed(
        self, directory: Path, keep: Callable[[str], bool], send: trio.MemorySendChannel[set[str]]
    ) -> None:
        async with send:
            await self._source(directory, keep, send)

    async def _changed(self, app: str, paths: set[str]) -> None:
        shown = tuple(sorted(paths)[:SHOWN_PATHS])
        self._set(
            app, changes=self._get(app).changes + 1, last_change=time.time(), last_paths=shown
        )
        what = _describe(paths)
        if not self._running_app(app):
            self._set(app, last_result=Outcome.SKIPPED, last_error=None)
            self._note(app, f"watch: {what} changed; not running, so not reloaded")
            return
        self._note(app, f"watch: {what} changed; reloading")
        log.info("watch_reload", app=app, paths=list(shown), count=len(paths))
        try:
            await self._on_change(app, paths)
        except Exception as exc:  # the old processes keep serving; say why
            reason = _reason(exc)
            log.warning("watch_reload_failed", app=app, error=reason)
            self._note(app, f"watch: reload failed, the running processes were kept: {reason}")
            failures = self._get(app).failures + 1
            self._set(app, failures=failures, last_result=Outcome.FAILED, last_error=reason)
        else:
            reloads = self._get(app).reloads + 1
            self._set(app, reloads=reloads, last_result=Outcome.RELOADED, last_error=None)

    def _get(self, app: str) -> WatchRecord:
        return self._records.get(app) or WatchRecord(app=app)

    # ------------------------------------------------------------------ views

    def status(self, app: str | None = None) -> list[dict[str, Any]]:
        """:class:`WatchRecord` of every app (or of ``app``), in config order, as data."""
        return [self._get(name).to_wire() for name in self._names(app)]

    def watched(self) -> Iterator[str]:
        """The apps watched now."""
        return iter(list(self._tasks))


MAX_REASON = 2000
"""Characters of a failure's message kept for ``watch status``."""


def _reason(exc: BaseException) -> str:
    exc = _single(exc)
    # A daemon error's own message, without the " (CODE)" its str() adds.
    message = getattr(exc, "message", None)
    text = (message if isinstance(message, str) else str(exc)).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return text[:MAX_REASON]


def _describe(paths: set[str]) -> str:
    names = sorted(os.path.basename(p) or p for p in paths)
    if len(names) == 1:
        return names[0]
    shown = ", ".join(names[:3])
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return f"{len(names)} files ({shown}{more})"


# ---------------------------------------------------------------------- module workers

IMPORTED_FILES_TIMEOUT = 5.0
"""Seconds a worker has to say which files it imported."""

Connect = Callable[[str], contextlib.AbstractAsyncContextManager["WorkerClient"]]


def _resolved(paths: Iterable[str], more: Iterable[Path]) -> tuple[set[str], list[str]]:
    return {os.path.realpath(p) for p in paths}, [os.path.realpath(p) for p in more]


async def importers(
    record: AppRecord, paths: set[str], *, connect: Connect | None = None
) -> set[int] | None:
    """The instances of a module-worker app to reload for a change of ``paths``:
    those whose worker imported one of them (``worker.imported_files``).

    ``None`` means the whole app: the bootstrap changed, a changed file was
    imported by no worker (data, a template, a module not imported yet: it may
    matter at the next start of any of them), or a running worker could not
    say what it imported.

    Args:
        record: The app (its processes carry their worker's socket).
        paths: The changed files (absolute).
        connect: Opens a client of a worker's socket (tests inject theirs).
    """
    bootstrap = record.config.bootstrap
    if bootstrap is None:
        return None
    # The workers report resolved paths (symbolic links followed); lstat calls.
    changed, [main] = await trio.to_thread.run_sync(_resolved, paths, [bootstrap])
    if main in changed:
        return None
    if connect is None:
        from ._workers import open_worker_client

        connect = open_worker_client
    affected: set[int] = set()
    covered: set[str] = set()
    for index, process in sorted(record.processes.items()):
        worker = process.worker
        if worker is None or worker.socket is None or process.pid is None:
            continue  # not running now: its next start imports the new files anyway
        try:
            with trio.fail_after(IMPORTED_FILES_TIMEOUT):
                async with connect(worker.socket) as client:
                    files = set(await client.builtin("imported_files"))
        except (OSError, trio.TooSlowError, OmnitronError) as exc:
            log.warning("watch_imports_unknown", app=record.name, instance=index, error=str(exc))
            return None
        hit = changed & files
        covered |= hit
        if hit:
            affected.add(index)
    if covered != changed:
        return None
    return affected


def register_watch_methods(dispatcher: Dispatcher, watching: Watching) -> None:
    """``daemon.watch_on`` / ``daemon.watch_off`` (operator), ``daemon.watch_status``
    (viewer)."""

    async def watch_on(call: Call, *, app: Name | None = None) -> dict[str, Any]:
        """Reload an app (or every app) when its files change: its ``watch`` settings,
        or its ``cwd``."""
        await trio.lowlevel.checkpoint()
        return {"changed": watching.turn_on(app), "apps": watching.status(app)}

    async def watch_off(call: Call, *, app: Name | None = None) -> dict[str, Any]:
        """Stop watching an app's files (or every app's)."""
        await trio.lowlevel.checkpoint()
        return {"changed": watching.turn_off(app), "apps": watching.status(app)}

    async def watch_status(call: Call, *, app: Name | None = None) -> dict[str, Any]:
        """What is watched, and the last change and reload of each app."""
        await trio.lowlevel.checkpoint()
        return {"apps": watching.status(app)}

    methods: dict[str, tuple[Handler, Role]] = {
        "daemon.watch_on": (watch_on, Role.OPERATOR),
        "daemon.watch_off": (watch_off, Role.OPERATOR),
        "daemon.watch_status": (watch_status, Role.VIEWER),
    }
    for method, (handler, role) in methods.items():
        dispatcher.register(method, handler, role=role)
