"""``python -m omnitron.worker serve BOOTSTRAP PROCESS``: one instance of one process.

Start-up, in order: load the bootstrap; system then process ``before_start``
hooks; import the process's module (the bootstrap's directory first on
``sys.path``); instantiate its ``@service`` classes; run the ``@on_start`` steps;
listen with msgpack-rpc on ``$OMNITRON_WORKER_SOCKET`` (mode 0600, in a 0700
directory, same-uid peers only); process then system ``after_start`` hooks; then
``READY=1`` to ``$NOTIFY_SOCKET`` when it is set.

Shutdown, on SIGTERM or SIGINT, within ``$OMNITRON_STOP_TIMEOUT`` seconds
(default 10): the socket file is removed (no new connections) and new calls get
``UNAVAILABLE``; system then process ``before_stop`` hooks; in-flight calls may
finish for up to half the budget, then are cancelled; the ``@on_stop`` steps;
process then system ``after_stop`` hooks; exit 0. A step that fails is logged to
stderr and the next runs; one still running at the deadline is cancelled.

Exit codes: 0 after a stop, 1 when start-up failed (the error is on stderr), 2 for
a usage error or an invalid bootstrap.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import math
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Final

import msgpack
import trio
import trio.testing

from .. import __version__
from .._log import INFO, KeyValues, configure, get_logger
from .._system import PROTOCOL_VERSION, Hook, Hooks, Process, System
from ..daemon._systemd import notify
from ..rpc import (
    Call,
    Dispatcher,
    Encoded,
    Range,
    RemoteError,
    RemoteTimeout,
    Role,
    ServerOptions,
    Unavailable,
)
from ..rpc._unix import serve_unix
from ..rpc._wire import DEFAULT_LIMITS, RESPONSE, limit_violation
from ._api import WorkerInfo, set_current_worker
from ._bootstrap import BootstrapError, load_bootstrap
from ._discover import Discovered, PublicMethod, Step, discover

__all__ = [
    "AppError",
    "BadResult",
    "InvalidArgs",
    "SERVER_OPTIONS",
    "Worker",
    "main",
]

log = get_logger()

DEFAULT_STOP_TIMEOUT: Final = 10.0
HEALTH_CHECK_TIMEOUT: Final = 10.0
"""Seconds one health check may take before it counts as failed."""
RESPONSE_HEADROOM: Final = 128
"""Bytes around a result on its way to a caller: the response's envelope (type,
msgid, nil error) and ``daemon.exec``'s map (``process`` of up to 64 characters,
``instance``, ``pid``), which the daemon wraps around the result's bytes as they are."""
_EXEC_ENVELOPE: Final = {"process": "", "instance": 0, "pid": 0}
_SCALARS: Final = frozenset({int, float, str, bytes, bool, type(None)})
TRACEBACK_MAX: Final = 32 * 1024
"""Characters of an application traceback sent back (its tail is kept)."""

SERVER_OPTIONS: Final = ServerOptions(
    max_connections=16,
    max_inflight=256,
    hello_deadline=60.0,
    idle_timeout=None,
    limits=DEFAULT_LIMITS,
)
"""The worker's server: few peers (the daemon, tools), deep pipelining, no idle limit."""


class AppError(RemoteError):
    """The method raised; ``data`` has ``type`` and ``traceback``."""

    code = "APP_ERROR"


class InvalidArgs(RemoteError, TypeError):
    """The arguments do not fit the method's signature."""

    code = "INVALID_ARGS"


class BadResult(RemoteError):
    """The method returned something that cannot be sent (not msgpack, or too large)."""

    code = "BAD_RESULT"


def _traceback_text(exc: BaseException) -> str:
    tb = exc.__traceback__
    # Drop this module's own frame: the operator wants the application's frames.
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    if len(text) > TRACEBACK_MAX:
        text = "...\n" + text[-(TRACEBACK_MAX - 4) :]
    return text


def _app_error(where: str, exc: BaseException) -> AppError:
    return AppError(
        str(exc) or type(exc).__name__,
        data={"type": type(exc).__name__, "traceback": _traceback_text(exc), "method": where},
    )


async def _call_maybe_async(function: Callable[[], Any]) -> Any:
    result = function()
    if inspect.isawaitable(result):
        result = await result
    return result


def resolve_hook(hook: Hook) -> Callable[[], Any]:
    """The callable of a hook (``"module:function"`` is imported now).

    Raises:
        ImportError, AttributeError: The reference does not resolve.
        TypeError: It resolves to something that is not callable.
    """
    if not isinstance(hook, str):
        return hook
    module_name, _, attribute = hook.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"hook {hook!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def _hook_caller(hook: Hook) -> Callable[[], Any]:
    def call() -> Any:
        return resolve_hook(hook)()

    return call


