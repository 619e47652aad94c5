"""Module-worker apps in the daemon: describing bootstraps and routing ``exec`` calls.

:func:`describe_app` runs ``python -m omnitron.worker describe`` with the app's
own interpreter (each time the app is started: the file may have changed) and
returns its :class:`~omnitron.config._bootstrap.WorkerSystem`.

:class:`Router` carries ``daemon.exec`` to a worker: it finds the process entry
that serves the service (asking the workers, ``worker.services``), picks the
next *online* instance of that entry round-robin (starting, stopping, errored
and draining instances are skipped), and calls it over the worker's Unix socket
with a per-call timeout. One pipelined connection per live worker is kept open
(:class:`~omnitron.daemon._worker_link.WorkerLink`); a worker that dies mid-call
fails that call at once (``WORKER_EXITED``), and the records no longer offer it
to the next call.

The daemon only forwards: the worker's result reaches the caller as the msgpack
bytes the worker encoded (:attr:`ExecResult.raw`, spliced into the reply by
:meth:`ExecResult.to_wire`), never decoded and encoded again on the way.

:meth:`Router.start` is the same call without a task waiting for it: when the
serving process is known and the chosen worker's link is open, it sends the call
and returns; the link's reader hands the outcome to a callback. ``daemon.exec``
runs that way (:func:`register_exec`); whatever needs to wait (the first call to
a worker opens its link and asks its services, a worker that turns the call
away passes it on) goes through :meth:`Router.call` in a task.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

import attrs
import msgpack
import outcome
import trio

from .._log import get_logger
from ..config import AppConfig, Ecosystem
from ..config._bootstrap import (
    DESCRIBE_TIMEOUT,
    BootstrapInvalid,
    WorkerSlot,
    WorkerSystem,
    describe_environ,
    interpreter,
    read_answer,
)
from ..config._errors import ConfigIssue
from ..rpc import (
    Call,
    Dispatcher,
    Encoded,
    Forbidden,
    Len,
    MethodNotFound,
    Name,
    Range,
    RemoteError,
    RemoteTimeout,
    Role,
)
from ..rpc._dispatch import DECLINE, DEFER, Done
from ..state import AppStatus
from ._errors import AppNotFound, DaemonBusy, DescribeError, RequestRefused, WorkerCallError
from ._records import AppRecord

if TYPE_CHECKING:
    from ._worker_link import WorkerLink

__all__ = [
    "EXEC_ERRORS",
    "EXEC_TIMEOUT",
    "MAX_EXEC_TIMEOUT",
    "AppError",
    "CallArgs",
    "CallKwargs",
    "CallName",
    "CallTimeout",
    "ExecArgsInvalid",
    "ExecResult",
    "Router",
    "WorkerExited",
    "build_worker_dispatcher",
    "describe_app",
    "describe_ecosystem",
    "register_exec",
]

log = get_logger("omnitron.exec")

EXEC_TIMEOUT = 30.0
"""Seconds an ``exec`` call may take when the caller gives no ``timeout``."""
MAX_EXEC_TIMEOUT = 3600.0
"""The longest ``timeout`` an ``exec`` call may ask for."""
CONNECT_TIMEOUT = 5.0
"""Seconds to connect to a worker's socket and learn its services."""
REPLY_GRACE = 1.0
"""How much longer than its timeout the daemon waits for a worker's own ``TIMEOUT``."""
CHECKED_NAMES_MAX = 4096
"""Well-formed ``(service, method)`` pairs remembered (so not matched again per call)."""
DRAIN_TIMEOUT = 30.0
"""Default seconds :meth:`Router.drain` waits for the calls in flight on an instance."""

# A service or method a caller may name: an identifier not starting with "_" (no
# private names, no dunders, no dotted paths: nothing is looked up by traversal).
_PUBLIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_RESERVED_SERVICES = frozenset({"worker"})  # the workers' own built-ins (hello, health...)


class AppError(RemoteError):
    """The method raised: ``data`` has the exception's ``type`` and the worker's
    ``traceback`` text."""

    code = "APP_ERROR"


class ExecArgsInvalid(RemoteError, ValueError):
    """The arguments do not fit the method's signature (checked by the worker)."""

    code = "INVALID_ARGS"


