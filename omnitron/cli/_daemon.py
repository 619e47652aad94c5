"""``up``, ``down`` and ``kill``: starting and stopping the daemon itself.

``up`` starts the daemon's own entry point, ``python -m omnitron.daemon`` (never
the CLI again): ``up --foreground`` validates the config, then becomes it
(``exec``); plain ``up`` launches it in a new session at once, validates the
config meanwhile and then tells it to go on (an invalid config withdraws the
launch: the daemon exits before touching its home), and reads its start-up
steps from a socket pair (see :mod:`omnitron.daemon._entry`): the socket is up,
the tree has started. Then it waits until every app has settled (online, crashed,
or stopped) and prints the app table. ``up`` imports neither Trio nor the state
package; ``down`` and ``kill`` import the state package (and Trio with it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import _launch
from ._context import EXIT_FAILURE, Cli, CliError, rpc_failure
from ._render import escape

if TYPE_CHECKING:
    from omnitron.state import Home, ProcessIdentity

__all__ = ["down", "kill", "up"]

POLL_INTERVAL = 0.05
"""Seconds between two looks at an external process."""
SETTLE_POLL = 0.05
"""Seconds between two ``daemon.status`` calls while apps settle after start-up."""
START_LOOK = 0.5
"""Seconds between two looks at ``daemon.status`` while the daemon's tree is starting."""
FIRST_UPTIME = 0.5
"""Seconds an app's processes must be up before ``up`` counts it online."""
STABLE_UPTIME = 1.0
"""The same for an app that has restarted since the daemon started."""
KILL_WAIT = 5.0
"""Seconds to wait for SIGKILLed processes to disappear."""
OUTPUT_TAIL = 20
"""Lines of ``daemon.out`` shown when a detached daemon dies during start-up."""
OK_STATUSES = frozenset({"online", "stopped"})
"""Settled app statuses that are not a failure (stopped: on purpose)."""


def _quiet_logging(level: str) -> None:
    """Send the state package's events at ``level`` and above to stderr.

    The CLI is the application here, so it decides: the daemon configures its own
    logging in :func:`run_daemon`; the CLI never prints log lines on stdout.
    """
    from omnitron import _log

    _log.configure(_log.Console(sys.stderr, level=_log.LEVELS[level]))


def _home(cli: Cli, *, log_level: str = "warning") -> Home:
    from omnitron.state import Home

    _quiet_logging(log_level)
    return Home(cli.home)


def _deadline_loop(timeout: float, interval: float = POLL_INTERVAL) -> Iterator[float]:
    """Yield the time left, then sleep ``interval``, until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        yield left
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every :data:`POLL_INTERVAL` for at most ``timeout`` seconds."""
    for _ in _deadline_loop(timeout):
        if condition():
            return True
    return condition()


# --------------------------------------------------------------------------- up


def up(
    cli: Cli,
    *,
    config: str | None,
    foreground: bool,
    stack: str | None,
    reset_state: bool,
    wait_timeout: float,
    daemonized: bool,
    planes: list[str] | None = None,
    watch: bool | None = None,
) -> int:
    """Validate the config, then run the daemon (``exec``) or launch it detached.

    A second daemon for the same home is refused by the daemon itself (its pid
    lock), whose reason is reported here.

    Returns:
        The exit code.
    """
    if not foreground:
        # The daemon starts (a second interpreter, its imports, its own reading of
        # the config) while this process validates the config; it touches nothing
        # until told to go on (see omnitron.cli._launch).
        source = _locate(config)
        argv = _full_argv(cli, source, stack, reset_state, planes, watch)
        # The console script may have launched this very command line already,
        # before importing click (see omnitron.cli._launch).
        launch = _launch.take_early(argv) or _start(argv, Path(cli.home) / "logs" / "daemon.out")
        try:
            _validate(cli, str(source), stack)
            _refuse_other_config(cli, source)
        except BaseException:
            launch.withdraw()
            raise
        launch.go()
        return _detach(cli, launch, argv, timeout=wait_timeout)

    source = _validate(cli, config, stack)
    _refuse_other_config(cli, source)
    argv = _full_argv(cli, source, stack, reset_state, planes, watch)
    if not daemonized:
        argv.append("--echo")
    sys.stdout.flush()
    sys.stderr.flush()
    # The same process becomes the daemon: its pid (systemd's MAINPID, a
    # supervisor's child) and its environment (NOTIFY_SOCKET) stay.
    os.execv(sys.executable, argv)
    raise AssertionError("unreachable")  # execv does not return


