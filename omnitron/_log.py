"""omnitron's structured log: named events with fields, one line each.

Modules only get a logger (``log = get_logger("omnitron.daemon")``) and log facts
with typed fields: ``log.info("pid_lock_acquired", path=str(path), pid=pid)``.
The process that runs them decides once, with :func:`configure`, where the lines
go and how they look:

- the daemon writes ``timestamp=... level=... event=... key=repr(value)...``
  lines through its ``logging`` handlers (:mod:`omnitron.daemon._logging`);
- ``omnitron down`` and ``kill`` print :class:`Console` lines on stderr, at a level;
- a worker prints :class:`KeyValues` lines (``level=... event=...``) on stderr.

Until a process configures anything, every event is printed on stdout as a
:class:`Console` line with the local time (colored on a terminal, unless
``NO_COLOR`` is set).

A logger costs one small object and a level check per call; an event below the
configured level builds nothing. Tests assert on the events themselves, not on
lines: :func:`capture_logs`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Container, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Protocol, TextIO, TypeAlias

__all__ = [
    "DEBUG",
    "INFO",
    "WARNING",
    "ERROR",
    "CRITICAL",
    "LEVELS",
    "Logger",
    "get_logger",
    "Sink",
    "configure",
    "Console",
    "KeyValues",
    "key_values",
    "exc_info_of",
    "format_exception",
    "capture_logs",
]

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40
CRITICAL = 50
"""The levels, numbered as the standard ``logging`` module numbers them."""
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR, "critical": CRITICAL}
"""Level numbers by name (the names the config and the lines use)."""

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
Fields: TypeAlias = dict[str, object]


class Sink(Protocol):
    """Where the events of a process go (see :func:`configure`)."""

    level: int
    """Events below this level are dropped before anything is built for them."""

    def emit(self, name: str, level: str, levelno: int, event: str, fields: Fields) -> None:
        """Write ``event`` of logger ``name``; ``fields`` is the caller's own dict.

        ``level`` is the level's name (``"error"`` for :meth:`Logger.exception`,
        whose ``fields`` then hold ``exc_info``), ``levelno`` its number.
        """


class Logger:
    """Logs named events; every call goes to the sink configured at that moment.

    ``event`` may carry ``%`` placeholders for ``args`` (or for a single mapping),
    filled in only when the event is logged.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, event: str, *args: object, **fields: object) -> None:
        if _sink.level <= DEBUG:
            _sink.emit(self.name, "debug", DEBUG, _message(event, args) if args else event, fields)

    def info(self, event: str, *args: object, **fields: object) -> None:
        if _sink.level <= INFO:
            _sink.emit(self.name, "info", INFO, _message(event, args) if args else event, fields)

    def warning(self, event: str, *args: object, **fields: object) -> None:
        if _sink.level <= WARNING:
            _sink.emit(
                self.name, "warning", WARNING, _message(event, args) if args else event, fields
            )

    def error(self, event: str, *args: object, **fields: object) -> None:
        if _sink.level <= ERROR:
            _sink.emit(self.name, "error", ERROR, _message(event, args) if args else event, fields)

    def exception(self, event: str, *args: object, **fields: object) -> None:
        """:meth:`error` with the exception being handled (``exc_info=True`` unless given)."""
        if _sink.level <= ERROR:
            fields.setdefault("exc_info", True)
            _sink.emit(self.name, "error", ERROR, _message(event, args) if args else event, fields)

    def critical(self, event: str, *args: object, **fields: object) -> None:
        if _sink.level <= CRITICAL:
            _sink.emit(
                self.name, "critical", CRITICAL, _message(event, args) if args else event, fields
            )


def _message(event: str, args: tuple[object, ...]) -> str:
    if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
        return event % args[0]
    return event % args


def get_logger(name: str | None = None) -> Logger:
    """A logger named ``name``, by default after the calling module.

    The name reaches only the records the daemon hands to ``logging`` handlers
    that are not its own (see :mod:`omnitron.daemon._logging`).
    """
    if name is None:
        name = str(sys._getframe(1).f_globals.get("__name__", "omnitron"))
    return Logger(name)


# --------------------------------------------------------------------------- rendering


def key_values(fields: Fields, skip: Container[str]) -> str:
    """`` key=repr(value)`` for each field but those in ``skip``, in their order."""
    return "".join(f" {key}={value!r}" for key, value in fields.items() if key not in skip)


def exc_info_of(value: object) -> ExcInfo | None:
    """The exception an ``exc_info`` field names: an exception, an ``exc_info``
    tuple, or any true value for the exception being handled (``None`` if none is)."""
    if isinstance(value, BaseException):
        return (value.__class__, value, value.__traceback__)
    if isinstance(value, tuple) and len(value) == 3:
        kind, exc, tb = value
        if (
            isinstance(kind, type)
            and issubclass(kind, BaseException)
            and isinstance(exc, BaseException)
            and (tb is None or isinstance(tb, TracebackType))
        ):
            return (kind, exc, tb)
    if value:
        kind, exc, tb = sys.exc_info()
        if kind is not None and exc is not None:
            return (kind, exc, tb)
    return None


def format_exception(exc_info: ExcInfo) -> str:
    """The traceback Python prints for ``exc_info``, without its last newline."""
    import traceback  # only when an exception is logged

    text = "".join(traceback.format_exception(*exc_info))
    return text[:-1] if text.endswith("\n") else text


