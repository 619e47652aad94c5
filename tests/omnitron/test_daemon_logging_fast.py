"""The daemon log's direct line for lifecycle events matches structlog's rendering."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from omnitron.daemon._logging import configure_logging, log_event

_STAMP = re.compile(r"^timestamp='\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z' ")


@pytest.fixture
def daemon_log(tmp_path: Path) -> Iterator[Path]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    directory = tmp_path / "logs"
    directory.mkdir(mode=0o700)
    path = directory / "daemon.log"
    handler = configure_logging(path)
    try:
        yield path
    finally:
        handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.reset_defaults()


def test_direct_line_is_the_structlog_line(daemon_log: Path) -> None:
    log = structlog.get_logger("omnitron.logs")
    fields = {"app": "web", "instance": 0, "pid": 42, "reason": "exited with code 1"}
    log.warning("app_exited", **fields)
    log_event(log, "warning", "app_exited", **fields)
    log.info("app_restarting", app="web's", instance=0, delay=0.25)
    log_event(log, "info", "app_restarting", app="web's", instance=0, delay=0.25)
    lines = daemon_log.read_text().splitlines()
    assert len(lines) == 4
    assert all(_STAMP.match(line) for line in lines)
    bodies = [_STAMP.sub("", line) for line in lines]
    assert bodies[0] == bodies[1]
    assert bodies[2] == bodies[3]
    assert bodies[0] == (
        "level='warning' event='app_exited' app='web' instance=0 pid=42 reason='exited with code 1'"
    )


def test_direct_line_honours_the_level(tmp_path: Path) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    directory = tmp_path / "logs"
    directory.mkdir(mode=0o700)
    handler = configure_logging(directory / "daemon.log", level="warning")
    try:
        log = structlog.get_logger("omnitron.logs")
        log_event(log, "info", "app_online", app="web", instance=0, pid=1)
        log_event(log, "warning", "app_exited", app="web", instance=0)
    finally:
        handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.reset_defaults()
    lines = (directory / "daemon.log").read_text().splitlines()
    assert [_STAMP.sub("", line) for line in lines] == [
        "level='warning' event='app_exited' app='web' instance=0"
    ]


def test_unconfigured_logging_goes_through_the_logger() -> None:
    with structlog.testing.capture_logs() as captured:
        log_event(structlog.get_logger("x"), "info", "app_online", app="web", pid=7)
    assert captured == [{"event": "app_online", "app": "web", "pid": 7, "log_level": "info"}]