def _health_value(result: object) -> tuple[bool, str | None]:
    if result is None or result is True:
        return True, None
    if result is False:
        return False, None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], bool):
        return result[0], None if result[1] is None else str(result[1])
    if isinstance(result, dict) and isinstance(result.get("ok"), bool):
        detail = result.get("detail")
        return result["ok"], None if detail is None else str(detail)
    return False, f"unexpected health result {type(result).__name__} (return a bool)"


class Worker:
    """One running worker: its services, its call accounting and its built-ins."""

    def __init__(self, system: System, process: Process, instance: int, bootstrap: Path) -> None:
        self.system = system
        self.process = process
        self.instance = instance
        self.bootstrap = bootstrap
        self.found: Discovered | None = None
        self.inflight = 0
        self.draining = False
        self._idle = trio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ hooks

    def hook_layers(self, *, system_first: bool) -> list[tuple[str, Hooks]]:
        layers = [(f"system {self.system.name}", self.system.hooks)]
        layers.append((f"process {self.process.name}", self.process.hooks))
        return layers if system_first else layers[::-1]

    async def run_hooks(self, name: str, *, system_first: bool, strict: bool) -> None:
        """Run the ``name`` hooks of both levels; ``strict`` re-raises a failure."""
        for where, hooks in self.hook_layers(system_first=system_first):
            hook = getattr(hooks, name)
            if hook is None:
                continue
            try:
                await _call_maybe_async(resolve_hook(hook))
            except Exception as exc:
                if strict:
                    raise
                _report(f"{where} {name} hook failed", exc)

    async def run_steps(self, steps: Iterable[Step], kind: str, *, strict: bool) -> None:
        for step in steps:
            try:
                await _call_maybe_async(step.function)
            except Exception as exc:
                if strict:
                    raise
                _report(f"{kind} {step.label} failed", exc)

    # ------------------------------------------------------------------ calls

    def _enter(self) -> None:
        if self.draining:
            raise Unavailable("the worker is stopping; call another instance")
        self.inflight += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def invoke(
        self,
        method: PublicMethod,
        args: list[object] | None,
        kwargs: dict[str, object] | None,
        timeout: float | None,  # noqa: ASYNC109 - the caller's limit, enforced here
    ) -> Encoded:
        self._enter()
        try:
            try:
                bound = method.signature.bind(*(args or ()), **(kwargs or {}))
            except TypeError as exc:
                raise InvalidArgs(
                    f"{method.full_name}{method.signature}: {exc}",
                    data={"signature": method.text()},
                ) from None
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                try:
                    result = method.function(*bound.args, **bound.kwargs)
                    if method.is_async or inspect.isawaitable(result):
                        result = await result
                except Exception as exc:
                    raise _app_error(method.full_name, exc) from None
            if scope.cancelled_caught:
                raise RemoteTimeout(
                    f"{method.full_name} did not finish within {timeout:g}s; it was cancelled"
                )
            return _encode_result(method.full_name, result)
        finally:
            self._leave()

    # ------------------------------------------------------------------ built-ins

    def hello(self) -> dict[str, object]:
        return {
            "protocol": PROTOCOL_VERSION,
            "omnitron": __version__,
            "python": sys.executable,
            "pid": os.getpid(),
            "system": self.system.name,
            "process": self.process.name,
            "instance": self.instance,
        }

    def services(self) -> dict[str, list[str]]:
        found = self.found
        assert found is not None
        listing: dict[str, list[str]] = {name: [] for name in found.services}
        for method in found.methods.values():
            listing[method.service].append(method.text())
        return listing

    def imported_files(self) -> list[str]:
        return project_files(self.bootstrap.parent, sys.modules.values())

    async def health(self) -> dict[str, object]:
        checks: list[dict[str, object]] = []
        found = self.found
        assert found is not None
        targets: list[tuple[str, Callable[[], Any]]] = []
        for where, hooks in self.hook_layers(system_first=True):
            if hooks.on_health_check is not None:
                targets.append((f"{where} on_health_check", _hook_caller(hooks.on_health_check)))
        targets.extend((step.label, step.function) for step in found.health_check)
        for label, function in targets:
            ok, detail = False, None
            with trio.move_on_after(HEALTH_CHECK_TIMEOUT) as scope:
                try:
                    ok, detail = _health_value(await _call_maybe_async(function))
                except Exception as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
            if scope.cancelled_caught:
                ok, detail = False, f"timed out after {HEALTH_CHECK_TIMEOUT:g}s"
            checks.append({"name": label, "ok": ok, "detail": detail})
        failed = [c for c in checks if not c["ok"]]
        summary = "; ".join(f"{c['name']}: {c['detail'] or 'not ok'}" for c in failed)
        return {"ok": not failed, "detail": summary or None, "checks": checks}

    # ------------------------------------------------------------------ dispatcher

    def dispatcher(self) -> Dispatcher:
        found = self.found
        assert found is not None
        dispatcher = Dispatcher(
            error_types=(AppError, InvalidArgs, BadResult),
            converter=_as_is,
            ping=False,
        )
        worker = self

        async def hello(call: Call) -> dict[str, object]:
            """Who this worker is: protocol, versions, pid, process, instance."""
            await trio.lowlevel.checkpoint()
            return worker.hello()

        async def services(call: Call) -> dict[str, list[str]]:
            """The services and their public methods with signatures."""
            await trio.lowlevel.checkpoint()
            return worker.services()

        async def imported_files(call: Call) -> list[str]:
            """Absolute paths of the project's modules this process has imported."""
            await trio.lowlevel.checkpoint()
            return worker.imported_files()

        async def health(call: Call) -> dict[str, object]:
            """The health hooks' verdict: ok, detail, and each check."""
            return await worker.health()

        dispatcher.register("worker.hello", hello, role=Role.OPERATOR)
        dispatcher.register("worker.services", services, role=Role.OPERATOR)
        dispatcher.register("worker.imported_files", imported_files, role=Role.OPERATOR)
        dispatcher.register("worker.health", health, role=Role.OPERATOR)
        for name, method in found.methods.items():
            dispatcher.register(name, _method_handler(worker, method), role=Role.OPERATOR)
        return dispatcher


