"""The daemon's own structured log: ``$OMNITRON_HOME/logs/daemon.log``.

Configured once, by the daemon, at start-up (modules only get loggers). omnitron's
events and the standard ``logging`` records of the supervision library end up in
the same file, one line each::

    timestamp='2026-11-24T00:33:05.926266Z' level='info' event='pid_lock_acquired' pid=869

the time in UTC, then the event's fields in the order they were given, each
value as ``repr`` shows it (an exception as ``exception='Traceback ...'``); a
record's message is its ``event``.

An event's line is rendered once and written straight to the file (and to the
foreground's stderr), without a ``logging`` record: a crash storm logs three
events per restart. Other handlers, if any, get a record of the line.
"""

from __future__ import annotations

import datetime
import logging
import sys
from pathlib import Path
from typing import Any

from .. import _log
from ._safefile import SafeFileHandler, check_log_directory

__all__ = ["configure_logging"]

_FIRST = ("timestamp", "level", "event")
_UTC = datetime.UTC


def _line(level: str, event: str, fields: dict[str, object]) -> str:
    """The daemon log's line of ``event``: stamped now, its ``exc_info`` rendered.

    A field named like one of the first three keys is replaced by it.
    """
    stamp = datetime.datetime.now(tz=_UTC).isoformat().replace("+00:00", "Z")
    line = f"timestamp={stamp!r} level={level!r} event={event!r}"
    if "exc_info" in fields:
        fields = dict(fields)
        exc_info = _log.exc_info_of(fields.pop("exc_info"))
        if exc_info is not None:
            fields["exception"] = _log.format_exception(exc_info)
    return line + _log.key_values(fields, _FIRST)


class _Formatter(logging.Formatter):
    """The daemon log's formatter: an event's line as it is; a ``logging`` record
    (the supervision library's) as a line of its own, its message as ``event``."""

    def format(self, record: logging.LogRecord) -> str:
        line = getattr(record, "omnitron_line", None)
        if isinstance(line, str):
            return line
        fields: dict[str, object] = {}
        if record.exc_info:
            fields["exc_info"] = record.exc_info
        if record.stack_info:
            fields["stack_info"] = record.stack_info
        return _line(record.levelname.lower(), record.getMessage(), fields)


class _DaemonLog:
    """The sink of the daemon's events: the root logger's handlers, at its level."""

    __slots__ = ("level",)

    def __init__(self, level: int) -> None:
        self.level = level

    def emit(
        self, name: str, level: str, levelno: int, event: str, fields: dict[str, object]
    ) -> None:
        root = logging.root
        if not root.isEnabledFor(levelno):
            return
        line = _line(level, event, fields)
        record: logging.LogRecord | None = None
        for handler in root.handlers:
            if levelno < handler.level:
                continue
            if not handler.filters and isinstance(handler.formatter, _Formatter):
                # The file, and the foreground's stderr, get the line itself: no record.
                if isinstance(handler, SafeFileHandler):
                    handler.write_line(line)
                    continue
                if type(handler) is logging.StreamHandler:
                    _echo(handler, line, name, levelno)
                    continue
            if record is None:
                record = _record_of(line, name, levelno)  # for the other handlers
            handler.handle(record)


def _echo(handler: logging.StreamHandler[Any], line: str, name: str, levelno: int) -> None:
    """What ``handler.handle`` does with a record of ``line`` (``emit``: write, flush),
    without the record and its formatting."""
    with handler.lock:  # type: ignore[union-attr]  # created by Handler.__init__
        try:
            stream = handler.stream
            stream.write(line + handler.terminator)
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            handler.handleError(_record_of(line, name, levelno))


def _record_of(line: str, name: str, levelno: int) -> logging.LogRecord:
    # A copy of a template instead of LogRecord's constructor (process, thread
    # and caller lookups); the formatter passes the line as is.
    record = _new_record()
    record.__dict__.update(_TEMPLATE)
    record.name = name
    record.levelno = levelno
    record.levelname = logging.getLevelName(levelno)
    record.msg = record.omnitron_line = line
    return record


_TEMPLATE = logging.LogRecord("omnitron", logging.INFO, __file__, 0, "", None, None).__dict__


def _new_record() -> logging.LogRecord:
    return logging.LogRecord.__new__(logging.LogRecord)


def configure_logging(
    log_file: Path, *, level: str = "info", echo: bool = False
) -> SafeFileHandler:
    """Send every event and log record to ``log_file`` (and to stderr when ``echo``).

    Returns the file's handler: its ``failures`` counts the lines it could not write.
    """
    numeric = getattr(logging, level.upper(), logging.INFO)
    formatter = _Formatter()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    check_log_directory(log_file.parent)
    file_handler = SafeFileHandler(log_file)  # never through a planted link (PC-15)
    file_handler.setFormatter(formatter)
    root.addHandler(file_handler)
    if echo:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        root.addHandler(stream)
    root.setLevel(numeric)
    _log.configure(_DaemonLog(numeric))
    return file_handler