def _locate(config: str | None) -> Path:
    """The config file: ``config`` made absolute, else found from the cwd upward."""
    if config is not None:
        return Path(os.path.abspath(config))
    from omnitron.config import ConfigError, find_config

    from . import _config

    try:
        return find_config()
    except ConfigError as exc:
        raise _config.config_failure(exc) from None


def _validate(cli: Cli, config: str | None, stack: str | None) -> Path:
    """Load and validate the config (found from the cwd without ``config``), say which
    file it is and print its warnings; its path."""
    from omnitron.config import ConfigError

    from . import _config

    try:
        ecosystem = _config.load(config, stack=stack)
    except ConfigError as exc:
        raise _config.config_failure(exc) from None
    source = ecosystem.source
    assert source is not None
    count = len(ecosystem.apps)
    cli.note(f"config: {source} ({count} app{'s' if count != 1 else ''})")
    _config.warn(cli, ecosystem)
    return source


def _full_argv(
    cli: Cli,
    source: Path,
    stack: str | None,
    reset_state: bool,
    planes: list[str] | None,
    watch: bool | None,
) -> list[str]:
    return _launch.daemon_argv(
        cli.home, source, stack=stack, reset_state=reset_state, planes=planes or (), watch=watch
    )


def _refuse_other_config(cli: Cli, source: Path) -> None:
    """Fail, naming both configs, if this home's daemon runs another config than ``source``.

    A daemon that runs the same config is left to refuse the second one itself.
    """
    if not os.path.exists(cli.socket_path):
        return
    from omnitron.rpc._errors import RpcError
    from omnitron.rpc.sync_client import connect_unix_sync

    try:
        with connect_unix_sync(cli.socket_path, timeout=min(cli.timeout or 5.0, 5.0)) as client:
            daemon = client.call("daemon.status")["daemon"]
    except (RpcError, KeyError, TypeError):
        return  # no daemon answers: the launch goes on and the pid lock decides
    running = str(daemon.get("config"))
    if os.path.realpath(running) == os.path.realpath(source):
        return
    raise CliError(
        f"daemon already running (pid {daemon.get('pid')}) on {cli.home} with another config: "
        f"{running} (not {source}); to run both, give this one its own home "
        "(`omnitron up --home PATH`, or $OMNITRON_HOME), or stop that one first (`omnitron down`)"
    )


def _start(argv: list[str], out_path: Path) -> _launch.Launch:
    try:
        return _launch.Launch.start(argv, out_path)
    except _launch.LaunchFailed as exc:
        raise CliError(f"cannot start the daemon: {exc}") from None


