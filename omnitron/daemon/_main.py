"""The daemon: small parts wired together in one ``async with`` block.

Start-up order matters and each step has one job:

1. load and validate the config (a bad config starts nothing: exit code 2);
2. take the home's pid lock (one daemon per home);
3. load ``state.json`` (intent: which apps should run, how many instances);
4. terminate what a dead predecessor left behind (found by env markers; only
   when it may have: see :func:`may_have_leftovers`);
5. start the persistence task, the log collector, the control socket;
6. launch the apps in the background (the socket answers while they start);
7. tell systemd ``READY=1`` once the apps are started.

Shutdown (SIGTERM, SIGINT, ``daemon.shutdown`` or a critical app crashing)
stops the apps dependents first, each within its stop timeout, flushes state,
removes the socket and the pid file. A second signal kills what is left at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from .._log import get_logger
from ..config import DaemonDeath, load_config
from ..rpc import ServerOptions, SocketPathTooLong, serve_unix
from ..rpc._auth import TokenAuthority
from ..rpc._planes import PlaneConfig, start_network_planes
from ..rpc._unix import check_socket_path
from ..state import Home, StateStore, load_state, open_persistence, open_pid_lock
from ._errors import DaemonBusy
from ._exec import build_worker_dispatcher
from ._heap import trim_heap
from ._leftovers import find_leftovers, may_have_leftovers, terminate_leftovers
from ._logging import configure_logging
from ._logs import LogCollector
from ._orchestrator import Orchestrator
from ._safefile import check_log_directory, open_for_append
from ._secrets import SecretStore
from ._sentinel import open_sentinel
from ._service import DaemonService, build_dispatcher
from ._systemd import notify

__all__ = ["EXIT_CONFIG", "EXIT_CRITICAL", "EXIT_WITHDRAWN", "DaemonOptions", "run_daemon"]

log = get_logger("omnitron.daemon")

EXIT_CONFIG = 2
"""Exit code of a daemon that refused to start because of its config."""
EXIT_CRITICAL = 3
"""Exit code of a daemon that shut down because a critical app crashed."""
EXIT_WITHDRAWN = 4
"""Exit code of a daemon whose launcher withdrew the launch before it touched its home."""
MIN_WRITE_INTERVAL = 0.05
"""Seconds between two writes of the state file while changes keep coming and a
reply waits for one of them."""
BACKGROUND_WRITE_INTERVAL = 1.0
"""Seconds between two writes of changes no reply waits for (processes exiting
and restarting: only ``desired`` and ``instances`` are read back at start-up, and
every change of those is flushed before its reply)."""
LAUNCH_WRITE_HOLD = 5.0
"""Seconds, at most, the state file waits while the apps start (one write at the
end instead of one per interval with every start so far: a full snapshot each);
a reply that needs its change on disk still gets it written at once."""


@attrs.frozen(kw_only=True)
class DaemonOptions:
    """How to run the daemon.

    Attributes:
        home: ``$OMNITRON_HOME``.
        config: The config file.
        stack: A ``[stacks.NAME]`` to apply.
        echo: Also print the daemon's log on stderr (foreground mode).
        subreaper: Become a child subreaper (Linux) to catch escaped grandchildren.
        reset_state: Move ``state.json`` aside and start from the config alone.
        planes: The TCP (TLS) and WebSocket planes to serve besides the Unix socket.
        watch: Hot reload: ``True`` watches every app, ``False`` none, ``None`` the
            apps with a ``watch`` config (``up --watch`` / ``--no-watch`` / neither).
    """

    home: Path
    config: Path
    stack: str | None = None
    echo: bool = False
    subreaper: bool = True
    reset_state: bool = False
    planes: PlaneConfig = attrs.field(factory=PlaneConfig)
    watch: bool | None = None
    progress: Progress | None = attrs.field(default=None, eq=False)


class Progress:
    """Start-up steps told to whoever launched the daemon (``omnitron up``), on a pipe.

    See :mod:`omnitron.daemon._entry` for the lines. ``Progress(None)`` tells nobody.
    A reader that went away (``up`` interrupted) is not an error: the daemon runs on.

    When the fd is a socket (``omnitron up`` passes one end of a socket pair), the
    launcher validates the config while this process imports and loads it, and
    confirms with a ``go`` line: :meth:`confirmed` waits for it before the daemon
    touches its home. Anything else (``up`` found the config invalid, or was
    interrupted and closed its end) withdraws the launch.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._confirm = False
        if fd is not None:
            os.set_inheritable(fd, False)  # never held open by an app: up waits for EOF
            with contextlib.suppress(OSError):
                self._confirm = stat.S_ISSOCK(os.fstat(fd).st_mode)

    @property
    def active(self) -> bool:
        return self._fd is not None

    async def confirmed(self) -> bool:
        """Whether the launcher confirmed the launch (at once when it does not confirm)."""
        fd = self._fd
        if fd is None or not self._confirm:
            return True
        said = b""
        while not said.endswith(b"\n") and len(said) < 64:
            await trio.lowlevel.wait_readable(fd)
            try:
                chunk = os.read(fd, 64 - len(said))
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                break
            said += chunk
        if said == b"go\n":
            return True
        self.close()
        return False

    def say(self, *words: object) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, ("@" + " ".join(map(str, words)) + "\n").encode())
        except OSError:
            self.close()

    def redirect_output(self, path: Path) -> None:
        """Append stdout and stderr to ``path`` from now on, and say from which offset."""
        if self._fd is None:
            return
        check_log_directory(path.parent)
        out = open_for_append(path)  # never through a planted link, as the logs (PC-15)
        try:
            offset = os.fstat(out).st_size
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(out, 1)
            os.dup2(out, 2)
        finally:
            os.close(out)
        self.say("output", offset)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class _Shutdown:
    def __init__(self) -> None:
        self.requested = trio.Event()
        self.exit_code = 0
        self.reason = "requested"

    def request(self, reason: str, exit_code: int = 0) -> None:
        if not self.requested.is_set():
            self.reason = reason
            self.exit_code = exit_code
            self.requested.set()


