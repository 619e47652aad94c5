"""The daemon's own structured log: ``$OMNITRON_HOME/logs/daemon.log``.

Configured once, by the daemon, at start-up (libraries only get loggers). Both
structlog events and the standard ``logging`` records of the supervision library
end up in the same file, one ``key=value`` line each.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog

from ._safefile import SafeFileHandler, check_log_directory

__all__ = ["configure_logging"]


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
    formatter = structlog.stdlib.ProcessorFormatter(
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
