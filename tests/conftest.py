"""The session's safety net: no daemon a test started outlives the test session.

Tests start real daemons (``omnitron up``, ``python -m omnitron.daemon``), their
sentinels and their apps, each on a temporary home. Their fixtures stop them, but a
run that is killed (a CI timeout, ``kill``, a closed terminal) never reaches those
fixtures, and the daemons keep running. So:

- every process the session starts carries ``PYTEST_OMNITRON_SESSION`` in its
  environment: the identity (pid, start time, boot) of the pytest process that
  started it, inherited by the daemons and from them by their sentinels and apps
  (the name does not start with ``OMNITRON_``, so the tests' clean environments keep it);
- at session end, and on SIGTERM, the session SIGKILLs its own marked processes that
  run on a temporary home (a daemon, a sentinel, an app), and names them;
- at session start, it does the same for processes marked by a session that no
  longer runs (an earlier run that was killed), and names them too.

A process is only ever signalled when its marker names this session or a dead one,
its home is under the temporary directory, it belongs to this user (read from
``/proc``), and it is still the process that was read (pinned by its pidfd). A
process started with an environment that drops the marker is not covered.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

from supervision import MarkedProcess, PinnedProcess, ProcessIdentity, find_marked

SESSION_ENV = "PYTEST_OMNITRON_SESSION"
SENTINEL_NAME = "omnitron-sentinel"  # omnitron.daemon._sentinel.SENTINEL_NAME

_me = ProcessIdentity.current()
_MARK = f"{_me.pid}:{_me.start_time!r}:{_me.boot_id or ''}"
_stale: list[str] = []
_leaked: list[str] = []


def _session_of(mark: str) -> ProcessIdentity | None:
    pid, _, rest = mark.partition(":")
    start, _, boot = rest.partition(":")
    try:
        return ProcessIdentity(pid=int(pid), start_time=float(start), boot_id=boot or None)
    except ValueError:
        return None


def _dead_session(mark: str) -> bool:
    session = _session_of(mark)
    return session is not None and not session.is_running()


def _home_of(process: MarkedProcess) -> str | None:
    """The omnitron home a process works for: an app's marker, a daemon's or sentinel's argv."""
    home = process.environ.get("OMNITRON_HOME")
    if home and "OMNITRON_APP" in process.environ:
        return home
    argv = process.cmdline
    if SENTINEL_NAME in argv and len(argv) >= 2:
        return argv[-1]  # /bin/sh -c SCRIPT omnitron-sentinel PYTHON HOME
    if any(arg in ("omnitron", "omnitron.daemon") for arg in argv) and "--home" in argv:
        index = argv.index("--home") + 1
        return argv[index] if index < len(argv) else None
    return None


def _temporary(home: str) -> bool:
    root = Path(tempfile.gettempdir()).resolve()
    path = Path(os.path.abspath(home))
    return path != root and path.is_relative_to(root)


def _kill(wanted: Callable[[str], bool]) -> list[str]:
    """SIGKILL the marked processes on a temporary home whose marker is ``wanted``."""
    killed = []
    for process in find_marked(SESSION_ENV, wanted):
        home = _home_of(process)
        if home is None or not _temporary(home):
            continue
        pinned = PinnedProcess.pin(process.identity)
        if pinned is None:
            continue
        with pinned:
            if pinned.send(signal.SIGKILL):
                killed.append(
                    f"pid {process.identity.pid} (home {home}): {' '.join(process.cmdline)}"
                )
    return killed


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _kill(_MARK.__eq__)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def pytest_configure(config: pytest.Config) -> None:
    os.environ[SESSION_ENV] = _MARK
    _stale.extend(_kill(_dead_session))
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _stale:
        return []
    return [f"killed {len(_stale)} process(es) left by an earlier, killed test run:"] + [
        f"  {line}" for line in _stale
    ]


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _leaked.extend(_kill(_MARK.__eq__))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for title, lines in (
        ("processes left by an earlier, killed test run (killed)", _stale),
        ("processes left running by tests (killed)", _leaked),
    ):
        if lines:
            terminalreporter.section(title, yellow=True)
            for line in lines:
                terminalreporter.write_line(line)