class WorkerExited(RemoteError):
    """The worker serving the call exited before it answered."""

    code = "WORKER_EXITED"


EXEC_ERRORS = (AppError, ExecArgsInvalid, WorkerExited)
"""The domain error codes of ``daemon.exec`` (the others are the standard
``METHOD_NOT_FOUND`` and ``TIMEOUT``)."""

# The params of daemon.exec and router.call (names are checked by the router).
CallName = Annotated[str, Len(max=128)]
CallArgs = Annotated[list[object], Len(max=256)]
CallKwargs = Annotated[dict[str, object], Len(max=256)]
CallTimeout = Annotated[float, Range(gt=0, le=MAX_EXEC_TIMEOUT)]

_BY_CODE: dict[str, type[RemoteError]] = {
    "METHOD_NOT_FOUND": MethodNotFound,
    "TIMEOUT": RemoteTimeout,
    "APP_ERROR": AppError,
    "INVALID_ARGS": ExecArgsInvalid,
    "WORKER_EXITED": WorkerExited,
}


# ---------------------------------------------------------------------- describing


async def describe_app(
    app: AppConfig, index: int, *, within: float = DESCRIBE_TIMEOUT
) -> WorkerSystem:
    """Describe ``app``'s bootstrap with its interpreter (``index``: its place in
    ``[[apps]]``, for the path of problems).

    Raises:
        BootstrapInvalid: The bootstrap is invalid, cannot be imported, has a topology
            cycle, or the interpreter's omnitron speaks another protocol.

    Cancellation: the describing process is killed.
    """
    from ._workers import describe_bootstrap  # module-worker apps only (see _errors)

    assert app.bootstrap is not None
    try:
        answer = await describe_bootstrap(
            interpreter(app), app.bootstrap, within, env=describe_environ(app)
        )
    except DescribeError as exc:
        where = "python" if app.python else "bootstrap"
        issue = ConfigIssue(file=app.bootstrap, path=f"apps[{index}].{where}", message=str(exc))
        raise BootstrapInvalid([issue]) from None
    return read_answer(app, index, answer)


async def describe_ecosystem(
    ecosystem: Ecosystem,
) -> tuple[dict[str, WorkerSystem], list[ConfigIssue], list[ConfigIssue]]:
    """Describe every bootstrap app of ``ecosystem``, one after the other.

    Returns:
        ``(systems, problems, mismatches)``: the systems described; every problem of
        the bootstraps (config errors); the apps whose worker speaks another
        protocol (these fail to start, the others run).
    """
    systems: dict[str, WorkerSystem] = {}
    problems: list[ConfigIssue] = []
    mismatches: list[ConfigIssue] = []
    for index, app in enumerate(ecosystem.apps):
        if app.bootstrap is None:
            continue
        try:
            systems[app.name] = await describe_app(app, index)
        except BootstrapInvalid as exc:
            (mismatches if exc.identity else problems).extend(exc.issues)
    return systems, problems, mismatches


# ---------------------------------------------------------------------- routing


@attrs.frozen(kw_only=True)
class ExecResult:
    """What an ``exec`` call returned, and which worker answered it.

    Attributes:
        raw: The result as the worker encoded it (one msgpack value, checked by
            the worker against the frame limits with room for this envelope).
    """

    raw: bytes
    process: str
    instance: int
    pid: int

    @property
    def result(self) -> Any:
        """The result, decoded (under the control plane's limits)."""
        from ._worker_link import decode_value

        return decode_value(self.raw)

    def to_wire(self) -> Encoded:
        """``{"result", "process", "instance", "pid"}``, the result spliced in as it came."""
        return Encoded(
            b"\x84\xa6result" + self.raw + _answered_by(self.process, self.instance, self.pid)
        )


@functools.lru_cache(maxsize=4096)
def _answered_by(process: str, instance: int, pid: int) -> bytes:
    """The packed ``process``, ``instance`` and ``pid`` entries of an ``exec`` reply."""
    data: bytes = msgpack.packb({"process": process, "instance": instance, "pid": pid})
    return data[1:]  # the entries without the map's header


_Key = tuple[str, int, int]
"""``(app, instance, pid)``: one process of an app (a reload gives an instance a new pid)."""

RETRY_CODES = frozenset({"WORKER_UNREACHABLE", "UNAVAILABLE"})
"""Worker errors that mean the call never ran there: it is offered to the next worker."""


