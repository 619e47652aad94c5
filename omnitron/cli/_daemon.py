"""``up``, ``down`` and ``kill``: starting and stopping the daemon itself.

These are the only commands that import the daemon's packages (state, config,
Trio for ``--foreground``); they pay for it, ``status`` does not.

``omnitron up`` without ``--foreground`` detaches: it re-runs itself as
``python -m omnitron --home H up --foreground --config PATH`` in a new session
(stdin ``/dev/null``, output appended to ``$OMNITRON_HOME/logs/daemon.out``),
waits until that process answers ``daemon.ping`` (or exits, whose error it
reports), then until no app is starting, and prints the app table.
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

from ._context import EXIT_FAILURE, Cli, CliError, rpc_failure
from ._render import escape

if TYPE_CHECKING:
    from omnitron.state import Home, ProcessIdentity

__all__ = ["down", "kill", "up"]

POLL_INTERVAL = 0.05
"""Seconds between two looks at an external process or the daemon's socket."""
KILL_WAIT = 5.0
"""Seconds to wait for SIGKILLed processes to disappear."""
OUTPUT_TAIL = 20
"""Lines of ``daemon.out`` shown when a detached daemon dies during start-up."""
OK_STATUSES = frozenset({"online", "stopped"})
"""App statuses that are not a failure once start-up has settled (stopped: on purpose)."""


def _quiet_logging(level: str) -> None:
    """Send the state package's structlog events at ``level`` and above to stderr.

    The CLI is the application here, so it decides: the daemon configures its own
    logging in :func:`run_daemon`; the CLI never prints log lines on stdout.
    """
    import logging

    import structlog

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


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
) -> int:
    """Validate the config, refuse a second daemon, then run or detach the daemon.

    Returns:
        The exit code.
    """
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

    home = _home(cli)
    running = _running_daemon(home)
    if running is not None:
        raise CliError(f"daemon already running (pid {running.pid}); home {home.path}")
    if foreground:
        return _run_foreground(
            home, source, stack=stack, reset_state=reset_state, echo=not daemonized
        )
    return _detach(cli, home, source, stack=stack, reset_state=reset_state, timeout=wait_timeout)


def _running_daemon(home: Home) -> ProcessIdentity | None:
    from omnitron.state import read_lock_info

    info = read_lock_info(home)
    return info.identity if info is not None and info.alive else None


def _run_foreground(
    home: Home, source: Path, *, stack: str | None, reset_state: bool, echo: bool
) -> int:
    import trio

    from omnitron.config import ConfigError
    from omnitron.daemon import DaemonOptions, run_daemon
    from omnitron.errors import OmnitronError
    from supervision._groups import collapse

    from . import _config

    options = DaemonOptions(
        home=home.path, config=source, stack=stack, echo=echo, reset_state=reset_state
    )
    try:
        return trio.run(run_daemon, options)
    except KeyboardInterrupt:
        # The daemon handles SIGINT itself once running; this is a Ctrl-C before
        # its signal handler was installed or after it was removed: nothing to stop.
        click.echo("omnitron: interrupted", err=True)
        return 130
    except Exception as exc:
        error = collapse(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if isinstance(error, ConfigError):
            raise _config.config_failure(error) from None
        if isinstance(error, OmnitronError):
            raise CliError(str(error)) from None
        raise


def _daemon_argv(home: Home, source: Path, *, stack: str | None, reset_state: bool) -> list[str]:
    argv = [sys.executable, "-m", "omnitron", "--home", str(home.path), "up", "--foreground"]
    argv += ["--daemonized", "--config", str(source)]
    if stack is not None:
        argv += ["--stack", stack]
    if reset_state:
        argv.append("--reset-state")
    return argv


def _detach(
    cli: Cli,
    home: Home,
    source: Path,
    *,
    stack: str | None,
    reset_state: bool,
    timeout: float,
) -> int:
    from omnitron.errors import OmnitronError

    try:
        home.ensure()
    except OmnitronError as exc:
        raise CliError(str(exc)) from None
    out_path = home.logs_dir / "daemon.out"
    try:
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise CliError(f"cannot open {out_path}: {exc.strerror}") from None
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)  # systemd talks to `up --foreground`, never to a detached one
    try:
        offset = os.fstat(out).st_size
        proc = subprocess.Popen(
            _daemon_argv(home, source, stack=stack, reset_state=reset_state),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd="/",  # hold no directory busy; paths are absolute
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise CliError(f"cannot start the daemon: {exc}") from None
    finally:
        os.close(out)

    deadline = time.monotonic() + timeout
    _wait_answering(cli, proc, out_path, offset, deadline, timeout)
    cli.note(f"daemon started (pid {proc.pid}); waiting for the apps")
    status = _wait_settled(cli, proc, out_path, offset, deadline)
    from ._render import render_status

    cli.emit(status, render_status)
    failed = [
        f"{app['name']} ({app['status']})"
        for app in status.get("apps") or ()
        if app.get("status") not in OK_STATUSES
    ]
    if failed:
        raise CliError(f"not online after start-up: {', '.join(failed)}")
    return 0


def _started_failure(proc: subprocess.Popen[bytes], out_path: Path, offset: int) -> CliError:
    """The error for a detached daemon that exited: its own reason, else its output's tail."""
    code = proc.returncode if proc.returncode is not None else -1
    try:
        with open(out_path, "rb") as f:
            f.seek(offset)
            text = f.read()[-16384:].decode("utf-8", "replace")
    except OSError:
        text = ""
    lines = [line for line in text.splitlines() if line.strip()]
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
        f"the daemon exited during start-up ({how}); see {out_path} and "
        f"{out_path.with_name('daemon.log')}",
        exit_code=exit_code,
    )


