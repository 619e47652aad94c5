# ruff: noqa: E501  (the expected lines are kept whole, as they are written)
"""The lines omnitron's events become, byte for byte, in each process that writes them.

Operators grep the daemon log and scripts parse it; ``omnitron down`` and ``kill``
print the state package's events on stderr; a worker prints its own. Each test
runs the same representative calls (every kind of value, ``%`` arguments, each
level and the filtering below the configured one, exceptions given every way,
the supervision library's ``logging`` records) through one process's
configuration and compares with the lines that process has always written;
only the times are replaced by ``<T>``, after checking their format.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from omnitron import _log
from omnitron.cli._daemon import _quiet_logging
from omnitron.daemon import _logging
from omnitron.daemon._logging import configure_logging
from omnitron.worker._serve import _configure_logging as configure_worker_logging

_ISO_STAMP = re.compile(r"timestamp='\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z'")
_LOCAL_STAMP = re.compile(r"^(\033\[2m)?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)


def _stamps_replaced(text: str) -> str:
    return _LOCAL_STAMP.sub(
        lambda m: f"{m.group(1) or ''}<T>", _ISO_STAMP.sub("timestamp=<T>", text)
    )


# --------------------------------------------------------------------------- the calls

RAISER = """
def fail(message):
    raise ValueError(message)


def chained():
    try:
        fail("inner")
    except ValueError as exc:
        raise RuntimeError("outer") from exc


def run(log):
    try:
        fail("bad 'value'")
    except ValueError as exc:
        log.exception("handler_failed", method="daemon.crash")
        log.error("with_exc_info", exc_info=True, after=1)
        caught = exc
    try:
        chained()
    except RuntimeError:
        log.error("chained_failure", exc_info=True)
    log.error("exception_instance", exc_info=caught)
    log.error("exception_tuple", exc_info=(type(caught), caught, caught.__traceback__))
    log.warning("exception_field_replaced", exception="mine", exc_info=caught, last=2)


def run_foreign(logger):
    try:
        fail("supervised")
    except ValueError:
        logger.exception("supervisor failed for %s", "api")
        logger.warning("handled", exc_info=True)
"""
"""Exceptions raised and logged in code of a fixed name and lines: the same traceback
wherever this file's own lines move."""


def raiser() -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(RAISER, "<golden>", "exec"), namespace)
    return namespace


def daemon_events(log: _log.Logger, foreign: logging.Logger) -> None:
    log.debug("below_the_level", n=1)
    log.info("pid_lock_acquired", path="/tmp/x/daemon.pid", pid=29044)
    log.info(
        "values",
        text='it\'s "quoted"\n',
        number=3,
        ratio=0.25,
        nothing=None,
        flag=True,
        mapping={"a": [1, (2, None)]},
        path=Path("/srv/app"),
        items=["x", 1],
        empty="",
        unicode="héllo ✓",
    )
    log.warning("count %d of %s", 3, "apps", app="web")
    log.warning("named %(app)s", {"app": "web"})
    log.error("app_failed", app="web", reason="exited with code 1")
    log.critical("tree_gave_up", reason="too many restarts")
    log.info("reserved_fields", level="mine", timestamp="mine", exception="mine", other=1)
    log.info("stack_and_names", stack_info=True, exc_info=False, logger="x")
    log.info("no_current_exception", exc_info=True)
    log.info("no_fields")
    namespace = raiser()
    namespace["run"](log)
    foreign.warning("child %s exited with code %d", "api", 3)
    foreign.debug("below the level")
    foreign.info("plain message")
    foreign.error("with a %s", "percent")
    foreign.critical("critical one")
    foreign.log(25, "custom level")
    namespace["run_foreign"](foreign)
    foreign.handle(
        logging.makeLogRecord(
            {
                "name": foreign.name,
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": "stacked %s",
                "args": ("record",),
                "stack_info": "Stack (most recent call last):\n  here",
            }
        )
    )