async def run_daemon(options: DaemonOptions) -> int:
    """Run the daemon until it is asked to stop; returns the process exit code.

    Raises:
        ConfigError: The config is invalid (nothing was started).
        DaemonAlreadyRunning: Another daemon holds this home's lock.
        HomeUnavailable, UnsafeHome, SocketPathTooLong: The home cannot be used.
    """
    options.planes.check()  # bad --tcp/--http values fail before anything starts
    ecosystem = await trio.to_thread.run_sync(load_config, options.config)
    if options.stack is not None:
        ecosystem = ecosystem.with_stack(options.stack)
    progress = options.progress or Progress(None)
    if not await progress.confirmed():
        return EXIT_WITHDRAWN  # `up` refused the config (and says why) or went away
    home = Home(options.home)
    await trio.to_thread.run_sync(home.ensure)
    home.check_socket_path()
    progress.redirect_output(home.logs_dir / "daemon.out")
    daemon_log = configure_logging(
        home.logs_dir / "daemon.log", level=ecosystem.logging.level.value, echo=options.echo
    )
    logs_dir = ecosystem.logging.directory or home.logs_dir

    async with open_pid_lock(home) as lock:
        log.info(
            "daemon_starting",
            pid=os.getpid(),
            home=str(home.path),
            config=str(options.config),
            apps=len(ecosystem.apps),
        )
        for warning in ecosystem.warnings:
            log.warning("config_warning", issue=str(warning))
        loaded = await trio.to_thread.run_sync(lambda: load_state(home, reset=options.reset_state))
        for message in loaded.warnings:
            log.warning("state_warning", message=str(message))
        if may_have_leftovers(
            lock_reclaimed=lock.reclaimed, loaded=loaded, reset=options.reset_state
        ):
            await _clean_up_after_predecessor(home)

        shutdown = _Shutdown()
        store = StateStore(
            home,
            loaded,
            min_write_interval=MIN_WRITE_INTERVAL,
            background_interval=BACKGROUND_WRITE_INTERVAL,
        )
        logs = LogCollector(
            Path(logs_dir),
            max_size=ecosystem.logging.max_size,
            max_files=ecosystem.logging.max_files,
            compress=ecosystem.logging.compress,
            rate=ecosystem.logging.rate,
            burst=ecosystem.logging.burst,
            buffer_bytes=ecosystem.logging.buffer,
        )
        # Takes OMNITRON_SECRETS_PASSPHRASE out of the environment apps inherit.
        secrets = SecretStore.from_environ(home.path)
        orchestrator = Orchestrator(
            ecosystem,
            home=home.path,
            logs=logs,
            on_change=store.mark_dirty,
            on_critical=lambda reason: shutdown.request(reason, EXIT_CRITICAL),
            subreaper=options.subreaper,
            secrets=secrets,
        )
        orchestrator.restore({app.name: app.desired for app in loaded.state.apps})
        orchestrator.restore_scale(loaded.state.apps)
        service = DaemonService(
            orchestrator,
            home=home.path,
            config_path=options.config,
            stack=options.stack,
            request_shutdown=lambda: shutdown.request("shutdown requested over RPC"),
            persistence=store,
            health=lambda: {
                "log_write_errors": logs.write_errors,
                "logs": logs.degraded or "ok",
                "daemon_log_errors": daemon_log.failures,
            },
            secrets=secrets,
            watch=options.watch,
        )
        authority = _token_authority(home.path)
        dispatcher = build_dispatcher(service, authority=authority)

        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with (
                _on_daemon_death(ecosystem.supervision.on_daemon_death, home),
                open_persistence(store, orchestrator.snapshot),
                trio.open_nursery() as nursery,
            ):
                await nursery.start(logs.run)
                await nursery.start(service.sampler.run)
                await nursery.start(
                    functools.partial(
                        serve_unix,
                        home.socket_path,
                        dispatcher,
                        # Every peer of the Unix socket is the daemon's own user: an
                        # idle one may make room for an operator's call (RX-01).
                        options=ServerOptions(evict_idle=True),
                    )
                )
                for address in await start_network_planes(
                    nursery,
                    options.planes,
                    home=home.path,
                    dispatcher=dispatcher,
                    authority=authority,
                ):
                    print(f"omnitron: {address}", file=sys.stderr, flush=True)
                nursery.start_soon(_handle_signals, signals, shutdown, service, orchestrator)
                await nursery.start(orchestrator.router.run)
                await nursery.start(_serve_workers, orchestrator)
                store.hold(LAUNCH_WRITE_HOLD)
                await nursery.start(orchestrator.run)
                await nursery.start(service.watching.run)
                progress.say("listening", os.getpid())
                nursery.start_soon(_announce_ready, orchestrator, progress, store.release)
                log.info("daemon_ready", socket=str(home.socket_path))

                await shutdown.requested.wait()
                log.info("daemon_stopping", reason=shutdown.reason)
                notify("STOPPING=1")
                service.watching.stop()  # no reload starts while the apps stop
                await orchestrator.stop_everything()
                nursery.cancel_scope.cancel()  # then the state is written a last time
        log.info("daemon_stopped", exit_code=shutdown.exit_code, reason=shutdown.reason)
    if shutdown.exit_code:
        # The daemon log has it too, but whoever started us reads stderr first.
        print(f"omnitron: daemon stopped: {shutdown.reason}", file=sys.stderr)
    return shutdown.exit_code


