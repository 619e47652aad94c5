"""The log collector on real files: byte buffer, rate limit, rotation, ring, emptying."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from omnitron.daemon._logs import LogCollector, LogLine


def line(text: str) -> bytes:
    """``text`` as the pump hands it to a batch sink: one whole line of bytes."""
    return text.encode() + b"\n"


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
        sink(line(f"line {i:03d} " + "x" * 40))  # ~80 bytes with the prefix
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
        sink(line(f"a {i}"))  # each costs its length plus 64: 14 fit in 1000 bytes
    kept_first = len(collector.tail("web"))
    assert kept_first == 14
    now[0] = 10.0  # the bucket refills
    sink(line("after the pause"))
    await collector.flush()
    lines = texts(logs / "web.log")
    suppressed = 100 - kept_first
    assert lines[kept_first] == f"suppressed {suppressed} lines (rate limit)"
    assert lines[-1] == "after the pause"
    assert collector.stats("web")["suppressed_lines"] == suppressed


async def test_suppressed_lines_with_nothing_after_still_get_their_marker(logs: Path) -> None:
    collector = LogCollector(logs, rate=0.001, burst=100, monotonic=lambda: 0.0)
    sink = collector.sink("web", 0, "out")
    sink(line("kept"))
    sink(line("lost"))
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
            sink(line(f"n={count:06d} " + "y" * (count % 50)))
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
        sink(line(f"n={i:06d}"))
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
        sink(line(f"line {i}"))
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
    collector.sink("web", 0, "out")(line("hello"))
    collector.note("web", "web[0] exited with code 3")
    stop()
    collector.sink("web", 0, "out")(line("unseen"))
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
        sink(line(f"line {i}"))
    emptied = await collector.empty(["web"])
    assert emptied == [str(logs / "web.log")]
    assert os.listdir(logs) == ["web.log"]
    assert (logs / "web.log").read_bytes() == b""
    assert collector.tail("web") == []
    sink(line("after"))
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
    sink(line("one"))
    sink(line("two"))
    assert [line.text for line in collector.tail("web")] == ["one", "two"]
    assert [line.text for line in seen] == ["one", "two"]


def test_lines_reach_the_file_on_one_line_without_terminal_escapes() -> None:
    """Controls are written as ``\\xNN`` (a tab stays); the ring keeps the text as read."""
    from omnitron.daemon._logs import _clean

    plain = "2026 a[0] out | plain ascii\n2026 a[0] out | é unicode\n".encode()
    assert _clean(plain) is plain
    dirty = "t | red \x1b[31mRED\x1b[0m\rback\n" + "t | tab\there\n" + "t | c1 \x9b2J bidi \u202e\n"
    assert (
        _clean(dirty.encode())
        == (
            "t | red \\x1b[31mRED\\x1b[0m\\x0dback\n"
            + "t | tab\there\n"
            + "t | c1 \\x9b2J bidi \\x202e\n"
        ).encode()
    )
    assert _clean(b"t | bad \xff\xfe utf-8\n") == "t | bad \ufffd\ufffd utf-8\n".encode()


def lines_of(*texts: str) -> bytes:
    """One read of several whole lines, as the pump hands it over."""
    return "".join(text + "\n" for text in texts).encode()


async def test_a_read_past_the_rate_keeps_its_first_lines_and_counts_the_rest(
    logs: Path,
) -> None:
    now = [0.0]
    collector = LogCollector(logs, rate=1000, burst=1000, monotonic=lambda: now[0])
    sink = collector.sink("web", 0, "out")
    sink(lines_of(*(f"a {i}" for i in range(10))))  # 10 x (4 bytes + 64): 680 fit
    sink(lines_of(*(f"b {i}" for i in range(10))))  # 4 of these fit in the 320 left
    now[0] = 10.0
    sink(line("after the pause"))
    await collector.flush()
    got = texts(logs / "web.log")
    kept = [f"a {i}" for i in range(10)] + [f"b {i}" for i in range(4)]
    assert got == [*kept, "suppressed 6 lines (rate limit)", "after the pause"]
    assert collector.stats("web")["suppressed_lines"] == 6


async def test_a_full_buffer_drops_the_oldest_lines_of_a_read_not_the_read(logs: Path) -> None:
    collector = LogCollector(logs, buffer_bytes=2000)
    sink = collector.sink("web", 0, "out")
    sink(lines_of(*(f"old {i:03d} " + "x" * 40 for i in range(30))))  # ~2,700 bytes tagged
    sink(line("new"))
    await collector.flush()
    got = texts(logs / "web.log")
    dropped = int(got[0].split()[0])
    assert got[0].endswith("lines dropped (log buffer full)")
    assert 0 < dropped < 30
    assert got[1:] == [f"old {i:03d} " + "x" * 40 for i in range(dropped, 30)] + ["new"]
    assert collector.stats("web")["dropped_lines"] == dropped


async def test_a_read_reaches_the_ring_and_followers_line_by_line(logs: Path) -> None:
    collector = LogCollector(logs, ring=5)
    seen: list[LogLine] = []
    collector.add_follower(seen.append)
    sink = collector.sink("web", 2, "err")
    sink(lines_of(*(f"first {i}" for i in range(4))))
    sink(b"bad \xff utf-8\n" + lines_of(*(f"second {i}" for i in range(7))))
    texts_in_order = [f"first {i}" for i in range(4)] + ["bad \ufffd utf-8"]
    texts_in_order += [f"second {i}" for i in range(7)]
    assert [record.text for record in seen] == texts_in_order
    tail = collector.tail("web")
    assert [record.text for record in tail] == texts_in_order[-5:]
    assert {(record.instance, record.stream) for record in tail} == {(2, "err")}
    await collector.flush()
    assert texts(logs / "web.log") == texts_in_order


async def test_lines_being_written_count_against_the_buffer(logs: Path) -> None:
    release = trio.Event()

    async def slow_disk(write: Callable[..., object], *args: object) -> object:
        await release.wait()
        return write(*args)

    collector = LogCollector(logs, buffer_bytes=4000, run_sync=slow_disk)
    sink = collector.sink("web", 0, "out")
    first = [f"first {i:02d} " + "x" * 40 for i in range(20)]
    second = [f"second {i:02d} " + "y" * 40 for i in range(20)]
    sink(lines_of(*first))  # ~1,800 bytes tagged
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.flush)
        await trio.testing.wait_all_tasks_blocked()
        assert collector.stats("web")["buffered_bytes"] > 1500  # taken, not written yet
        for text in second:  # ~3,000 bytes: alone they would fit
            sink(line(text))
        release.set()
    await collector.flush()
    got = texts(logs / "web.log")
    assert got[:20] == first
    assert got[20].endswith("lines dropped (log buffer full)")
    dropped = int(got[20].split()[0])
    assert 0 < dropped < 20
    assert got[21:] == second[dropped:]


async def test_a_read_with_a_control_is_escaped_in_the_file_even_when_trimmed(
    logs: Path,
) -> None:
    collector = LogCollector(logs, buffer_bytes=1200)
    sink = collector.sink("web", 0, "out")
    sink(lines_of("plain"))
    sink(lines_of(*(f"red {i:02d} \x1b[31mRED\x1b[0m" for i in range(20))))  # trimmed
    sink(lines_of("é ok", "bell \x07"))
    assert collector.tail("web")[-1].text == "bell \x07"  # the ring keeps what was read
    await collector.flush()
    got = texts(logs / "web.log")
    assert got[0].endswith("lines dropped (log buffer full)")
    dropped = int(got[0].split()[0])
    expected = [f"red {i:02d} \\x1b[31mRED\\x1b[0m" for i in range(dropped - 1, 20)]
    assert got[1:] == [*expected, "é ok", "bell \\x07"]


async def test_an_idle_app_holds_no_write_buffer_and_loses_no_line_after_one(
    logs: Path,
) -> None:
    # The write buffer exists only while lines wait for the writer: taken by a
    # write, it goes (an empty deque keeps a 0.5 KiB block), and comes back with
    # the next line; a write that cannot start a thread puts its lines back.
    no_thread = [True]

    async def run_sync(write: Callable[..., object], *args: object) -> object:
        if no_thread[0]:
            raise RuntimeError("can't start new thread")
        return write(*args)

    collector = LogCollector(logs, run_sync=run_sync)
    sink = collector.sink("web", 0, "out")
    collector.note("web", "instance 0 online (pid 1)")
    entry = collector._apps["web"]
    sink(lines_of("one", "two"))
    assert not await collector.flush()  # no thread: the lines are kept
    assert entry.chunks is not None
    assert collector.stats("web")["buffered_bytes"] > 0
    no_thread[0] = False
    assert await collector.flush()
    assert entry.chunks is None
    assert collector.stats("web")["buffered_bytes"] == 0
    sink(line("three"))
    collector.note("web", "instance 0 exited")
    assert await collector.flush()
    assert entry.chunks is None
    assert texts(logs / "web.log") == [
        "instance 0 online (pid 1)",
        "one",
        "two",
        "three",
        "instance 0 exited",
    ]


@pytest.mark.parametrize("ring", [1, 5, 16, 17, 40])
async def test_the_ring_keeps_the_last_lines_whatever_its_length(logs: Path, ring: int) -> None:
    # The ring packs its reads and gives their room back in bulk: through many
    # of those, and an emptying, `tail` gives the last `ring` lines in order, each
    # with its instance and stream, of reads of any size.
    collector = LogCollector(logs, ring=ring)
    sinks = [collector.sink("web", 0, "out"), collector.sink("web", 3, "err")]
    written: list[tuple[int | None, str, str]] = []
    instance: int | None
    for i in range(300):
        if i == 150:
            await collector.empty(["web"])
            assert collector.tail("web") == []
            written = []
        sink = sinks[i % 2]
        batch = [f"read {i} line {j} é" for j in range(i % 3 + 1)]
        instance, stream = (3, "err") if i % 2 else (0, "out")
        written += [(instance, stream, text) for text in batch]
        sink(lines_of(*batch))
        if i % 7 == 0:
            collector.note("web", f"note {i}")
            written.append((None, "sys", f"note {i}"))
        got = [(line.instance, line.stream, line.text) for line in collector.tail("web")]
        assert got == written[-ring:]
    assert len(collector._apps["web"].ring) <= ring + 1


def test_the_app_log_stamp_is_the_full_utc_time_across_seconds() -> None:
    """The stamp's date and time of day are formatted once per second: each stamp
    is still the whole UTC time of its millisecond."""
    import time as _time

    from omnitron.daemon._logs import _Clock

    clock = _Clock()
    for now in (1764698400.9995, 1764698400.9999, 1764698401.0004, 1764698401.5, 1764784799.999):
        ms = int(now * 1000)
        whole = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(ms // 1000))
        assert clock.stamp(now) == f"{whole}.{ms % 1000:03d}Z"
    assert clock.stamp(1764784800.0) == "2025-12-03T18:00:00.000Z"