def level_events(log: _log.Logger, foreign: logging.Logger) -> None:
    log.debug("a_debug_event", n=1)
    log.info("an_info_event", n=2)
    log.warning("a_warning_event", n=3)
    log.error("an_error_event", n=4)
    log.critical("a_critical_event", n=5)
    foreign.debug("foreign debug")
    foreign.info("foreign info")
    foreign.warning("foreign warning")


def console_events(log: _log.Logger) -> None:
    log.debug("below", n=1)
    log.info("pid_lock_acquired", path="/tmp/x/daemon.pid", pid=29044)
    log.warning(
        "home_permissions_fixed", path="/home/me/.omnitron", old_mode="0755", new_mode="0700"
    )
    log.error(
        "state_write_failed",
        zeta=1,
        alpha="two words",
        mid=None,
        path=Path("/x"),
        quote="it's",
        dquote='say "hi"',
        eq="a=b",
        tab="a\tb",
        newline="a\nb",
        plain="plain",
        empty="",
        number=1.5,
        mapping={"k": "v"},
        unicode="héllo",
    )
    log.critical("short")
    log.info("an_event_name_longer_than_thirty_characters", k="v")
    log.info("exactly_thirty_characters_long", k="v")
    log.warning("count %d of %s", 3, "apps")
    log.info("reserved", level="mine", timestamp="mine", logger="x", logger_name="y")
    log.info("stack_field", stack="a stack", after=1)
    log.info("exception_field", exception="Traceback: mine")
    log.info("both_fields", stack="a stack", exception="Traceback: mine")
    log.info("an event with spaces")


def console_exceptions(log: _log.Logger) -> None:
    raiser()["run"](log)


def worker_events(log: _log.Logger) -> None:
    log.debug("below", n=1)
    log.info("worker_ready", process="api", instance=0, services=["Echo"])
    log.warning("worker_calls_cancelled", count=2)
    log.error("fields", text="it's", nothing=None, path=Path("/x"))
    log.critical("critical_one")
    log.info("reserved", timestamp="mine", level="mine", after=1)
    log.warning("count %d", 3)
    log.info("no_fields")
    try:
        raise ValueError("x")
    except ValueError:
        log.exception("worker_failed", app="a")


# --------------------------------------------------------------------------- the lines

DAEMON_LINES = r"""
timestamp=<T> level='info' event='pid_lock_acquired' path='/tmp/x/daemon.pid' pid=29044
timestamp=<T> level='info' event='values' text='it\'s "quoted"\n' number=3 ratio=0.25 nothing=None flag=True mapping={'a': [1, (2, None)]} path=PosixPath('/srv/app') items=['x', 1] empty='' unicode='héllo ✓'
timestamp=<T> level='warning' event='count 3 of apps' app='web'
timestamp=<T> level='warning' event='named web'
timestamp=<T> level='error' event='app_failed' app='web' reason='exited with code 1'
timestamp=<T> level='critical' event='tree_gave_up' reason='too many restarts'
timestamp=<T> level='info' event='reserved_fields' exception='mine' other=1
timestamp=<T> level='info' event='stack_and_names' stack_info=True logger='x'
timestamp=<T> level='info' event='no_current_exception'
timestamp=<T> level='info' event='no_fields'
timestamp=<T> level='error' event='handler_failed' method='daemon.crash' exception='Traceback (most recent call last):\n  File "<golden>", line 15, in run\n  File "<golden>", line 3, in fail\nValueError: bad \'value\''
timestamp=<T> level='error' event='with_exc_info' after=1 exception='Traceback (most recent call last):\n  File "<golden>", line 15, in run\n  File "<golden>", line 3, in fail\nValueError: bad \'value\''
timestamp=<T> level='error' event='chained_failure' exception='Traceback (most recent call last):\n  File "<golden>", line 8, in chained\n  File "<golden>", line 3, in fail\nValueError: inner\n\nThe above exception was the direct cause of the following exception:\n\nTraceback (most recent call last):\n  File "<golden>", line 21, in run\n  File "<golden>", line 10, in chained\nRuntimeError: outer'
timestamp=<T> level='error' event='exception_instance' exception='Traceback (most recent call last):\n  File "<golden>", line 15, in run\n  File "<golden>", line 3, in fail\nValueError: bad \'value\''
timestamp=<T> level='error' event='exception_tuple' exception='Traceback (most recent call last):\n  File "<golden>", line 15, in run\n  File "<golden>", line 3, in fail\nValueError: bad \'value\''
timestamp=<T> level='warning' event='exception_field_replaced' exception='Traceback (most recent call last):\n  File "<golden>", line 15, in run\n  File "<golden>", line 3, in fail\nValueError: bad \'value\'' last=2
timestamp=<T> level='warning' event='child api exited with code 3'
timestamp=<T> level='info' event='plain message'
timestamp=<T> level='error' event='with a percent'
timestamp=<T> level='critical' event='critical one'
timestamp=<T> level='level 25' event='custom level'
timestamp=<T> level='error' event='supervisor failed for api' exception='Traceback (most recent call last):\n  File "<golden>", line 31, in run_foreign\n  File "<golden>", line 3, in fail\nValueError: supervised'
timestamp=<T> level='warning' event='handled' exception='Traceback (most recent call last):\n  File "<golden>", line 31, in run_foreign\n  File "<golden>", line 3, in fail\nValueError: supervised'
timestamp=<T> level='warning' event='stacked record' stack_info='Stack (most recent call last):\n  here'
"""[1:]