def _as_is(value: object) -> object:
    return value


def _encode_result(where: str, result: object) -> Encoded:
    """The result's bytes, checked as it will reach the caller of ``daemon.exec``: one
    map deeper than a direct caller gets it (the daemon forwards it undecoded)."""
    problem = (
        None
        if type(result) in _SCALARS  # nothing in it to nest or count
        else limit_violation(
            [RESPONSE, 0, None, {"result": result, **_EXEC_ENVELOPE}], DEFAULT_LIMITS
        )
    )
    if problem is not None:
        raise BadResult(f"the result of {where} cannot be sent: it {problem}")
    try:
        encoded = Encoded(msgpack.packb(result, use_bin_type=True, datetime=False))
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadResult(
            f"the result of {where} cannot be sent ({exc}); return plain values: "
            "None, bool, int, float, str, bytes, lists and dicts of them"
        ) from None
    if len(encoded.data) > DEFAULT_LIMITS.max_frame - RESPONSE_HEADROOM:
        raise BadResult(
            f"the result of {where} cannot be sent: it is {len(encoded.data)} bytes, "
            f"more than the {DEFAULT_LIMITS.max_frame}-byte frame limit"
        )
    return encoded


Timeout = Annotated[float, Range(gt=0, le=86400)]


def _method_handler(worker: Worker, method: PublicMethod) -> Callable[..., Awaitable[Encoded]]:
    async def handler(
        call: Call,
        *,
        args: list[object] | None = None,
        kwargs: dict[str, object] | None = None,
        timeout: Timeout | None = None,  # noqa: ASYNC109 - a param of the request
    ) -> Encoded:
        return await worker.invoke(method, args, kwargs, timeout)

    handler.__doc__ = method.text()
    return handler


def project_files(root: Path, modules: Iterable[object]) -> list[str]:
    """Files of ``modules`` under ``root``, leaving out installed packages."""
    root_text = str(root.resolve()) + os.sep
    prefixes = {str(Path(p).resolve()) + os.sep for p in (sys.prefix, sys.exec_prefix)}
    files: set[str] = set()
    for module in list(modules):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str):
            continue
        path = str(Path(file).resolve())
        if not path.startswith(root_text) or any(path.startswith(p) for p in prefixes):
            continue
        if f"{os.sep}site-packages{os.sep}" in path or f"{os.sep}dist-packages{os.sep}" in path:
            continue
        files.add(path)
    return sorted(files)


def _report(what: str, exc: BaseException) -> None:
    sys.stderr.write(f"omnitron worker: {what}: {type(exc).__name__}: {exc}\n")
    sys.stderr.write(_traceback_text(exc))
    sys.stderr.flush()


