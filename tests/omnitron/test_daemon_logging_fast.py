"""The daemon log's direct line for lifecycle events matches structlog's rendering."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from omnitron.daemon import _logging
from omnitron.daemon._logging import configure_logging, log_event
from omnitron.daemon._safefile import CHECK_BYTES, SafeFileHandler

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


def test_the_foreground_echo_gets_the_direct_line_without_a_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # ``up --foreground`` echoes the daemon log on stderr: the lifecycle lines
    # (three per restart) are written there as they are, no record built.
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    directory = tmp_path / "logs"
    directory.mkdir(mode=0o700)
    handler = configure_logging(directory / "daemon.log", echo=True)

    def no_record() -> logging.LogRecord:
        raise AssertionError("a record was built")

    try:
        monkeypatch.setattr(_logging, "_new_record", no_record)
        log = structlog.get_logger("omnitron.logs")
        log_event(log, "warning", "app_exited", app="web", instance=0, reason="exited with code 1")
        log_event(log, "info", "app_online", app="web", instance=0, pid=7)
    finally:
        handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.reset_defaults()
    echoed = capsys.readouterr().err.splitlines()
    assert echoed == (directory / "daemon.log").read_text().splitlines()
    assert [_STAMP.sub("", line) for line in echoed] == [
        "level='warning' event='app_exited' app='web' instance=0 reason='exited with code 1'",
        "level='info' event='app_online' app='web' instance=0 pid=7",
    ]


def test_unconfigured_logging_goes_through_the_logger() -> None:
    with structlog.testing.capture_logs() as captured:
        log_event(structlog.get_logger("x"), "info", "app_online", app="web", pid=7)
    assert captured == [{"event": "app_online", "app": "web", "pid": 7, "log_level": "info"}]


# --------------------------------------------------------------------------- rotation


class _Clock:
    """Virtual time for the handler's looks at its file's name."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[tuple[SafeFileHandler, _Clock, Path]]:
    directory = tmp_path / "logs"
    directory.mkdir(mode=0o700)
    clock = _Clock()
    path = directory / "daemon.log"
    handler = SafeFileHandler(path, check_interval=1.0, clock=clock)
    handler.setFormatter(logging.Formatter("%(message)s"))
    try:
        yield handler, clock, path
    finally:
        handler.close()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_a_moved_log_is_followed_by_a_new_file_within_the_interval(
    handler: tuple[SafeFileHandler, _Clock, Path],
) -> None:
    log, clock, path = handler
    log.write_line("one")
    moved = path.with_name("daemon.log.1")
    path.rename(moved)  # logrotate
    clock.now += 0.5
    log.write_line("two")  # not looked yet: still the moved file
    assert not path.exists()
    clock.now += 0.5
    log.emit(logging.makeLogRecord({"msg": "three"}))  # a record goes the same way
    log.write_line("four")
    assert _lines(moved) == ["one", "two"]
    assert _lines(path) == ["three", "four"]
    assert log.failures == 0


def test_lines_written_to_a_removed_log_are_written_again_to_the_new_one(
    handler: tuple[SafeFileHandler, _Clock, Path],
) -> None:
    log, clock, path = handler
    log.write_line("one")
    clock.now += 1.0
    log.write_line("two")  # a look: the file is in place
    path.unlink()
    log.write_line("three")
    log.write_line("four")
    assert not path.exists()
    clock.now += 1.0
    log.write_line("five")
    # What went to the file since the last look ("two" came before the removal,
    # "three" and "four" after it) is written again, in order: nothing is lost.
    assert _lines(path) == ["two", "three", "four", "five"]


def test_enough_bytes_make_a_look_before_the_interval(
    handler: tuple[SafeFileHandler, _Clock, Path],
) -> None:
    log, _, path = handler
    path.unlink()
    line = "x" * 1000
    for _ in range(CHECK_BYTES // len(line) + 2):
        log.write_line(line)
    assert path.exists()  # no time went by: the bytes written made it look
    assert _lines(path) == [line] * (CHECK_BYTES // len(line) + 2)


def test_a_line_is_one_write(
    handler: tuple[SafeFileHandler, _Clock, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _, path = handler
    writes: list[bytes] = []
    real = os.write

    def write(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)
    log.write_line("timestamp='x' level='info' event='app_online' app='web' instance=0")
    assert writes == [b"timestamp='x' level='info' event='app_online' app='web' instance=0\n"]
    monkeypatch.undo()
    assert path.read_bytes() == writes[0]