def _failure(launch: _launch.Launch) -> CliError:
    """The error for a daemon that exited: its own reason, else its output's tail."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        launch.proc.wait(timeout=KILL_WAIT)
    code = launch.proc.returncode if launch.proc.returncode is not None else -1
    lines = list(launch.early)
    if launch.offset is not None:
        try:
            with open(launch.out_path, "rb") as f:
                f.seek(launch.offset)
                text = f.read()[-16384:].decode("utf-8", "replace")
        except OSError:
            text = ""
        lines += [line for line in text.splitlines() if line.strip()]
    exit_code = code if code > 0 else EXIT_FAILURE
    reasons = [line for line in lines if line.startswith("omnitron: ")]
    if reasons:
        details = [line.strip() for line in lines if line.startswith("  ")]
        return CliError(
            reasons[-1].removeprefix("omnitron: "), exit_code=exit_code, details=details
        )
    how = f"exit code {code}" if code >= 0 else f"signal {-code}"
    for line in lines[-OUTPUT_TAIL:]:
        click.echo(f"  {escape(line)}", err=True)
    return CliError(
        f"the daemon exited during start-up ({how}); see {launch.out_path} and "
        f"{launch.out_path.with_name('daemon.log')}",
        exit_code=exit_code,
    )


def _detach(cli: Cli, launch: _launch.Launch, argv: list[str], *, timeout: float) -> int:
    """Wait for the launched daemon's socket, then for the apps to settle."""
    proc = launch.proc
    try:
        deadline = time.monotonic() + timeout
        while "listening" not in launch.steps:
            if launch.eof:
                raise _failure(launch)
            left = deadline - time.monotonic()
            if left <= 0:
                raise CliError(
                    f"the daemon (pid {proc.pid}) did not answer within {timeout:g}s; it may "
                    f"still be starting: see {launch.out_path} and "
                    f"{launch.out_path.with_name('daemon.log')}"
                )
            launch.read(left)
        cli.note(f"daemon started (pid {proc.pid}); waiting for the apps")
        if "--tcp" in argv or "--http" in argv:
            from ._auth import note_planes

            note_planes(cli, argv)
        status, unsettled = _wait_settled(cli, launch, deadline)
    finally:
        launch.close()
    from ._render import render_status

    cli.emit(status, render_status)
    seen: dict[str, int] = {}
    for app in status.get("apps") or ():
        seen[str(app.get("status"))] = seen.get(str(app.get("status")), 0) + 1
    summary = ", ".join(f"{count} {state}" for state, count in sorted(seen.items()))
    cli.note(f"{'not settled' if unsettled else 'settled'}: {summary or 'no apps'}")
    if unsettled:
        raise CliError(
            f"not settled within {timeout:g}s: {', '.join(unsettled)} "
            "(still starting or restarting; see `omnitron status`)"
        )
    failed = [app for app in status.get("apps") or () if app.get("status") not in OK_STATUSES]
    if failed:
        raise CliError(
            "not online after start-up: "
            + ", ".join(f"{app['name']} ({app['status']})" for app in failed),
            details=_failure_details(cli, [str(app["name"]) for app in failed]),
        )
    return 0


def _failure_details(cli: Cli, apps: list[str]) -> list[str]:
    """For each app that did not come up: its last error, last stderr lines and log file."""
    from omnitron._logtail import stderr_tail
    from omnitron.rpc._errors import RpcError

    from ._render import render_start_failure

    details: list[str] = []
    try:
        with cli.connect() as client:
            for name in apps:
                app = client.call("daemon.inspect", name=name)
                log = str(app.get("log_file"))
                if app.get("last_error"):
                    details.append(f"{name}: {app['last_error']}")
                data = {"app": name, "log": log, "stderr_tail": stderr_tail(Path(log), name)}
                details += render_start_failure(data)
    except RpcError:
        pass  # the daemon went away meanwhile: the table above is what there is
    return details


def unsettled_apps(status: dict[str, Any]) -> tuple[list[str], float]:
    """The apps of a ``daemon.status`` reply that have not settled, as ``name (status)``,
    and how long to wait before asking again.

    Settled: crashed or errored with no process left (given up on), stopped (on
    purpose, or done), or online with
    every process up for :data:`FIRST_UPTIME` (:data:`STABLE_UPTIME` once the app
    has restarted). A crash-looping app passes through ``online`` between its
    exits, and ``errored`` is only the moment between an exit and its restart:
    neither is an answer yet. When only young online processes are left, the wait
    is until the youngest is old enough (no status call in between).
    """
    pending = []
    wait = 0.0
    for app in status.get("apps") or ():
        state = app.get("status")
        if state in ("crashed", "stopped"):
            continue
        if state == "errored" and all(
            p.get("status") == "stopped" for p in app.get("processes") or ()
        ):
            continue  # cannot be started as configured: given up on
        if state == "online":
            needed = STABLE_UPTIME if app.get("restarts") else FIRST_UPTIME
            uptimes = [p.get("uptime", 0.0) for p in app.get("processes") or () if p.get("pid")]
            youngest = min(uptimes, default=needed)
            if youngest >= needed:
                continue
            wait = max(wait, needed - youngest)
        else:
            wait = max(wait, SETTLE_POLL)
        pending.append(f"{app.get('name')} ({state})")
    return pending, min(wait, STABLE_UPTIME)


