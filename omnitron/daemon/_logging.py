"""The daemon's own structured log: ``$OMNITRON_HOME/logs/daemon.log``.

Configured once, by the daemon, at start-up (libraries only get loggers). Both
structlog events and the standard ``logging`` records of the supervision library
end up in the same file, one ``key=value`` line each.

:func:`log_event` writes the same line for the events the daemon logs on every
restart of an app, rendered directly instead of through structlog's and the
standard library's processor chains (a crash storm logs three per restart).
"""

from __future__ import annotations

import datetime
import logging
import sys
from pathlib import Path
from typing import Any

import structlog

from ._safefile import SafeFileHandler, check_log_directory

__all__ = ["configure_logging", "log_event"]

_KEY_ORDER = ["timestamp", "level", "event"]
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_UTC = datetime.UTC
_CONTEXT_VARS: dict[str, Any] = getattr(structlog.contextvars, "_CONTEXT_VARS", {"?": None})
"""structlog's context variables by name, once bound (a stand-in that is never
empty where structlog keeps them elsewhere: then they are always looked up)."""


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """The daemon log's formatter; a record :func:`log_event` rendered passes as is."""

    def format(self, record: logging.LogRecord) -> str:
        line = getattr(record, "omnitron_line", None)
        return line if isinstance(line, str) else super().format(record)


def log_event(logger: Any, level: str, event: str, **fields: Any) -> None:
    """Log ``event`` with ``fields`` at ``level`` as ``logger.<level>(event, **fields)`` would.

    While the root logger writes only through :func:`configure_logging`'s
    handlers, the line (``timestamp=... level=... event=... key=repr(value)...``,
    context variables first among the fields, as the key-value renderer orders
    them) is rendered here and handed to those handlers as one record;
    otherwise (not configured, or a test capturing logs) it goes through ``logger``.
    """
    numeric = _LEVELS.get(level)
    root = logging.root
    handlers = root.handlers
    direct = numeric is not None and bool(handlers)
    for handler in handlers:
        if not isinstance(handler.formatter, _Formatter):
            direct = False
            break
    if not direct or numeric is None:
        getattr(logger, level)(event, **fields)
        return
    if not root.isEnabledFor(numeric):
        return
    stamp = datetime.datetime.now(tz=_UTC).isoformat().replace("+00:00", "Z")
    # No context variable was ever bound (the daemon binds none): no copy of the
    # context to look for them.
    items = {**structlog.contextvars.get_contextvars(), **fields} if _CONTEXT_VARS else fields
    for key in _KEY_ORDER:
        if key in items:
            if items is fields:
                items = dict(fields)
            del items[key]
    line = f"timestamp={stamp!r} level={level!r} event={event!r}"
    for key, value in items.items():
        line += f" {key}={value!r}"
    record: logging.LogRecord | None = None
    for handler in handlers:
        if numeric < handler.level:
            continue
        if not handler.filters:
            # The file, and the foreground's stderr, get the line itself: no record.
            if isinstance(handler, SafeFileHandler):
                handler.write_line(line)
                continue
            if type(handler) is logging.StreamHandler:
                _echo(handler, line, numeric)
                continue
        if record is None:
            record = _record_of(line, numeric)  # for the other handlers
        handler.handle(record)


def _echo(handler: logging.StreamHandler[Any], line: str, numeric: int) -> None:
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
            handler.handleError(_record_of(line, numeric))


def _record_of(line: str, numeric: int) -> logging.LogRecord:
    # A copy of a template instead of LogRecord's constructor (process, thread
    # and caller lookups); the formatter passes the line as is.
    record = _new_record()
    record.__dict__.update(_TEMPLATE)
    record.levelno = numeric
    record.levelname = logging.getLevelName(numeric)
    record.msg = record.omnitron_line = line
    return record


_TEMPLATE = logging.LogRecord("omnitron", logging.INFO, __file__, 0, "", None, None).__dict__


def _new_record() -> logging.LogRecord:
    return logging.LogRecord.__new__(logging.LogRecord)


def configure_logging(
    log_file: Path, *, level: str = "info", echo: bool = False
) -> SafeFileHandler:
    """Send every log record to ``log_file`` (and to stderr when ``echo``).

    Returns the file's handler: its ``failures`` counts the records it could not write.
    """
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    formatter = _Formatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(
                key_order=["timestamp", "level", "event"], drop_missing=True
            ),
        ],
    )
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
    return file_handler