class Router:
    """Routes ``exec`` calls to the workers of module-worker apps.

    Args:
        apps: Returns the live records (the orchestrator's ``apps``): the only
            source of which instance is online, its pid and its socket.
        systems: The described bootstrap of each module-worker app.
    """

    def __init__(
        self,
        apps: Callable[[], Mapping[str, AppRecord]],
        systems: Mapping[str, WorkerSystem],
    ) -> None:
        self._apps = apps
        self._systems = systems
        self._nursery: trio.Nursery | None = None
        self._links: dict[_Key, WorkerLink] = {}
        self._opening: dict[_Key, trio.Lock] = {}
        self._turn: dict[tuple[str, str], int] = {}  # the next turn of the round-robin
        self._inflight: dict[_Key, int] = {}
        self._checked: set[tuple[str, str]] = set()  # (service, method) names found public
        self._idle: dict[_Key, trio.Event] = {}
        self._draining: set[_Key] = set()
        self._drains = 0  # changes each time a process starts draining
        # Per-call work done once per record (records are immutable: a new one is a change).
        self._candidates: dict[tuple[str, str], tuple[AppRecord, int, list[Any]]] = {}
        self._seen: dict[str, AppRecord] = {}
        self._served: dict[tuple[str, str], tuple[WorkerSystem, str]] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the connections to the workers until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -------------------------------------------------------------- choosing

    def _online(self, record: AppRecord, process: str) -> list[tuple[int, int, WorkerSlot]]:
        """``(instance, pid, worker)`` of each online, not draining worker of ``process``
        (computed once per record and drain: records are immutable)."""
        key = (record.name, process)
        cached = self._candidates.get(key)
        if cached is not None and cached[0] is record and cached[1] == self._drains:
            return cached[2]
        online = [
            (p.instance, p.pid, p.worker)
            for p in sorted(record.processes.values(), key=lambda p: p.instance)
            if p.worker is not None
            and p.worker.process == process
            and p.status is AppStatus.ONLINE
            and p.pid is not None
            and (record.name, p.instance, p.pid) not in self._draining
        ]
        self._candidates[key] = (record, self._drains, online)
        return online

    def _forget_gone(self, record: AppRecord) -> None:
        """Close the connections to processes of ``record`` that are not in it any more."""
        if self._seen.get(record.name) is record:
            return
        self._seen[record.name] = record
        live = {(record.name, p.instance, p.pid) for p in record.processes.values() if p.pid}
        gone = [k for k in self._links if k[0] == record.name and k not in live]
        for key in gone:
            # A replaced worker is drained before it is stopped: its calls in flight
            # finish, and it closes the connection itself when it exits. Only idle
            # connections are closed here; a busy one goes at a later change.
            if not self._links[key].in_flight:
                self._links.pop(key).close()
        if gone:  # replaced processes may serve other services
            self._served = {k: v for k, v in self._served.items() if k[0] != record.name}
        self._draining = {k for k in self._draining if k[0] != record.name or k in live}

    async def _link(self, app: str, index: int, pid: int, worker: WorkerSlot) -> WorkerLink:
        """The open connection to that process (opened on first use).

        Raises:
            WorkerCallError: ``WORKER_UNREACHABLE``: nothing answered;
                ``PROTOCOL_MISMATCH``: the worker speaks another protocol.
        """
        key = (app, index, pid)
        link = self._links.get(key)
        if link is not None and not link.closed:
            return link
        lock = self._opening.setdefault(key, trio.Lock())
        async with lock:
            link = self._links.get(key)
            if link is None or link.closed:
                if self._nursery is None:
                    raise DaemonBusy("the router is not running yet")
                assert worker.socket is not None
                from ._worker_link import open_link  # the first link of this daemon loads it

                link = await open_link(worker.socket, self._nursery, timeout=CONNECT_TIMEOUT)
                self._links[key] = link
            self._opening.pop(key, None)
            return link

    async def _serving(self, record: AppRecord, system: WorkerSystem, service: str) -> str:
        """The process entry of ``record``'s app that serves ``service``, from the
        services its online workers report (each asked once per process)."""
        cached = self._served.get((record.name, service))
        if cached is not None and cached[0] is system:
            return cached[1]
        known: dict[str, frozenset[str]] = {}
        for process in system.processes:
            for index, pid, worker in self._online(record, process.name):
                link = self._links.get((record.name, index, pid))
                if link is None:
                    try:
                        link = await self._link(record.name, index, pid, worker)
                    except WorkerCallError as exc:
                        log.warning(
                            "worker_unreachable",
                            app=record.name,
                            instance=index,
                            error=exc.message,
                        )
                        continue
                known[process.name] = link.services
                break
            if service in known.get(process.name, ()):
                self._served[(record.name, service)] = (system, process.name)
                return process.name
        if not known:
            raise DaemonBusy(f"app {record.name!r} has no online worker; try again")
        offered = sorted({s for services in known.values() for s in services})
        raise MethodNotFound(
            f"app {record.name!r} has no service {service!r} "
            f"(services of its online workers: {', '.join(offered) or 'none'})"
        )

    # -------------------------------------------------------------- calling

    async def call(
        self,
        app: str,
        service: str,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        within: float = EXEC_TIMEOUT,
    ) -> ExecResult:
        """Call ``service.method(*args, **kwargs)`` on the next online worker of ``app``.

        Raises:
            AppNotFound: No such app.
            RequestRefused: A classic app (nothing to call), or a bad timeout.
            MethodNotFound: No such public method or service (names starting with
                ``_`` or holding a dot are never looked up).
            DaemonBusy: No online worker serves the service.
            AppError, ExecArgsInvalid, WorkerExited, RemoteTimeout: From the call.
        """
        records = self._apps()
        record = records.get(app)
        if record is None:
            raise AppNotFound(app, known=list(records))
        system = self._check(record, service, method, within)
        process = await self._serving(record, system, service)
        return await self._call_process(app, process, service, method, args, kwargs, within)

    async def call_from(
        self,
        pid: int | None,
        service: str,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        within: float = EXEC_TIMEOUT,
    ) -> ExecResult:
        """A call by the worker ``pid`` to a service of its own app, allowed only
        when its process entry names the serving process in its ``access``.

        Raises:
            Forbidden: ``pid`` is no worker, or its process does not access the
                process that serves ``service``.
            And what :meth:`call` raises.
        """
        caller = self._worker_of(pid)
        if caller is None:
            raise Forbidden("router.call is for the workers of module-worker apps only")
        record, slot = caller
        system = self._check(record, service, method, within)
        process = await self._serving(record, system, service)
        allowed = system.process(slot.process).access
        if process not in allowed:
            raise Forbidden(
                f"process {slot.process!r} of app {record.name!r} does not access process "
                f"{process!r}, which serves {service!r}; add it to its topology access "
                f"(now: {', '.join(allowed) or 'none'})"
            )
        return await self._call_process(record.name, process, service, method, args, kwargs, within)

    def _worker_of(self, pid: int | None) -> tuple[AppRecord, WorkerSlot] | None:
        if pid is None:
            return None
        for record in self._apps().values():
            for process in record.processes.values():
                if process.pid == pid and process.worker is not None:
                    return record, process.worker
        return None

    def _check(self, record: AppRecord, service: str, method: str, within: float) -> WorkerSystem:
        """The system of ``record``'s app, once the call is known to be acceptable."""
        app = record.name
        if record.config.bootstrap is None:
            raise RequestRefused(
                f"app {app!r} is a classic app; exec calls module-worker apps (bootstrap)"
            )
        if not 0 < within <= MAX_EXEC_TIMEOUT:
            raise RequestRefused(
                f"timeout must be within (0, {MAX_EXEC_TIMEOUT:g}] seconds, got {within:g}"
            )
        if (service, method) not in self._checked:
            for what, name in (("service", service), ("method", method)):
                if not _PUBLIC_NAME.fullmatch(name) or (
                    what == "service" and name in _RESERVED_SERVICES
                ):
                    raise MethodNotFound(f"no public {what} named {name[:80]!r} in app {app!r}")
            if len(self._checked) >= CHECKED_NAMES_MAX:
                self._checked.clear()
            self._checked.add((service, method))
        system = self._systems.get(app)
        if system is None:
            raise DaemonBusy(f"app {app!r} is not running (its bootstrap has not been described)")
        self._forget_gone(record)
        return system

    async def _call_process(
        self,
        app: str,
        process: str,
        service: str,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        within: float,
    ) -> ExecResult:
        """Call the next online worker of ``process``; one that turns out to be
        unreachable or stopping (the call did not run there) passes it on."""
        candidates = self._online(self._apps()[app], process)
        if not candidates:
            raise DaemonBusy(f"app {app!r}: no online worker of process {process!r}; try again")
        start = self._turn.get((app, process), 0)
        self._turn[(app, process)] = start + 1
        last: WorkerCallError | None = None
        for offset in range(len(candidates)):
            index, pid, worker = candidates[(start + offset) % len(candidates)]
            if (app, index, pid) in self._draining:
                continue
            try:
                link = await self._link(app, index, pid, worker)
                raw = await self._send(
                    (app, index, pid), link, service, method, args, kwargs, within
                )
            except WorkerCallError as exc:
                if exc.code not in RETRY_CODES:
                    raise _remote(exc, index, pid) from None
                log.info("worker_passed_on", app=app, instance=index, pid=pid, code=exc.code)
                last = exc
                continue
            return ExecResult(raw=raw, process=process, instance=index, pid=pid)
        assert last is not None or not candidates
        raise DaemonBusy(
            f"app {app!r}: no worker of process {process!r} took the call"
            + (f" ({last.message})" if last is not None else "")
            + "; try again"
        )

    async def _send(
        self,
        key: _Key,
        link: WorkerLink,
        service: str,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        within: float,
    ) -> bytes:
        self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            return await link.call_raw(
                service, method, args, kwargs, timeout=within, grace=REPLY_GRACE
            )
        except WorkerCallError as exc:
            if exc.code == "WORKER_EXITED":
                self._links.pop(key, link).close()
            raise
        finally:
            self._ended(key)

    def start(
        self,
        app: str,
        service: str,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        within: float,
        done: Callable[[ExecResult | RemoteError | None], None],
    ) -> bool:
        """Send the call of :meth:`call` without waiting, if nothing needs waiting for.

        Returns ``False`` (nothing was done, no turn taken) when it would have to
        wait: the serving process is not known yet, or the next worker's link is
        not open; then use :meth:`call`. Otherwise ``done`` gets, later and exactly
        once, the :class:`ExecResult`, the error :meth:`call` would raise, or
        ``None``: the worker turned the call away without running it, use
        :meth:`call` (it offers the call to the next worker).

        Raises:
            What :meth:`call` raises before calling a worker.
        """
        records = self._apps()
        record = records.get(app)
        if record is None:
            raise AppNotFound(app, known=list(records))
        system = self._check(record, service, method, within)
        served = self._served.get((app, service))
        if served is None or served[0] is not system:
            return False
        process = served[1]
        candidates = self._online(record, process)
        if not candidates:
            raise DaemonBusy(f"app {app!r}: no online worker of process {process!r}; try again")
        turn = self._turn.get((app, process), 0)
        index, pid, _ = candidates[turn % len(candidates)]
        key = (app, index, pid)
        link = self._links.get(key)
        if link is None or link.closed:
            return False

        def finished(result: outcome.Outcome[bytes]) -> None:
            self._ended(key)
            try:
                raw = result.unwrap()
            except WorkerCallError as exc:
                done(self._failed(key, link, exc, index, pid))
                return
            done(ExecResult(raw=raw, process=process, instance=index, pid=pid))

        self._turn[(app, process)] = turn + 1
        self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            link.start_raw(
                service, method, args, kwargs, timeout=within, grace=REPLY_GRACE, done=finished
            )
        except WorkerCallError as exc:
            self._ended(key)
            error = self._failed(key, link, exc, index, pid)
            if error is None:
                return False
            raise error from None
        return True

    def _failed(
        self, key: _Key, link: WorkerLink, exc: WorkerCallError, index: int, pid: int
    ) -> RemoteError | None:
        """The error of a call started by :meth:`start` (``None``: pass it on)."""
        if exc.code == "WORKER_EXITED":
            self._links.pop(key, link).close()
        if exc.code in RETRY_CODES:
            log.info("worker_passed_on", app=key[0], instance=index, pid=pid, code=exc.code)
            return None
        return _remote(exc, index, pid)

    def _ended(self, key: _Key) -> None:
        self._inflight[key] -= 1
        if self._inflight[key] <= 0:
            del self._inflight[key]
            event = self._idle.pop(key, None)
            if event is not None:
                event.set()

    # -------------------------------------------------------------- draining

    async def drain(self, app: str, index: int, pid: int, *, within: float = DRAIN_TIMEOUT) -> bool:
        """Send no more calls to process ``pid`` (instance ``index`` of ``app``) and
        wait, at most ``within`` seconds, until its calls in flight are answered.

        Call it before stopping a process that another one replaced: the calls it
        is running end normally, and no new one reaches it.

        Returns:
            Whether its calls in flight ended in time.
        """
        key = (app, index, pid)
        self._draining.add(key)
        self._drains += 1
        with trio.move_on_after(within):
            while self._inflight.get(key):
                await self._idle.setdefault(key, trio.Event()).wait()
            return True
        return False

    def in_flight(self, app: str) -> int:
        """How many calls to ``app``'s workers are waiting for their answer."""
        return sum(count for (name, _, _), count in self._inflight.items() if name == app)