_RESET = "\033[0m"
_BRIGHT = "\033[1m"
_COLUMN_COLORS = (_RESET, _BRIGHT, "\033[2m", _BRIGHT + "\033[34m", "\033[36m", "\033[35m")
"""Reset, bright (the event), dim (the time), the logger's name, keys, values."""
_LEVEL_COLORS = {
    **dict.fromkeys(("critical", "exception", "error"), "\033[31m" + _BRIGHT),
    **dict.fromkeys(("warn", "warning"), "\033[33m" + _BRIGHT),
    **dict.fromkeys(("info", "debug"), "\033[32m" + _BRIGHT),
    "notset": "\033[41m" + _BRIGHT,
}
_LEVEL_WIDTH = len("exception")  # the longest level name a console line pads to
_EVENT_WIDTH = 30
_QUOTED = frozenset(" \t=\r\n\"'")


def _console_value(value: object) -> str:
    if isinstance(value, str) and not _QUOTED.intersection(value):
        return value
    return repr(value)


def _console_line(event_dict: Fields, colors: bool) -> str:
    """``[level    ] event                          key=value ...``: the timestamp (if
    any), the level and the event padded to columns, the other keys sorted, plain
    strings unquoted; then ``stack``, and the exception on the lines below."""
    stack = event_dict.pop("stack", None)
    exception = event_dict.pop("exception", None)
    exc_info = event_dict.pop("exc_info", None)
    reset, bright, dim, blue, cyan, magenta = _COLUMN_COLORS if colors else ("",) * 6
    columns = []
    if "timestamp" in event_dict:
        columns.append(f"{dim}{event_dict.pop('timestamp')}{reset}")
    if "level" in event_dict:
        level = str(event_dict.pop("level"))
        color = _LEVEL_COLORS.get(level, "") if colors else ""
        columns.append(f"[{color}{level:<{_LEVEL_WIDTH}}{reset}]")
    if "event" in event_dict:
        columns.append(f"{bright}{event_dict.pop('event')!s:<{_EVENT_WIDTH}}{reset}")
    for key in ("logger", "logger_name"):
        if key in event_dict:
            columns.append(f"[{reset}{blue}{event_dict.pop(key)}{reset}]{reset}")
    columns.extend(
        f"{cyan}{key}{reset}={magenta}{_console_value(event_dict[key])}{reset}"
        for key in sorted(event_dict)
    )
    line = " ".join(column for column in columns if column).rstrip(" ")
    if stack is not None:
        line += f"\n{stack}"
        if exc_info or exception is not None:
            line += "\n\n" + "=" * 79 + "\n"
    info = exc_info_of(exc_info)
    if info is not None:
        line += "\n" + format_exception(info)
    elif exception is not None:
        line += f"\n{exception}"
    return line


class Console:
    """A sink printing console lines (:func:`_console_line`) on ``stream``.

    Args:
        stream: Where to print; ``None`` for whatever ``sys.stdout`` is at the time.
        level: The lowest level printed.
        timestamps: Start each line with the local time (``2026-11-24 00:33:05``).
        colors: Color the columns with ANSI escapes.
    """

    __slots__ = ("_colors", "_stream", "_timestamps", "level")

    def __init__(
        self,
        stream: TextIO | None,
        *,
        level: int = 0,
        timestamps: bool = False,
        colors: bool = False,
    ) -> None:
        self._stream = stream
        self.level = level
        self._timestamps = timestamps
        self._colors = colors

    def emit(self, name: str, level: str, levelno: int, event: str, fields: Fields) -> None:
        event_dict = {**fields, "event": event, "level": level}
        if self._timestamps:
            event_dict["timestamp"] = time.strftime("%Y-%m-%d %H:%M:%S")
        print(_console_line(event_dict, self._colors), file=self._stream, flush=True)


class KeyValues:
    """A sink printing ``level='info' event='worker_ready' key=repr(value)...`` on ``stream``."""

    __slots__ = ("_stream", "level")

    def __init__(self, stream: TextIO, *, level: int = 0) -> None:
        self._stream = stream
        self.level = level

    def emit(self, name: str, level: str, levelno: int, event: str, fields: Fields) -> None:
        line = f"level={level!r} event={event!r}{key_values(fields, _FIRST)}"
        print(line, file=self._stream, flush=True)


_FIRST = ("level", "event")


def _default() -> Console:
    isatty = getattr(sys.stdout, "isatty", None)
    colors = not os.environ.get("NO_COLOR") and bool(
        os.environ.get("FORCE_COLOR") or (isatty is not None and isatty())
    )
    return Console(None, timestamps=True, colors=colors)


_DEFAULT: Sink = _default()
_sink: Sink = _DEFAULT


def configure(sink: Sink | None = None) -> Sink:
    """Send every event of this process to ``sink`` (``None``: back to the default).

    Returns the sink replaced, for a caller that puts it back.
    """
    global _sink
    previous, _sink = _sink, _DEFAULT if sink is None else sink
    return previous


# --------------------------------------------------------------------------- testing


class _Capture:
    level = 0

    def __init__(self) -> None:
        self.entries: list[Fields] = []

    def emit(self, name: str, level: str, levelno: int, event: str, fields: Fields) -> None:
        self.entries.append({**fields, "event": event, "log_level": level})


@contextmanager
def capture_logs() -> Iterator[list[Fields]]:
    """Collect the events logged inside the block, at every level, instead of writing them.

    Each is a dict of its fields, ``event`` and ``log_level`` (``"error"`` for
    :meth:`Logger.exception`, with ``exc_info`` as given, ``True`` by default).
    """
    capture = _Capture()
    previous = configure(capture)
    try:
        yield capture.entries
    finally:
        configure(previous)