DAEMON_DEBUG_LINES = r"""
timestamp=<T> level='debug' event='a_debug_event' n=1
timestamp=<T> level='info' event='an_info_event' n=2
timestamp=<T> level='warning' event='a_warning_event' n=3
timestamp=<T> level='error' event='an_error_event' n=4
timestamp=<T> level='critical' event='a_critical_event' n=5
timestamp=<T> level='debug' event='foreign debug'
timestamp=<T> level='info' event='foreign info'
timestamp=<T> level='warning' event='foreign warning'
"""[1:]

DAEMON_WARNING_LINES = r"""
timestamp=<T> level='warning' event='a_warning_event' n=3
timestamp=<T> level='error' event='an_error_event' n=4
timestamp=<T> level='critical' event='a_critical_event' n=5
timestamp=<T> level='warning' event='foreign warning'
"""[1:]

CLI_INFO_LINES = r"""
[info     ] pid_lock_acquired              path=/tmp/x/daemon.pid pid=29044
[warning  ] home_permissions_fixed         new_mode=0700 old_mode=0755 path=/home/me/.omnitron
[error    ] state_write_failed             alpha='two words' dquote='say "hi"' empty= eq='a=b' mapping={'k': 'v'} mid=None newline='a\nb' number=1.5 path=PosixPath('/x') plain=plain quote="it's" tab='a\tb' unicode=héllo zeta=1
[critical ] short
[info     ] an_event_name_longer_than_thirty_characters k=v
[info     ] exactly_thirty_characters_long k=v
[warning  ] count 3 of apps
mine [info     ] reserved                       [x] [y]
[info     ] stack_field                    after=1
a stack
[info     ] exception_field
Traceback: mine
[info     ] both_fields
a stack

===============================================================================

Traceback: mine
[info     ] an event with spaces
"""[1:]

CLI_ERROR_LINES = r"""
[error    ] state_write_failed             alpha='two words' dquote='say "hi"' empty= eq='a=b' mapping={'k': 'v'} mid=None newline='a\nb' number=1.5 path=PosixPath('/x') plain=plain quote="it's" tab='a\tb' unicode=héllo zeta=1
[critical ] short
"""[1:]

WORKER_LINES = r"""
level='info' event='worker_ready' process='api' instance=0 services=['Echo']
level='warning' event='worker_calls_cancelled' count=2
level='error' event='fields' text="it's" nothing=None path=PosixPath('/x')
level='critical' event='critical_one'
level='info' event='reserved' timestamp='mine' after=1
level='warning' event='count 3'
level='info' event='no_fields'
level='error' event='worker_failed' app='a' exc_info=True
"""[1:]