def _stop_timeout() -> float:
    text = os.environ.get("OMNITRON_STOP_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_STOP_TIMEOUT
    except ValueError:
        value = DEFAULT_STOP_TIMEOUT
    return value if math.isfinite(value) and value > 0 else DEFAULT_STOP_TIMEOUT


async def run_worker(worker: Worker, socket_path: str) -> int:
    """Start, serve until SIGTERM/SIGINT, stop; the exit code."""
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

        async def watch_signals(startup: trio.CancelScope) -> None:
            async for _ in signals:
                stop.set()
                startup.cancel()  # a stop during start-up interrupts it

        async with trio.open_nursery() as outer:
            startup = trio.CancelScope()
            outer.start_soon(watch_signals, startup)
            try:
                code = await _serve_until_stopped(worker, socket_path, stop, startup)
            finally:
                outer.cancel_scope.cancel()
    return code


async def _serve_until_stopped(
    worker: Worker, socket_path: str, stop: trio.Event, startup: trio.CancelScope
) -> int:
    with startup:
        try:
            await worker.run_hooks("before_start", system_first=True, strict=True)
            module = importlib.import_module(worker.process.module)
            worker.found = discover(module)
            await worker.run_steps(worker.found.on_start, "on_start", strict=True)
        except Exception as exc:  # DiscoveryError, ImportError, a hook's or step's error
            _report(f"process {worker.process.name} failed to start", exc)
            return 1
    if stop.is_set():
        await _stop_steps(worker, trio.current_time() + _stop_timeout(), drain=False)
        return 0
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(
                functools.partial(
                    serve_unix, socket_path, worker.dispatcher(), options=SERVER_OPTIONS
                )
            )
        except Exception as exc:
            _report(f"cannot listen on {socket_path}", exc)
            await _stop_steps(worker, trio.current_time() + _stop_timeout(), drain=False)
            return 1
        try:
            await worker.run_hooks("after_start", system_first=False, strict=True)
        except Exception as exc:
            _report(f"process {worker.process.name} failed to start", exc)
            nursery.cancel_scope.cancel()
            return 1
        log.info(
            "worker_ready",
            process=worker.process.name,
            instance=worker.instance,
            services=sorted(worker.services()),
        )
        notify("READY=1")
        await stop.wait()
        deadline = trio.current_time() + _stop_timeout()
        worker.draining = True
        notify("STOPPING=1")
        # No new connections from here on; the daemon's connection stays for replies.
        with contextlib.suppress(OSError):
            os.unlink(socket_path)
        with trio.move_on_at(deadline):
            await worker.run_hooks("before_stop", system_first=True, strict=False)
        drain_until = trio.current_time() + (deadline - trio.current_time()) / 2
        with trio.move_on_at(drain_until):
            await worker.wait_idle()
            # The last replies are queued for the connections' writers: let them
            # write (every task blocked means every writer is done or waiting).
            await trio.testing.wait_all_tasks_blocked()
        if worker.inflight:
            log.warning("worker_calls_cancelled", count=worker.inflight)
        nursery.cancel_scope.cancel()
    await _stop_steps(worker, deadline, drain=True)
    return 0


async def _stop_steps(worker: Worker, deadline: float, *, drain: bool) -> None:
    with trio.move_on_at(deadline) as scope:
        if not drain:
            await worker.run_hooks("before_stop", system_first=True, strict=False)
        if worker.found is not None:
            await worker.run_steps(worker.found.on_stop, "on_stop", strict=False)
        await worker.run_hooks("after_stop", system_first=False, strict=False)
    if scope.cancelled_caught:
        sys.stderr.write("omnitron worker: the stop deadline passed; the last stop step was cut\n")


def _configure_logging() -> None:
    configure(KeyValues(sys.stderr, level=INFO))


def main(bootstrap: str, process_name: str) -> int:
    """The ``serve`` command; returns the exit code."""
    socket_path = os.environ.get("OMNITRON_WORKER_SOCKET", "")
    if not socket_path:
        sys.stderr.write("omnitron worker: OMNITRON_WORKER_SOCKET is not set\n")
        return 2
    instance_text = os.environ.get("OMNITRON_INSTANCE", "0")
    if not instance_text.isdigit():
        sys.stderr.write(f"omnitron worker: OMNITRON_INSTANCE={instance_text!r} is not a number\n")
        return 2
    try:
        system = load_bootstrap(bootstrap)
    except BootstrapError as exc:
        for where, message in exc.issues:
            sys.stderr.write(f"omnitron worker: {bootstrap}: {where}: {message}\n")
        return 2
    try:
        process = system.process(process_name)
    except KeyError as exc:
        sys.stderr.write(f"omnitron worker: {exc.args[0]}\n")
        return 2
    # The daemon passes the env of the definition; running by hand gets it too.
    for key, value in {**system.env, **process.env}.items():
        os.environ.setdefault(key, value)
    path = Path(bootstrap).absolute()
    instance = int(instance_text)
    set_current_worker(
        WorkerInfo(system=system.name, process=process.name, instance=instance, bootstrap=str(path))
    )
    _configure_logging()
    worker = Worker(system, process, instance, path)
    return trio.run(run_worker, worker, socket_path)