def _remote(exc: WorkerCallError, index: int, pid: int) -> RemoteError:
    """The control plane's error for a worker's ``exc`` (type and traceback in ``data``)."""
    cls = _BY_CODE.get(exc.code, AppError)
    data = {"type": exc.type, "traceback": exc.traceback, "instance": index, "pid": pid}
    return cls(exc.message, data={k: v for k, v in data.items() if v is not None})


def register_exec(dispatcher: Dispatcher, router: Callable[[], Router]) -> None:
    """Register ``daemon.exec`` (role operator) on ``dispatcher``, routed by ``router()``.

    Its inline handler hands the call to :meth:`Router.start`, answered from the
    worker link's reader; it declines (the ``async`` handler runs in a task,
    through :meth:`Router.call`) whenever that would have to wait.
    """

    async def exec_method(
        call: Call,
        *,
        app: Name,
        service: CallName,
        method: CallName,
        args: CallArgs = [],  # noqa: B006 - never mutated
        kwargs: CallKwargs = {},  # noqa: B006 - never mutated
        timeout: CallTimeout = EXEC_TIMEOUT,  # noqa: ASYNC109 - the documented param
    ) -> Encoded:
        """Call a public method of a module-worker app's service (round-robin)."""
        done = await router().call(app, service, method, args, kwargs, within=timeout)
        return done.to_wire()

    def inline(
        call: Call,
        done: Done,
        *,
        app: str,
        service: str,
        method: str,
        args: list[Any] = [],  # noqa: B006 - never mutated
        kwargs: dict[str, Any] = {},  # noqa: B006 - never mutated
        timeout: float = EXEC_TIMEOUT,
    ) -> object:
        def finished(result: ExecResult | RemoteError | None) -> None:
            if result is None:
                done(DECLINE)
            elif isinstance(result, ExecResult):
                done(result.to_wire())
            else:
                done(result)

        started = router().start(app, service, method, args, kwargs, within=timeout, done=finished)
        return DEFER if started else DECLINE

    dispatcher.register("daemon.exec", exec_method, role=Role.OPERATOR)
    dispatcher.set_inline("daemon.exec", inline)


# ---------------------------------------------------------------------- the workers' socket


def build_worker_dispatcher(router: Router) -> Dispatcher:
    """The methods of the workers' socket: ``router.call`` only.

    The caller is identified by its pid (``SO_PEERCRED``): only a worker of a
    module-worker app may call, and only the services of the processes its own
    process entry lists in ``access``.
    """
    dispatcher = Dispatcher(error_types=EXEC_ERRORS)

    async def call(
        call: Call,
        *,
        service: CallName,
        method: CallName,
        args: CallArgs = [],  # noqa: B006 - never mutated
        kwargs: CallKwargs = {},  # noqa: B006 - never mutated
        timeout: CallTimeout = EXEC_TIMEOUT,  # noqa: ASYNC109 - the documented param
    ) -> Encoded:
        """Call a public method of a service this worker's process accesses."""
        done = await router.call_from(call.peer.pid, service, method, args, kwargs, within=timeout)
        return done.to_wire()

    dispatcher.register("router.call", call, role=Role.ADMIN)
    return dispatcher