CONSOLE_LINES = r"""
<T> [debug    ] below                          n=1
<T> [info     ] pid_lock_acquired              path=/tmp/x/daemon.pid pid=29044
<T> [warning  ] home_permissions_fixed         new_mode=0700 old_mode=0755 path=/home/me/.omnitron
<T> [error    ] state_write_failed             alpha='two words' dquote='say "hi"' empty= eq='a=b' mapping={'k': 'v'} mid=None newline='a\nb' number=1.5 path=PosixPath('/x') plain=plain quote="it's" tab='a\tb' unicode=héllo zeta=1
<T> [critical ] short
<T> [info     ] an_event_name_longer_than_thirty_characters k=v
<T> [info     ] exactly_thirty_characters_long k=v
<T> [warning  ] count 3 of apps
<T> [info     ] reserved                       [x] [y]
<T> [info     ] stack_field                    after=1
a stack
<T> [info     ] exception_field
Traceback: mine
<T> [info     ] both_fields
a stack

===============================================================================

Traceback: mine
<T> [info     ] an event with spaces
"""[1:]

CONSOLE_COLOR_LINES = r"""
\033[2m<T>\033[0m [\033[32m\033[1mdebug    \033[0m] \033[1mbelow                         \033[0m \033[36mn\033[0m=\033[35m1\033[0m
\033[2m<T>\033[0m [\033[32m\033[1minfo     \033[0m] \033[1mpid_lock_acquired             \033[0m \033[36mpath\033[0m=\033[35m/tmp/x/daemon.pid\033[0m \033[36mpid\033[0m=\033[35m29044\033[0m
\033[2m<T>\033[0m [\033[33m\033[1mwarning  \033[0m] \033[1mhome_permissions_fixed        \033[0m \033[36mnew_mode\033[0m=\033[35m0700\033[0m \033[36mold_mode\033[0m=\033[35m0755\033[0m \033[36mpath\033[0m=\033[35m/home/me/.omnitron\033[0m
\033[2m<T>\033[0m [\033[31m\033[1merror    \033[0m] \033[1mstate_write_failed            \033[0m \033[36malpha\033[0m=\033[35m'two words'\033[0m \033[36mdquote\033[0m=\033[35m'say "hi"'\033[0m \033[36mempty\033[0m=\033[35m\033[0m \033[36meq\033[0m=\033[35m'a=b'\033[0m \033[36mmapping\033[0m=\033[35m{'k': 'v'}\033[0m \033[36mmid\033[0m=\033[35mNone\033[0m \033[36mnewline\033[0m=\033[35m'a\nb'\033[0m \033[36mnumber\033[0m=\033[35m1.5\033[0m \033[36mpath\033[0m=\033[35mPosixPath('/x')\033[0m \033[36mplain\033[0m=\033[35mplain\033[0m \033[36mquote\033[0m=\033[35m"it's"\033[0m \033[36mtab\033[0m=\033[35m'a\tb'\033[0m \033[36municode\033[0m=\033[35mhéllo\033[0m \033[36mzeta\033[0m=\033[35m1\033[0m
\033[2m<T>\033[0m [\033[31m\033[1mcritical \033[0m] \033[1mshort                         \033[0m
\033[2m<T>\033[0m [\033[32m\033[1minfo     \033[0m] \033[1man_event_name_longer_than_thirty_characters\033[0m \033[36mk\033[0m=\033[35mv\033[0m
\033[2m<T>\033[0m [\033[32m\033[1minfo     \033[0m] \033[1mexactly_thirty_characters_long\033[0m \033[36mk\033[0m=\033[35mv\033[0m
\033[2m<T>\033[0m [\033[33m\033[1mwarning  \033[0m] \033[1mcount 3 of apps               \033[0m
\033[2m<T>\033[0m [\033[32m\033[1minfo     \033[0m] \033[1mreserved                      \033[0m [\033[0m\033[1m\033[34mx\033[0m]\033[0m [\033[0m\033[1m\033[34my\033[0m]\033[0m
\033[2m<T>\033[0m [\033[32m\033[1minfo     \033[0m] \033[1mstack_field                   \033[0m \033[36mafter\033[0m=\033[35m1\033[0m
a stack
\033[2m<T>\033[0m [\033[32m\033[1minfo     \033[0m] \033[1mexception_field               \033[0m
Traceback: mine
\033[2m<T>\033[0m [\033[32m\033[1minfo     \033[0m] \033[1mboth_fields                   \033[0m
a stack

===============================================================================

Traceback: mine
\033[2m<T>\033[0m [\033[32m\033[1minfo     \033[0m] \033[1man event with spaces          \033[0m
"""[1:].replace("\\033", "\033")

