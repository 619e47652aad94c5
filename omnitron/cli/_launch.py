"""Launching the detached daemon, without click: ``omnitron up``'s early start.

``omnitron up`` runs two interpreters one after the other: its own, then the
daemon's (``python -m omnitron.daemon``), whose imports are most of a cold
start. The daemon waits for a ``go`` before it touches its home (see
:mod:`omnitron.daemon._entry`), so it can be launched before ``up`` has even
parsed its options with click: :func:`launch_early`, called by the console
script before it imports the CLI, recognises the plain forms of ``up``
(``[--home PATH] up [--config PATH] [--stack NAME] [--reset-state]
[--wait-timeout S] [--watch | --no-watch]``, options also as ``--opt=value``)
and launches the daemon at once. Anything else (other commands, ``--foreground``,
network planes, ``--help``, an option it does not know) launches nothing here.

``up`` then builds the daemon's command line from click's parse as always and
takes the early launch only if it is that same command line
(:func:`take_early`); otherwise the early daemon is withdrawn (it exits, having
touched nothing) and ``up`` launches its own. A process that exits without
taking it withdraws it too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # neither is imported by every command
    import subprocess
    from pathlib import Path

__all__ = [
    "KILL_WAIT",
    "Launch",
    "daemon_argv",
    "launch_early",
    "optimized_bytecode_usable",
    "take_early",
]

KILL_WAIT = 5.0
"""Seconds to wait for a withdrawn daemon to exit before killing it."""


class LaunchFailed(Exception):
    """The daemon's interpreter could not be started."""


def _sentinel_sources() -> list[str]:
    """One module of each place the daemon imports from: the standard library,
    its dependencies (Trio's) and omnitron itself."""
    import importlib.util
    import typing

    sources = [typing.__file__, os.path.join(os.path.dirname(__file__), "_launch.py")]
    spec = importlib.util.find_spec("trio")  # finds, does not import
    if spec is not None and spec.origin is not None:
        sources.append(os.path.join(os.path.dirname(spec.origin), "_core", "_run.py"))
    return sources


def optimized_bytecode_usable(sources: Sequence[str] | None = None) -> bool:
    """Whether a ``python -OO`` daemon would run from cached bytecode.

    ``-OO`` has bytecode of its own (``*.opt-2.pyc``), which installers do not
    write. Python writes it on the first ``-OO`` import of each module, where it
    may: then every later start reads it. Where it may not (a read-only
    install, ``PYTHONDONTWRITEBYTECODE``), every start would compile each module
    again, which costs more time and memory than the docstrings save, so the
    daemon runs without ``-OO``. Checked on one module of each of ``sources``
    (default: :func:`_sentinel_sources`): its optimized bytecode is cached, or
    its cache directory is writable and writing bytecode is allowed.
    """
    import importlib.util

    for source in _sentinel_sources() if sources is None else sources:
        try:
            cached = importlib.util.cache_from_source(source, optimization=2)
        except (NotImplementedError, ValueError):  # no bytecode cache at all
            return False
        if os.path.exists(cached):
            continue
        if sys.dont_write_bytecode:
            return False
        directory = os.path.dirname(cached)
        while not os.path.isdir(directory):  # __pycache__ (or a prefix's tree) comes later
            parent = os.path.dirname(directory)
            if parent == directory:
                return False
            directory = parent
        if not os.access(directory, os.W_OK):
            return False
    return True


def daemon_argv(
    home: str,
    source: Path,
    *,
    stack: str | None,
    reset_state: bool,
    planes: Sequence[str] = (),
    watch: bool | None = None,
) -> list[str]:
    """``python -P [-OO] -m omnitron.daemon ...``: the daemon's own entry point, not the CLI again.

    ``-P``: ``-m`` would put the current directory first on ``sys.path``, so under
    ``up --foreground`` a project holding a ``supervision`` package (or a
    ``signal.py``) would be imported by the daemon in place of the real one.

    ``-OO`` when :func:`optimized_bytecode_usable`: the daemon then holds no
    docstrings (of its own modules, the standard library's and its
    dependencies': 1.5 MiB of its memory) and runs no ``assert``.
    """
    argv = [sys.executable, "-P"]
    if optimized_bytecode_usable():
        argv.append("-OO")
    argv += ["-m", "omnitron.daemon", "--home", home]
    argv += ["--config", str(source)]
    if stack is not None:
        argv += ["--stack", stack]
    if reset_state:
        argv.append("--reset-state")
    argv += planes
    if watch is not None:
        argv.append("--watch" if watch else "--no-watch")
    return argv