def _wait_settled(
    cli: Cli, launch: _launch.Launch, deadline: float
) -> tuple[dict[str, Any], list[str]]:
    """The first ``daemon.status`` in which every app has settled, else the last one at the
    deadline; with the apps not settled then (empty when settled)."""
    from omnitron.rpc._errors import RpcError
    from omnitron.rpc.sync_client import connect_unix_sync

    client = None
    next_look = 0.0
    try:
        while True:
            if not launch.eof and "started" not in launch.steps:
                # Wait on the daemon's pipe for its tree to start; look at the status
                # now and then anyway (a tree that gave up at once says nothing).
                launch.read(min(START_LOOK, max(0.0, deadline - time.monotonic())))
                if launch.eof and "started" not in launch.steps:
                    raise _failure(launch)  # the pipe closed early: the daemon is exiting
                waiting = not launch.eof and "started" not in launch.steps
                if waiting and time.monotonic() < min(next_look, deadline):
                    continue
            next_look = time.monotonic() + START_LOOK
            left = deadline - time.monotonic()
            try:
                if client is None:
                    client = connect_unix_sync(cli.socket_path, timeout=max(1.0, min(5.0, left)))
                status: dict[str, Any] = client.call("daemon.status")
            except RpcError as exc:
                if client is not None:
                    client.close()
                    client = None
                if launch.proc.poll() is not None:
                    raise _failure(launch) from None
                if left <= 0:
                    raise rpc_failure(exc) from None
                time.sleep(min(SETTLE_POLL, max(0.0, left)))
                continue
            pending, wait = unsettled_apps(status)
            if not pending or left <= 0:
                return status, pending
            if launch.eof or "started" in launch.steps:
                time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
    finally:
        if client is not None:
            client.close()


# --------------------------------------------------------------------------- down


def _running_daemon(home: Home) -> ProcessIdentity | None:
    from omnitron.state import read_lock_info

    info = read_lock_info(home)
    return info.identity if info is not None and info.alive else None


def down(cli: Cli, *, force: bool, timeout: float) -> int:
    """Ask the daemon to stop its apps and exit; wait (bounded) until it is gone.

    ``force``, or a daemon still running after ``timeout``, means ``kill``.
    """
    from omnitron.rpc._errors import ConnectionLost, DaemonNotRunning, RpcError
    from omnitron.state import ProcessIdentity

    home = _home(cli, log_level="error")
    running = _running_daemon(home)
    if force:
        report = _kill_everything(home)
        if report["daemon"] is None and not report["processes"]:
            raise CliError(f"daemon not running (home {home.path}); nothing to stop")
        from ._render import render_kill

        cli.emit(report, render_kill)
        return 0

    try:
        with cli.connect() as client:
            reply = client.call("daemon.shutdown")
    except DaemonNotRunning as exc:
        if running is not None:
            raise CliError(
                f"the daemon (pid {running.pid}) does not answer on {cli.socket_path}; "
                "stop it with `omnitron kill`"
            ) from None
        raise rpc_failure(exc) from None
    except ConnectionLost:
        reply = {"stopping": True, "pid": running.pid if running else None}
    except RpcError as exc:
        raise rpc_failure(exc) from None

    pid = reply.get("pid")
    identity = running if running is not None and running.pid == pid else None
    if identity is None and isinstance(pid, int):
        identity = ProcessIdentity.of(pid)
    cli.note(f"stopping the daemon (pid {pid})")
    if identity is not None and not _wait_until(lambda: not identity.is_running(), timeout):
        report = _kill_everything(home)
        from ._render import render_kill

        cli.emit(report, render_kill)
        raise CliError(
            f"the daemon (pid {pid}) did not stop within {timeout:g}s; killed it and its apps"
        )
    cli.emit({"stopped": True, "pid": pid}, lambda data: f"daemon stopped (pid {data['pid']})")
    return 0