CONSOLE_EXCEPTION_LINES = r"""
<T> [error    ] handler_failed                 method=daemon.crash
Traceback (most recent call last):
  File "<golden>", line 15, in run
  File "<golden>", line 3, in fail
ValueError: bad 'value'
<T> [error    ] with_exc_info                  after=1
Traceback (most recent call last):
  File "<golden>", line 15, in run
  File "<golden>", line 3, in fail
ValueError: bad 'value'
<T> [error    ] chained_failure
Traceback (most recent call last):
  File "<golden>", line 8, in chained
  File "<golden>", line 3, in fail
ValueError: inner

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "<golden>", line 21, in run
  File "<golden>", line 10, in chained
RuntimeError: outer
<T> [error    ] exception_instance
Traceback (most recent call last):
  File "<golden>", line 15, in run
  File "<golden>", line 3, in fail
ValueError: bad 'value'
<T> [error    ] exception_tuple
Traceback (most recent call last):
  File "<golden>", line 15, in run
  File "<golden>", line 3, in fail
ValueError: bad 'value'
<T> [warning  ] exception_field_replaced       last=2
Traceback (most recent call last):
  File "<golden>", line 15, in run
  File "<golden>", line 3, in fail
ValueError: bad 'value'
"""[1:]


# --------------------------------------------------------------------------- the tests


@pytest.fixture(autouse=True)
def _restored() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in saved[0]:
                handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        _log.configure(None)


def _daemon_log(tmp_path: Path, level: str, *, echo: bool = False) -> Path:
    directory = tmp_path / "logs"
    directory.mkdir(mode=0o700)
    configure_logging(directory / "daemon.log", level=level, echo=echo)
    return directory / "daemon.log"


def test_the_daemon_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _daemon_log(tmp_path, "info", echo=True)
    daemon_events(_log.get_logger("omnitron.golden"), logging.getLogger("supervision.golden"))
    assert _stamps_replaced(path.read_text()) == DAEMON_LINES
    # ``up --foreground`` echoes the same lines on stderr.
    assert _stamps_replaced(capsys.readouterr().err) == DAEMON_LINES


@pytest.mark.parametrize(
    ("level", "expected"), [("debug", DAEMON_DEBUG_LINES), ("warning", DAEMON_WARNING_LINES)]
)
def test_the_daemon_log_at_a_level(tmp_path: Path, level: str, expected: str) -> None:
    path = _daemon_log(tmp_path, level)
    level_events(_log.get_logger("omnitron.golden"), logging.getLogger("supervision.golden"))
    assert _stamps_replaced(path.read_text()) == expected


@pytest.mark.parametrize(
    ("level", "expected"), [("info", CLI_INFO_LINES), ("error", CLI_ERROR_LINES)]
)
def test_the_clis_stderr(level: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    _quiet_logging(level)
    console_events(_log.get_logger("omnitron.state._golden"))
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", expected)


def test_a_workers_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_worker_logging()
    worker_events(_log.get_logger())
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", WORKER_LINES)


@pytest.fixture
def default_console(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], None]:
    """Make the default sink as a process starting with ``environ`` would."""

    def make(environ: dict[str, str]) -> None:
        for name in ("NO_COLOR", "FORCE_COLOR"):
            monkeypatch.delenv(name, raising=False)
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        _log.configure(_log._default())

    return make