async def _serve_workers(
    orchestrator: Orchestrator, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the workers' socket (``router.call``), in ``HOME/run`` (0700).

    A home too deep for that socket path loses only this: workers cannot call
    each other (``exec`` still works); the daemon says so and runs on.
    """
    path = orchestrator.router_socket
    try:
        check_socket_path(path)
    except SocketPathTooLong as exc:
        log.warning("router_socket_unavailable", reason=str(exc))
        task_status.started()
        return
    await trio.to_thread.run_sync(
        functools.partial(path.parent.mkdir, mode=0o700, parents=True, exist_ok=True)
    )
    await serve_unix(path, build_worker_dispatcher(orchestrator.router), task_status=task_status)


def _token_authority(home: Path) -> Callable[[], TokenAuthority]:
    """The token key and list, loaded on first use (importing cryptography costs memory)."""
    return functools.cache(lambda: TokenAuthority(home))


def _on_daemon_death(
    choice: DaemonDeath, home: Home
) -> contextlib.AbstractAsyncContextManager[None]:
    """A sentinel stops the apps if this daemon dies (``stop``); ``keep`` leaves them."""
    if choice is DaemonDeath.STOP:
        return open_sentinel(home.path)
    return contextlib.nullcontext()


async def _clean_up_after_predecessor(home: Home) -> None:
    leftovers = await trio.to_thread.run_sync(find_leftovers, home.path)
    if not leftovers:
        return
    log.warning(
        "leftovers_found",
        count=len(leftovers),
        processes=[f"{x.app}[{x.instance}] pid {x.pid}" for x in leftovers],
    )
    report = await terminate_leftovers(leftovers)
    log.warning(
        "leftovers_terminated",
        terminated=list(report.terminated),
        killed=list(report.killed),
        escaped=list(report.escaped),
    )


async def _announce_ready(
    orchestrator: Orchestrator, progress: Progress, launched: Callable[[], None]
) -> None:
    """Tell systemd (and ``up``) we are ready once the apps are started, or after a minute.

    The socket already answers; capping the wait keeps a slow app from tripping
    systemd's start timeout (90 s by default) and failing the whole unit.
    ``launched`` is called first (the state file's writes resume).
    """
    try:
        await orchestrator.wait_launched(within=60)
    except DaemonBusy:
        notify("READY=1\nSTATUS=control socket up; some apps are still starting")
        return
    finally:
        launched()
        progress.say("started")
        progress.close()
        trim_heap()  # what start-up freed goes back to the system
    notify("READY=1\nSTATUS=apps started")


RELOAD_SETTLE = 0.2
"""Quiet time after the last SIGHUP before a reload starts: a burst is one reload."""

RELOAD_SETTLE_MAX = 2.0
"""Longest a reload waits for SIGHUPs to stop arriving (a steady stream still reloads)."""


async def _handle_signals(
    signals: AsyncIterator[int],
    shutdown: _Shutdown,
    service: DaemonService,
    orchestrator: Orchestrator,
) -> None:
    reloading = False
    again = False

    async def settle() -> None:
        # Wait for RELOAD_SETTLE of quiet (at most RELOAD_SETTLE_MAX): however the
        # scheduler spreads a burst of SIGHUPs over time, it starts one reload.
        nonlocal again
        with trio.move_on_after(RELOAD_SETTLE_MAX):
            while True:
                again = False
                await trio.sleep(RELOAD_SETTLE)
                if not again:
                    return
        again = False

    async def reload() -> None:
        # One reload at a time; SIGHUPs that arrive meanwhile make one more.
        nonlocal reloading, again
        try:
            while True:
                await settle()
                try:
                    result = await service.reload_config(dry_run=False)
                except Exception as exc:  # a bad config leaves everything as it was
                    log.error("reload_failed", error=str(exc))
                else:
                    log.info("reload_applied", summary=result["summary"])
                if not again:
                    return
        finally:
            reloading = False

    async with trio.open_nursery() as nursery:
        async for signum in signals:
            if signum != signal.SIGHUP:
                _on_stop_signal(signum, shutdown, orchestrator)
                continue
            # In a task of its own: a reload waits for apps to stop and start, and
            # SIGTERM must be heard meanwhile.
            log.info("reload_requested", signal="SIGHUP")
            if reloading:
                again = True
            else:
                reloading = True
                nursery.start_soon(reload)


def _on_stop_signal(signum: int, shutdown: _Shutdown, orchestrator: Orchestrator) -> None:
    name = signal.Signals(signum).name
    if not shutdown.requested.is_set():
        shutdown.request(f"received {name}")
        return
    # A second signal while stopping: kill what is left, at once.
    log.warning("forced_stop", signal=name)
    orchestrator.identify()
    for record in orchestrator.apps.values():
        for process in record.processes.values():
            identity = process.identity
            if process.pid is not None and identity is not None and identity.is_running():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