def _wait_answering(
    cli: Cli,
    proc: subprocess.Popen[bytes],
    out_path: Path,
    offset: int,
    deadline: float,
    timeout: float,
) -> None:
    """Return once our daemon answers on the socket; raise if it exits or stays silent."""
    from omnitron.rpc._errors import RemoteError, RpcError
    from omnitron.rpc.sync_client import connect_unix_sync

    while True:
        if proc.poll() is not None:
            raise _started_failure(proc, out_path, offset)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with connect_unix_sync(cli.socket_path, timeout=min(2.0, left)) as client:
                client.call("daemon.ping")
                pid = client.call("daemon.status")["daemon"]["pid"]
        except RemoteError:
            pid = None  # answering, but not ready to serve (e.g. still starting): ask again
        except RpcError:
            pid = None  # no socket yet, or a stale one nobody listens on
        if pid == proc.pid:
            return
        if pid is not None:
            # Another daemon won the race for this home: ours is about to exit with
            # "daemon already running"; report that.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            if proc.returncode is not None:
                raise _started_failure(proc, out_path, offset)
            raise CliError(f"daemon already running (pid {pid}); home {cli.home}")
        time.sleep(POLL_INTERVAL)
    raise CliError(
        f"the daemon (pid {proc.pid}) did not answer within {timeout:g}s; it may still be "
        f"starting: see {out_path} and {out_path.parent / 'daemon.log'}"
    )


def _wait_settled(
    cli: Cli, proc: subprocess.Popen[bytes], out_path: Path, offset: int, deadline: float
) -> dict[str, Any]:
    """Poll ``daemon.status`` until no app is starting (or the deadline); return the last one."""
    from omnitron.rpc._errors import RpcError
    from omnitron.rpc.sync_client import connect_unix_sync

    while True:
        left = deadline - time.monotonic()
        status: dict[str, Any] | None = None
        try:
            with connect_unix_sync(cli.socket_path, timeout=max(1.0, min(5.0, left))) as client:
                status = client.call("daemon.status")
        except RpcError as exc:
            if proc.poll() is not None:
                raise _started_failure(proc, out_path, offset) from None
            if left <= 0:
                raise rpc_failure(exc) from None
        if status is not None and (
            left <= 0 or not any(app.get("status") == "starting" for app in status["apps"])
        ):
            return status
        time.sleep(POLL_INTERVAL)


# --------------------------------------------------------------------------- down


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


def _signal_identity(identity: ProcessIdentity, *, group: bool) -> bool:
    """SIGKILL ``identity`` (and its process group when it leads one), never a recycled pid."""
    pid = identity.pid
    pidfd: int | None = None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (OSError, AttributeError):
        pidfd = None  # no pidfds here: the identity check below comes just before the kill
    try:
        if not identity.is_running():
            return False
        if group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) == pid and identity.is_running():
                    os.killpg(pid, signal.SIGKILL)
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_everything(home: Home) -> dict[str, Any]:
    from omnitron.daemon._leftovers import find_leftovers
    from omnitron.state import read_lock_info

    report: dict[str, Any] = {"daemon": None, "processes": [], "escaped": [], "removed": []}
    info = read_lock_info(home)
    if info is not None and info.alive and _signal_identity(info.identity, group=False):
        report["daemon"] = info.pid
        # Its apps are found after it is gone, so that it cannot start new ones meanwhile.
        _wait_until(lambda: not info.identity.is_running(), KILL_WAIT)
        if info.identity.is_running():
            report["escaped"].append(info.pid)

    if home.path.is_dir():
        killed = []
        for _ in range(3):  # processes forked while we looked are found on the next round
            leftovers = find_leftovers(home.path)
            if not leftovers:
                break
            for leftover in leftovers:
                if _signal_identity(leftover.identity, group=True):
                    killed.append(leftover)
            _wait_until(lambda: not any(x.identity.is_running() for x in killed), KILL_WAIT)
        report["processes"] = [
            {"app": x.app, "instance": x.instance, "pid": x.pid}
            for x in sorted({x.pid: x for x in killed}.values(), key=lambda x: x.pid)
        ]
        report["escaped"] += sorted({x.pid for x in killed if x.identity.is_running()})
        report["removed"] = _remove_stale_files(home)
    return report


def _remove_stale_files(home: Home) -> list[str]:
    """Remove the socket and pid file of a dead daemon; nothing if a daemon holds the lock."""
    from omnitron.errors import OmnitronError
    from omnitron.state import acquire_pid_lock, remove_stale_socket

    had_pid_file = os.path.lexists(home.pid_file)
    removed = []
    try:
        lock = acquire_pid_lock(home)
    except OmnitronError:
        return []  # a daemon (a new one?) holds the lock, or the home is unusable: leave it
    try:
        with contextlib.suppress(OmnitronError, OSError):
            if remove_stale_socket(home):
                removed.append(str(home.socket_path))
    finally:
        lock.release()
    if had_pid_file and not os.path.lexists(home.pid_file):
        removed.append(str(home.pid_file))
    return removed