@pytest.mark.parametrize(
    ("environ", "expected"),
    [({"NO_COLOR": "1"}, CONSOLE_LINES), ({"FORCE_COLOR": "1"}, CONSOLE_COLOR_LINES)],
)
def test_an_unconfigured_process_prints_on_stdout(
    environ: dict[str, str],
    expected: str,
    default_console: Callable[[dict[str, str]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    default_console(environ)
    console_events(_log.get_logger("omnitron.state._golden"))
    captured = capsys.readouterr()
    assert (_stamps_replaced(captured.out), captured.err) == (expected, "")


def test_an_unconfigured_process_prints_tracebacks_below_the_line(
    default_console: Callable[[dict[str, str]], None], capsys: pytest.CaptureFixture[str]
) -> None:
    default_console({"NO_COLOR": "1"})
    console_exceptions(_log.get_logger("omnitron.state._golden"))
    captured = capsys.readouterr()
    assert (_stamps_replaced(captured.out), captured.err) == (CONSOLE_EXCEPTION_LINES, "")


def test_the_console_stamps_local_time() -> None:
    stream = io.StringIO()
    _log.configure(_log.Console(stream, timestamps=True))
    _log.get_logger().info("now")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[info     \] now\n", stream.getvalue())


# --------------------------------------------------------------------------- the daemon's writes


def test_an_event_is_one_line_in_the_file(tmp_path: Path) -> None:
    path = _daemon_log(tmp_path, "info")
    log = _log.get_logger("omnitron.logs")
    log.warning("app_exited", app="web", instance=0, pid=42, reason="exited with code 1")
    log.info("app_restarting", app="web's", instance=0, delay=0.25)
    assert _stamps_replaced(path.read_text()).splitlines() == [
        "timestamp=<T> level='warning' event='app_exited' app='web' instance=0 pid=42 "
        "reason='exited with code 1'",
        "timestamp=<T> level='info' event='app_restarting' app=\"web's\" instance=0 delay=0.25",
    ]


def test_events_below_the_level_are_not_written(tmp_path: Path) -> None:
    path = _daemon_log(tmp_path, "warning")
    log = _log.get_logger("omnitron.logs")
    log.info("app_online", app="web", instance=0, pid=1)
    log.warning("app_exited", app="web", instance=0)
    assert _stamps_replaced(path.read_text()).splitlines() == [
        "timestamp=<T> level='warning' event='app_exited' app='web' instance=0"
    ]


def test_the_foreground_echo_gets_the_line_without_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # ``up --foreground`` echoes the daemon log on stderr: the lifecycle lines
    # (three per restart) are written there as they are, no record built.
    path = _daemon_log(tmp_path, "info", echo=True)

    def no_record() -> logging.LogRecord:
        raise AssertionError("a record was built")

    monkeypatch.setattr(_logging, "_new_record", no_record)
    log = _log.get_logger("omnitron.logs")
    log.warning("app_exited", app="web", instance=0, reason="exited with code 1")
    log.info("app_online", app="web", instance=0, pid=7)
    monkeypatch.undo()
    echoed = capsys.readouterr().err.splitlines()
    assert echoed == path.read_text().splitlines()
    assert _stamps_replaced("\n".join(echoed)).splitlines() == [
        "timestamp=<T> level='warning' event='app_exited' app='web' instance=0 reason='exited with code 1'",
        "timestamp=<T> level='info' event='app_online' app='web' instance=0 pid=7",
    ]


def test_another_handler_gets_a_record_of_the_line(tmp_path: Path) -> None:
    path = _daemon_log(tmp_path, "info")
    stream = io.StringIO()
    other = logging.StreamHandler(stream)
    other.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(other)
    _log.get_logger("omnitron.logs").warning("app_exited", app="web")
    [line] = path.read_text().splitlines()
    assert stream.getvalue() == f"omnitron.logs WARNING {line}\n"


def test_captured_events_are_not_written(tmp_path: Path) -> None:
    path = _daemon_log(tmp_path, "warning")
    log = _log.get_logger("x")
    with _log.capture_logs() as captured:
        log.debug("app_online", app="web", pid=7)  # captured whatever the level
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("app_failed", app="web")
    log.warning("after", n=1)
    assert captured == [
        {"app": "web", "pid": 7, "event": "app_online", "log_level": "debug"},
        {"app": "web", "exc_info": True, "event": "app_failed", "log_level": "error"},
    ]
    assert _stamps_replaced(path.read_text()).splitlines() == [
        "timestamp=<T> level='warning' event='after' n=1"
    ]
