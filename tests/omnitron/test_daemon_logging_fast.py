"""The daemon log's file: it follows a rotated or removed file, one write a line."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnitron.daemon._safefile import CHECK_BYTES, SafeFileHandler

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