# --------------------------------------------------------------------------- kill


def kill(cli: Cli) -> int:
    """SIGKILL the daemon and every process of its apps; remove a stale socket and pid file."""
    from ._render import render_kill

    # What kill removes (a stale lock, a stale socket) it reports itself.
    report = _kill_everything(_home(cli, log_level="error"))
    cli.emit(report, render_kill)
    if report["escaped"]:
        raise CliError(f"{len(report['escaped'])} process(es) survived SIGKILL")
    return 0


def _kill_everything(home: Home) -> dict[str, Any]:
    from omnitron.daemon._leftovers import find_leftovers
    from omnitron.state import read_lock_info
    from supervision import PinnedProcess, kill_processes

    report: dict[str, Any] = {"daemon": None, "processes": [], "escaped": [], "removed": []}
    info = read_lock_info(home)
    daemon = PinnedProcess.pin(info.identity) if info is not None and info.alive else None
    if info is not None and daemon is not None:
        with daemon:
            daemon.send(signal.SIGKILL)
        report["daemon"] = info.pid
        # Its apps are found after it is gone, so that it cannot start new ones meanwhile.
        _wait_until(lambda: not info.identity.is_running(), KILL_WAIT)
        if info.identity.is_running():
            report["escaped"].append(info.pid)

    if home.path.is_dir():
        killed: dict[int, Any] = {}
        escaped: set[int] = set()
        for _ in range(3):  # processes forked while we looked are found on the next round
            leftovers = find_leftovers(home.path)
            if not leftovers:
                break
            # Whole trees, each process pinned by its identity (never a recycled pid).
            result = kill_processes([x.identity for x in leftovers], kill_timeout=KILL_WAIT)
            killed.update((x.pid, x) for x in leftovers if x.pid not in result.skipped)
            escaped.update(result.escaped)
        report["processes"] = [
            {"app": x.app, "instance": x.instance, "pid": x.pid}
            for x in sorted(killed.values(), key=lambda x: x.pid)
        ]
        report["escaped"] += sorted(escaped)
        # A killed daemon's threads may still be exiting once its main thread is a
        # zombie (no longer "running"): its lock and socket are released with the
        # last of them, so the lock is waited for a moment.
        wait = KILL_WAIT if report["daemon"] is not None else 0.0
        report["removed"] = _remove_stale_files(home, wait=wait)
    return report


def _remove_stale_files(home: Home, *, wait: float = 0.0) -> list[str]:
    """Remove the socket and pid file of a dead daemon; nothing if a daemon holds the
    lock (for ``wait`` seconds at most)."""
    from omnitron.errors import OmnitronError
    from omnitron.state import DaemonAlreadyRunning, acquire_pid_lock, remove_stale_socket

    had_pid_file = os.path.lexists(home.pid_file)
    removed = []
    deadline = time.monotonic() + wait
    while True:
        try:
            lock = acquire_pid_lock(home)
            break
        except DaemonAlreadyRunning:
            # Held: by the dying daemon's last threads, or by a new daemon (then
            # its files are left as they are).
            if time.monotonic() >= deadline:
                return []
            time.sleep(POLL_INTERVAL)
        except OmnitronError:
            return []  # the home is unusable: leave it
    try:
        with contextlib.suppress(OmnitronError, OSError):
            if remove_stale_socket(home):
                removed.append(str(home.socket_path))
    finally:
        lock.release()
    if had_pid_file and not os.path.lexists(home.pid_file):
        removed.append(str(home.pid_file))
    return removed