class Launch:
    """A detached daemon and the socket it reports its start-up on.

    The lines are described in :mod:`omnitron.daemon._entry`. The daemon gets one
    end of a socket pair (``--ready-fd``): it waits on it for ``go`` (sent by
    :meth:`go` once the config is valid) before it touches its home, and a launch
    withdrawn (:meth:`withdraw`: the socket closed) makes it exit untouched.
    """

    @classmethod
    def start(cls, argv: list[str], out_path: Path) -> Launch:
        """Launch ``argv`` in a new session, its output on the socket until it moves.

        Raises:
            LaunchFailed: The interpreter could not be started.
        """
        import socket
        import subprocess  # not at import: every command imports this module

        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # systemd talks to `up --foreground` only
        ours, theirs = (s.detach() for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM))
        try:
            proc = subprocess.Popen(
                [*argv, "--ready-fd", str(theirs)],
                stdin=subprocess.DEVNULL,
                stdout=theirs,  # until the daemon's output moves to logs/daemon.out
                stderr=theirs,
                pass_fds=(theirs,),
                cwd="/",  # hold no directory busy; paths are absolute
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(ours)
            raise LaunchFailed(str(exc)) from None
        finally:
            os.close(theirs)
        return cls(argv, proc, ours, out_path)

    def __init__(
        self, argv: list[str], proc: subprocess.Popen[bytes], pipe: int, out_path: Path
    ) -> None:
        self.argv = argv  # without --ready-fd
        self.proc = proc
        self.pipe = pipe
        self.out_path = out_path
        self.offset: int | None = None  # where its output in daemon.out begins, once moved
        self.early: list[str] = []  # what it printed before its output moved
        self.steps: set[str] = set()
        self.eof = False
        self._buffer = b""

    def go(self) -> None:
        """Let the daemon go on (a daemon already gone shows as end of file later)."""
        with contextlib.suppress(OSError):
            os.write(self.pipe, b"go\n")

    def withdraw(self) -> None:
        """Tell the daemon not to go on, and wait for it to exit (it has touched nothing)."""
        import subprocess

        self.close()
        try:
            self.proc.wait(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def read(self, timeout: float) -> None:
        """Take in what the daemon has said within ``timeout`` seconds (no more than a line)."""
        if self.eof:
            return
        ready, _, _ = select.select([self.pipe], [], [], max(0.0, timeout))
        if not ready:
            return
        data = os.read(self.pipe, 65536)
        if not data:
            self.eof = True
            os.close(self.pipe)
            self._line(self._buffer)
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            self._line(line)

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        if not line.startswith("@"):
            if line.strip():
                self.early.append(line)
            return
        step, _, value = line[1:].partition(" ")
        self.steps.add(step)
        if step == "output" and value.isdigit():
            self.offset = int(value)

    def close(self) -> None:
        if not self.eof:
            self.eof = True
            os.close(self.pipe)


_early: Launch | None = None
"""The daemon :func:`launch_early` started, until :func:`take_early` takes it."""

_VALUED = {
    "--config": "config",
    "-c": "config",
    "--stack": "stack",
    "--wait-timeout": "wait_timeout",
}
_FLAGS = {"--reset-state": "reset_state", "--watch": "watch", "--no-watch": "no_watch"}


def _parse_up(args: Sequence[str]) -> dict[str, str | bool] | None:
    """The options of a plain ``[--home PATH] up [OPTIONS]``, else ``None``."""
    found: dict[str, str | bool] = {}
    rest = list(args)
    command_seen = False
    while rest:
        arg = rest.pop(0)
        if arg == "up" and not command_seen:
            command_seen = True
            continue
        key, sep, inline = arg.partition("=")
        names = {"--home": "home"} if not command_seen else _VALUED
        if key in names and not (key == "-c" and sep):
            if sep:
                value = inline
            elif rest and not rest[0].startswith("-"):
                value = rest.pop(0)
            else:
                return None
            if not value or names[key] in found:
                return None
            found[names[key]] = value
        elif command_seen and arg in _FLAGS and _FLAGS[arg] not in found:
            found[_FLAGS[arg]] = True
        else:
            return None  # another command, --help, --foreground, planes...: click decides
    if not command_seen or (found.get("watch") and found.get("no_watch")):
        return None
    return found


def launch_early(args: Sequence[str]) -> None:
    """Launch the daemon now if ``args`` are a plain detached ``up`` (see the module docs).

    Never fails: whatever goes wrong here is left for ``up`` itself to meet and report.
    """
    global _early
    options = _parse_up(args)
    if options is None or _early is not None:
        return
    from pathlib import Path

    from omnitron.remotes import default_home

    home = default_home(str(options["home"]) if "home" in options else None)
    config = options.get("config")
    try:
        if isinstance(config, str):
            source = Path(os.path.abspath(config))
        else:
            from omnitron.config import find_config

            source = find_config()
        watch = True if options.get("watch") else False if options.get("no_watch") else None
        stack = options.get("stack")
        argv = daemon_argv(
            home,
            source,
            stack=stack if isinstance(stack, str) else None,
            reset_state=bool(options.get("reset_state")),
            watch=watch,
        )
        _early = Launch.start(argv, Path(home) / "logs" / "daemon.out")
    except Exception:  # no config found, no interpreter: `up` reports it as usual
        return
    atexit.register(_withdraw_early)


def take_early(argv: list[str]) -> Launch | None:
    """The early launch if it runs ``argv``; otherwise it is withdrawn and ``None``."""
    global _early
    launch, _early = _early, None
    if launch is None:
        return None
    if launch.argv == argv:
        return launch
    launch.withdraw()
    return None


def _withdraw_early() -> None:
    global _early
    launch, _early = _early, None
    if launch is not None:
        launch.withdraw()
