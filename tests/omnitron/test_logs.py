"""The log collector on real files: byte buffer, rate limit, rotation, ring, emptying."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from omnitron.daemon._logs import LogCollector, LogLine


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    directory = tmp_path / "logs"
    directory.mkdir(mode=0o700)
    return directory


def texts(path: Path) -> list[str]:
    return [line.split(" | ", 1)[1] for line in path.read_text().splitlines()]


async def test_the_buffer_is_counted_in_bytes_and_drops_the_oldest(logs: Path) -> None:
    collector = LogCollector(logs, buffer_bytes=1000)
    sink = collector.sink("web", 0, "out")
    for i in range(100):
        sink(f"line {i:03d} " + "x" * 40)  # ~80 bytes with the prefix
    await collector.flush()
    lines = texts(logs / "web.log")
    assert lines[0].endswith("lines dropped (log buffer full)")
    dropped = int(lines[0].split()[0])
    kept = [int(line.split()[1]) for line in lines[1:]]
    assert kept == list(range(dropped, 100))
    assert 5 <= len(kept) <= 13
    assert collector.stats("web")["dropped_lines"] == dropped


async def test_lines_past_the_rate_are_suppressed_with_a_marker_and_counted(logs: Path) -> None:
    now = [0.0]
    collector = LogCollector(logs, rate=1000, burst=1000, monotonic=lambda: now[0])
    sink = collector.sink("web", 0, "out")
    for i in range(100):
        sink(f"a {i}")  # each costs its length plus 64: 14 fit in 1000 bytes
    kept_first = len(collector.tail("web"))
    assert kept_first == 14
    now[0] = 10.0  # the bucket refills
    sink("after the pause")
    await collector.flush()
    lines = texts(logs / "web.log")
    suppressed = 100 - kept_first
    assert lines[kept_first] == f"suppressed {suppressed} lines (rate limit)"
    assert lines[-1] == "after the pause"
    assert collector.stats("web")["suppressed_lines"] == suppressed


async def test_suppressed_lines_with_nothing_after_still_get_their_marker(logs: Path) -> None:
    collector = LogCollector(logs, rate=0.001, burst=100, monotonic=lambda: 0.0)
    sink = collector.sink("web", 0, "out")
    sink("kept")
    sink("lost")
    await collector.flush()
    assert texts(logs / "web.log") == ["kept", "suppressed 1 lines (rate limit)"]


def read_all(logs: Path, app: str) -> list[str]:
    """Every line of ``app``'s files, oldest file first (rotated ``.N[.gz]``, then current)."""
    rotated = sorted(
        (p for p in logs.iterdir() if p.name.startswith(f"{app}.log.")),
        key=lambda p: -int(p.name.split(".")[2]),
    )
    lines: list[str] = []
    for path in [*rotated, logs / f"{app}.log"]:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        lines += data.decode().splitlines()
    return lines


@pytest.mark.parametrize("compress", [True, False])
async def test_rotation_loses_and_doubles_no_line(logs: Path, compress: bool) -> None:
    collector = LogCollector(logs, max_size=20_000, max_files=100, compress=compress)
    sink = collector.sink("web", 0, "out")
    count = 0
    for burst in (1, 700, 3, 2500, 40, 1200):  # batches smaller and larger than a file
        for _ in range(burst):
            sink(f"n={count:06d} " + "y" * (count % 50))
            count += 1
        await collector.flush()
    assert collector.rotations >= 10
    numbers = [int(line.split("n=")[1][:6]) for line in read_all(logs, "web")]
    assert numbers == list(range(count))
    suffix = ".gz" if compress else ""
    names = os.listdir(logs)
    assert f"web.log.1{suffix}" in names
    for name in names:
        if name != "web.log" and not compress:
            assert os.stat(logs / name).st_size <= 20_000
        assert not name.endswith(".partial"), f"a partial file was left: {name}"


async def test_rotation_keeps_max_files(logs: Path) -> None:
    collector = LogCollector(logs, max_size=1000, max_files=3, compress=True)
    sink = collector.sink("web", 0, "out")
    for i in range(500):
        sink(f"n={i:06d}")
        if i % 50 == 0:
            await collector.flush()
    await collector.flush()
    assert sorted(os.listdir(logs)) == [
        "web.log",
        "web.log.1.gz",
        "web.log.2.gz",
        "web.log.3.gz",
    ]
    numbers = [int(line.split("n=")[1]) for line in read_all(logs, "web")]
    assert numbers == list(range(numbers[0], 500))  # the newest lines, contiguous


async def test_the_ring_answers_right_after_a_rotation(logs: Path) -> None:
    collector = LogCollector(logs, max_size=500, max_files=1, ring=5)
    sink = collector.sink("web", 1, "err")
    for i in range(50):
        sink(f"line {i}")
    await collector.flush()
    assert collector.rotations >= 1
    tail = collector.tail("web")
    assert [line.text for line in tail] == [f"line {i}" for i in range(45, 50)]
    assert tail[-1].app == "web"
    assert tail[-1].instance == 1
    assert tail[-1].stream == "err"


async def test_followers_get_every_line_and_notes(logs: Path) -> None:
    collector = LogCollector(logs)
    seen: list[LogLine] = []
    stop = collector.add_follower(seen.append)
    collector.sink("web", 0, "out")("hello")
    collector.note("web", "web[0] exited with code 3")
    stop()
    collector.sink("web", 0, "out")("unseen")
    assert [(line.stream, line.text) for line in seen] == [
        ("out", "hello"),
        ("sys", "web[0] exited with code 3"),
    ]


async def test_emptying_truncates_the_file_removes_rotated_ones_and_clears_the_ring(
    logs: Path,
) -> None:
    collector = LogCollector(logs, max_size=300, max_files=5, compress=False)
    sink = collector.sink("web", 0, "out")
    for i in range(40):
        sink(f"line {i}")
    emptied = await collector.empty(["web"])
    assert emptied == [str(logs / "web.log")]
    assert os.listdir(logs) == ["web.log"]
    assert (logs / "web.log").read_bytes() == b""
    assert collector.tail("web") == []
    sink("after")
    await collector.flush()
    assert texts(logs / "web.log") == ["after"]


async def test_a_failing_follower_is_dropped_and_the_line_still_kept(logs: Path) -> None:
    collector = LogCollector(logs)

    def broken(line: LogLine) -> None:
        raise ValueError("bad follower")

    seen: list[LogLine] = []
    collector.add_follower(broken)
    collector.add_follower(seen.append)
    sink = collector.sink("web", 0, "out")
    sink("one")
    sink("two")
    assert [line.text for line in collector.tail("web")] == ["one", "two"]
    assert [line.text for line in seen] == ["one", "two"]


def test_lines_reach_the_file_on_one_line_without_terminal_escapes() -> None:
    """Controls are written as ``\\xNN`` (a tab stays); the ring keeps the text as read."""
    from omnitron.daemon._logs import _clean

    plain = "2026 a[0] out | plain ascii\n2026 a[0] out | é unicode\n"
    assert _clean(plain) == plain
    dirty = "t | red \x1b[31mRED\x1b[0m\rback\n" + "t | tab\there\n" + "t | c1 \x9b2J bidi \u202e\n"
    assert _clean(dirty) == (
        "t | red \\x1b[31mRED\\x1b[0m\\x0dback\n"
        + "t | tab\there\n"
        + "t | c1 \\x9b2J bidi \\x202e\n"
    )
