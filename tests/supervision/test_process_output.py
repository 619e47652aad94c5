"""Output of process children: line delivery, bad input, back-pressure, EOF."""

from __future__ import annotations

import collections
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable

import pytest
import trio

import supervision._pump
from supervision import InvalidSpec, InvalidSpecType
from supervision._procfs import _HAVE_PIDFD
from supervision._spec import Output, ProcessChild


@pytest.fixture(autouse=True, params=["hub", "task per pipe"])
def pump_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with the host's one reader (epoll) and with a task per pipe
    (what platforms without epoll get)."""
    if request.param != "hub":
        monkeypatch.setattr(supervision._pump, "_HAVE_EPOLL", False)
    return str(request.param)


async def run_to_exit(slots, spec: ProcessChild) -> None:
    slot = slots.new(spec)
    await slot.start()
    await slot.exited()


async def test_lines_from_stdout_and_stderr(slots, lines) -> None:
    out, err = lines(), lines()
    script = "echo one; echo two >&2; echo three; printf 'no newline'"
    spec = ProcessChild(
        ["/bin/sh", "-c", script], stdout=Output.lines(out), stderr=Output.lines(err)
    )
    await run_to_exit(slots, spec)
    assert out.lines == ["one", "three", "no newline"]
    assert err.lines == ["two"]


async def test_bad_utf8_is_replaced(slots, child, lines) -> None:
    out = lines()
    await run_to_exit(slots, ProcessChild(child("bad_utf8"), stdout=Output.lines(out)))
    assert out.lines == ["ok \ufffd\ufffd bad", "été", "cut \ufffd"]


async def test_long_line_is_split_with_a_marker(slots, child, lines) -> None:
    # PL-30, bounded: 5 MB without a newline arrives in max_line pieces.
    out = lines()
    size = 5 * 1024 * 1024
    spec = ProcessChild(child("long_line", size), stdout=Output.lines(out, max_line=65536))
    await run_to_exit(slots, spec)
    pieces, tail = out.lines[:-1], out.lines[-1]
    assert tail == "tail"
    assert all(p.endswith("…") and len(p) == 65537 for p in pieces[:-1])
    assert not pieces[-1].endswith("…")
    assert sum(len(p.rstrip("…")) for p in pieces) == size


async def test_pieces_do_not_split_utf8_sequences(slots, lines) -> None:
    out = lines()
    text = "a" + "é" * 50
    code = f"import sys; sys.stdout.write({text!r})"
    spec = ProcessChild([sys.executable, "-c", code], stdout=Output.lines(out, max_line=16))
    await run_to_exit(slots, spec)
    assert all("\ufffd" not in piece for piece in out.lines)
    assert "".join(piece.removesuffix("…") for piece in out.lines) == text
    assert all(len(piece.removesuffix("…").encode()) <= 16 for piece in out.lines)


async def test_many_lines_arrive_in_order(slots, child, lines) -> None:
    # The child stays up after its burst: every line must arrive, however long reading
    # them takes on a loaded machine (an exit would bound the reading to the 0.5 s drain).
    out = lines()
    script = f"{shlex.join(child('spew', 100_000))}; exec sleep 3600"
    slot = slots.new(ProcessChild(["/bin/sh", "-c", script], stdout=Output.lines(out)))
    await slot.start()
    await out.wait_for(lambda got: len(got) >= 100_000, within=60)
    await slot.stop()
    assert out.lines == [str(n) for n in range(1, 100_001)]


async def test_what_an_exited_child_wrote_is_read_however_slow_the_reader(slots, child) -> None:
    # The drain after an exit waits as long as output still comes: a slow reader (a
    # sink that blocks 50 ms every 5,000 lines, 1 s in all) loses nothing the child
    # wrote before it exited. A fixed 0.5 s drain cut this off after about half.
    got: list[str] = []

    def slow(line: str) -> None:
        got.append(line)
        if len(got) % 5000 == 0:
            time.sleep(0.05)

    await run_to_exit(slots, ProcessChild(child("spew", 100_000), stdout=Output.lines(slow)))
    assert len(got) == 100_000
    assert got == [str(n) for n in range(1, 100_001)]


async def test_stop_while_spewing(slots, lines) -> None:
    # PL-27: draining a fast pipe never starves other tasks, and stop is bounded.
    out = lines()
    slot = slots.new(ProcessChild(["yes", "spam"], stdout=Output.lines(out)))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await slot.start()
        await out.wait_for(lambda got: len(got) >= 200_000)
        assert ticks > 0
        started = trio.current_time()
        report = await slot.stop()
        assert trio.current_time() - started < 2
        nursery.cancel_scope.cancel()
    assert report.exit is not None
    assert report.exit.signal == signal.SIGTERM


async def test_closed_stdio_is_no_busy_loop(slots, child, lines) -> None:
    # PL-28: EOF on both pipes while the child keeps running half a second.
    out, err = lines(), lines()
    spec = ProcessChild(
        child("close_stdio", 0.5), stdout=Output.lines(out), stderr=Output.lines(err)
    )
    slot = slots.new(spec)
    cpu = time.process_time()
    await slot.start()
    status = await slot.exited()
    assert status.code == 0
    assert time.process_time() - cpu < 0.25
    assert out.lines == err.lines == []


async def test_discard_and_inherit(slots) -> None:
    spec = ProcessChild(["sleep", "3600"], stdout=Output.discard(), stderr=Output.inherit())
    slot = slots.new(spec)
    pid = await slot.start()
    assert os.readlink(f"/proc/{pid}/fd/1") == os.devnull
    assert os.readlink(f"/proc/{pid}/fd/2") == os.readlink("/proc/self/fd/2")
    assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
    await slot.stop()


async def test_a_failing_sink_is_logged_once(slots, caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def sink(line: str) -> None:
        calls.append(line)
        raise ValueError("sink broke")

    spec = ProcessChild(["/bin/sh", "-c", "echo a; echo b; echo c"], stdout=Output.lines(sink))
    with caplog.at_level(logging.ERROR, logger="supervision.process"):
        await run_to_exit(slots, spec)
    assert calls == ["a", "b", "c"]
    assert len(caplog.records) == 1
    assert "output sink" in caplog.records[0].getMessage()


async def test_output_held_by_an_escaped_descendant_does_not_block_the_exit(
    slots, child, lines
) -> None:
    # Without a subreaper, an escaped grandchild keeps the pipe open after the
    # leader exits; the runner stops waiting for EOF after a short drain.
    out = lines()
    slot = slots.new(ProcessChild(child("escape_setsid", "--exit", 0), stdout=Output.lines(out)))
    await slot.start()
    started = trio.current_time()
    try:
        status = await slot.exited()
        assert status.code == 0
        assert trio.current_time() - started < 2
    finally:
        escapee = int((await out.line_starting("escapee ")).split()[1])
        os.kill(escapee, signal.SIGKILL)


async def test_batches_hand_each_read_as_whole_lines_of_bytes(slots) -> None:
    reads: list[bytes] = []
    count = 100_000
    spec = ProcessChild(["seq", "1", str(count)], stdout=Output.batches(reads.append))
    await run_to_exit(slots, spec)
    assert b"".join(reads) == "".join(f"{i}\n" for i in range(1, count + 1)).encode()
    assert all(read.endswith(b"\n") for read in reads)
    # One call per read of the pipe, not one per line.
    assert len(reads) <= count / 50, len(reads)


async def test_a_silent_child_costs_its_pumps_no_failed_read(
    slots, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A crash storm starts two pumps per restart: each waits for its new pipe to
    # be readable before its first read, so none raises and catches EAGAIN.
    failed: list[int] = []
    real = os.read

    def read(fd: int, size: int) -> bytes:
        try:
            return real(fd, size)
        except BlockingIOError:
            failed.append(fd)
            raise

    monkeypatch.setattr(os, "read", read)
    reads: list[bytes] = []
    spec = ProcessChild(
        ["sleep", "0.2"], stdout=Output.batches(reads.append), stderr=Output.lines(reads.append)
    )
    await run_to_exit(slots, spec)
    assert reads == []
    assert failed == []


async def test_batches_keep_the_bytes_and_end_the_last_line(slots, child) -> None:
    reads: list[bytes] = []
    await run_to_exit(slots, ProcessChild(child("bad_utf8"), stdout=Output.batches(reads.append)))
    assert b"".join(reads) == b"ok \xff\xfe bad\n\xc3\xa9t\xc3\xa9\ncut \xc3\n"
    reads.clear()
    spec = ProcessChild(["printf", "one\\ntwo"], stdout=Output.batches(reads.append))
    await run_to_exit(slots, spec)
    assert b"".join(reads) == b"one\ntwo\n"


async def test_batches_cut_long_lines_into_marked_pieces(slots) -> None:
    reads: list[bytes] = []
    text = "short\n" + "a" + "é" * 50 + "\nend"
    code = f"import sys; sys.stdout.write({text!r})"
    spec = ProcessChild(
        [sys.executable, "-c", code], stdout=Output.batches(reads.append, max_line=16)
    )
    await run_to_exit(slots, spec)
    lines = b"".join(reads).decode().split("\n")[:-1]
    assert lines[0] == "short"
    assert lines[-1] == "end"
    pieces = lines[1:-1]
    assert all(p.endswith("…") for p in pieces[:-1])
    assert not pieces[-1].endswith("…")
    assert all(len(p.removesuffix("…").encode()) <= 16 for p in pieces)
    assert "".join(p.removesuffix("…") for p in pieces) == "a" + "é" * 50


def test_batches_validate_like_lines() -> None:
    with pytest.raises(InvalidSpecType, match=r"OutputBatches\.sink: must be callable"):
        Output.batches("nope")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec, match=r"OutputBatches\.max_line: must be >= 16, got 8"):
        Output.batches(print, max_line=8)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not _HAVE_PIDFD, reason="the count includes a pidfd (Linux 5.3)")
async def test_a_running_child_with_piped_output_holds_three_descriptors() -> None:
    # Its pidfd and the read ends of its two pipes, nothing more: a supervisor of
    # many children under a small RLIMIT_NOFILE (FAULTS RX-01) fits as many as it can.
    from supervision import ChildSpec, SupervisorSpec, open_supervisor

    def spec(count: int) -> SupervisorSpec:
        io = Output.batches(lambda batch: None)
        return SupervisorSpec(
            name="s",
            children=[
                ChildSpec(f"c{i}", ProcessChild(["sleep", "60"], stdout=io, stderr=io))
                for i in range(count)
            ],
        )

    counts = []
    for count in (1, 4):
        async with open_supervisor(spec(count)):
            counts.append(_open_fds())
    assert counts[1] - counts[0] == 3 * 3


async def test_a_flood_on_stdout_does_not_hold_up_stderr(slots, lines) -> None:
    # Both pipes are read by one task: lines on one keep coming while the other
    # is flooded.
    err = lines()
    received = 0

    def count(batch: bytes) -> None:
        nonlocal received
        received += len(batch)

    script = (
        "import sys, time\n"
        "line = b'x' * 1000 + b'\\n'\n"
        "end = time.monotonic() + 60\n"
        "n = 0\n"
        "while time.monotonic() < end:\n"
        "    sys.stdout.buffer.write(line * 64)\n"
        "    n += 1\n"
        "    if n % 200 == 0:\n"
        "        sys.stderr.write(f'tick {n}\\n'); sys.stderr.flush()\n"
    )
    spec = ProcessChild(
        [sys.executable, "-c", script], stdout=Output.batches(count), stderr=Output.lines(err)
    )
    slot = slots.new(spec)
    await slot.start()
    await err.wait_for(lambda got: len(got) >= 3)
    assert received > 3 * 200 * 64 * 1000 * 0.9  # the flood itself was read meanwhile
    await slot.stop()


async def test_floods_of_short_lines_let_other_tasks_run_between_steps(slots) -> None:
    # FAULTS RX-08 in the library: a read of short lines is thousands of sink calls,
    # handed a few hundred at a time, with other tasks running between two steps
    # (here two pipes flooded at once, each read 64 KiB of 7-byte lines at a time).
    count = 150_000
    turn = 0  # scheduler turns of the ticker task
    per_turn: collections.Counter[int] = collections.Counter()  # lines handed per turn
    got = [0, 0]
    finished = trio.Event()

    def sink(index: int) -> Callable[[str], None]:
        def take(line: str) -> None:
            per_turn[turn] += 1
            got[index] += 1
            if got == [count, count]:
                finished.set()

        return take

    async def ticker() -> None:
        nonlocal turn
        while not finished.is_set():
            await trio.lowlevel.checkpoint()
            turn += 1

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            for index in (0, 1):
                argv = ["seq", "100001", str(100_000 + count)]
                spec = ProcessChild(argv, stdout=Output.lines(sink(index)))
                await slots.new(spec, "ab"[index]).start()
            await finished.wait()
    # A step is 256 lines; a turn of the ticker may see two steps of each pipe (the
    # order of tasks within a scheduler batch varies). Handed a read at a time, a
    # turn would take 9,362 lines of each.
    assert max(per_turn.values()) <= 2 * 2 * 256, per_turn.most_common(3)
