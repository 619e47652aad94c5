"""Metrics: periodic samples of every managed process and of the daemon itself.

:class:`Sampler` takes one sample of every process every ``interval`` seconds in a
worker thread (never on the event loop): CPU %, CPU seconds, RSS, USS (where the
kernel has ``/proc/PID/smaps_rollup``), threads, open file descriptors, and the
same summed over the process's descendants. Each process keeps its samples for
``retention`` seconds in a fixed-size :class:`Ring` (8 bytes per figure), dropped
when the process is gone; the samples' times are kept once for all processes
(:class:`Clock`). ``status`` reads only the last sample.

:func:`prometheus_text` renders a ``daemon.metrics`` result in the Prometheus text
exposition format; it imports ``prometheus_client`` on first use, so a daemon
nobody scrapes never loads it.
"""

from __future__ import annotations

import array
import bisect
import collections
import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio

from supervision import process_children

from .._log import get_logger
from ..rpc import Dispatcher

__all__ = [
    "FIELDS",
    "LAG_BUCKETS",
    "Clock",
    "CountingDispatcher",
    "LoopLag",
    "Ring",
    "Sampler",
    "prometheus_text",
]

log = get_logger("omnitron.metrics")

FIELDS = (
    "time",
    "cpu",
    "cpu_seconds",
    "rss",
    "uss",
    "threads",
    "fds",
    "descendants",
    "tree_cpu",
    "tree_rss",
)
"""The figures of one sample, in order. ``uss`` and ``fds`` are ``-1`` when unknown;
``tree_*`` include the process itself; ``time`` is the wall clock."""
_WIDTH = len(FIELDS)
_ROW = _WIDTH - 1  # the figures of a sample but its time
_ROW_MASK = 0xFFFFFFFF  # row numbers wrap around in an array("I")
_CPU, _RSS = FIELDS.index("cpu"), FIELDS.index("rss")

Sample = tuple[float, ...]
"""One sample: a value per :data:`FIELDS`."""

_PROCFS = os.path.exists(f"/proc/{os.getpid()}/stat")
_HAS_SMAPS_ROLLUP = os.path.exists(f"/proc/{os.getpid()}/smaps_rollup")


class Clock:
    """The times of a sampler's rounds, kept once for the rings of all its processes.

    Every process sampled in a round gets the round's time, and a process that is
    not sampled in a round loses its ring (:meth:`Sampler._keep`): so the samples
    of a ring are those of its last rounds, and their times need not be stored in
    each ring (8 bytes a sample per process). Keeps the last ``capacity`` times.
    """

    __slots__ = ("_capacity", "_times", "rounds")

    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self._times = array.array("d", bytes(8 * self._capacity))  # by round, circular
        self.rounds = 0
        """Rounds so far; the newest is ``rounds - 1``."""

    def tick(self, when: float) -> None:
        """A new round, taken at ``when``."""
        self._times[self.rounds % self._capacity] = when
        self.rounds += 1

    def time(self, round_: int) -> float:
        """The time of round ``round_`` (one of the last ``capacity``)."""
        return self._times[round_ % self._capacity]

    def resize(self, capacity: int) -> Clock:
        """A clock of ``capacity`` with this one's rounds and newest times."""
        clock = Clock(capacity)
        clock.rounds = self.rounds
        kept = min(self._capacity, clock._capacity, self.rounds)
        for round_ in range(self.rounds - kept, self.rounds):
            clock._times[round_ % clock._capacity] = self.time(round_)
        return clock


class Ring:
    """The last ``capacity`` samples of one process, in flat arrays.

    Each sample's time takes 8 bytes, unless the ring shares a :class:`Clock`
    (the sampler's rings do): then a sample appended at the clock's newest round,
    with its time, stores no time, and a ring appended to out of step (another
    time, a round skipped) keeps its own times from then on. A ring on a clock is
    appended to at every round or dropped, as the sampler's are: the clock keeps
    only the times of its last ``capacity`` rounds. A sample's other
    figures (72 bytes) are stored only when they differ from the previous
    sample's, which a sample then shares: an idle process, whose figures stay the
    same from one sample to the next, takes 4 bytes a sample (12 with its own
    times), a busy one (new figures each time) 76 to 81 (84 to 89). Values come
    back exactly as they were appended (compared bit for bit). Grows until full,
    then overwrites the oldest sample.

    Appending is O(1) but for the dropping of old figures, a copy of the kept rows
    once every sixteenth of the ring's length.
    """

    __slots__ = (
        "_capacity",
        "_clock",
        "_count",
        "_dead",
        "_figures",
        "_first",
        "_last",
        "_next",
        "_round",
        "_rows",
        "_times",
    )

    def __init__(self, capacity: int, clock: Clock | None = None) -> None:
        self._capacity = max(1, capacity)
        if clock is not None and clock._capacity < self._capacity:
            clock = None  # it would forget the times of the ring's oldest samples
        self._clock = clock
        self._round = -1  # with a clock: the round of the newest sample
        # Without a clock: a sample's time, circular.
        self._times: array.array[float] | None = array.array("d") if clock is None else None
        self._rows = array.array("I")  # a sample's figures: a row number (mod 2**32), circular
        # The distinct figures, oldest first: row ``_first + i`` at ``i * _ROW``;
        # the first ``_dead`` rows no sample refers to any more (dropped in bulk).
        self._figures = array.array("d")
        self._first = 0
        self._dead = 0
        self._last = b""  # the newest row, as bytes
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def append(self, sample: Sample) -> None:
        clock = self._clock
        if clock is not None:
            newest = clock.rounds - 1
            if (
                newest < 0
                or clock.time(newest) != sample[0]
                or (self._count and self._round != newest - 1)
            ):
                self._own_times()
            else:
                self._round = newest
        row = array.array("d", sample[1:])
        packed = row.tobytes()
        figures = self._figures
        if packed != self._last or not figures:
            figures.extend(row)
            self._last = packed
        number = (self._first + len(figures) // _ROW - 1) & _ROW_MASK
        times = self._times
        if self._count < self._capacity:
            if times is not None:
                times.append(sample[0])
            self._rows.append(number)
            self._count += 1
            return
        slot = self._next
        if times is not None:
            times[slot] = sample[0]
        self._rows[slot] = number
        self._next = (slot + 1) % self._capacity
        # Rows older than the oldest sample's are no longer needed: dropped once they
        # are a sixteenth of the rows (a busy process then takes 76 to 81 bytes a sample).
        self._dead = (self._rows[self._next] - self._first) & _ROW_MASK
        if self._dead * 16 > len(figures) // _ROW:
            del figures[: self._dead * _ROW]
            self._first = (self._first + self._dead) & _ROW_MASK
            self._dead = 0

    def _own_times(self) -> None:
        """Keep the samples' times in the ring itself from now on."""
        times = array.array("d", bytes(8 * self._count))
        oldest = self._next if self._count == self._capacity else 0
        for i in range(self._count):
            times[(oldest + i) % self._capacity] = self._time(i)
        self._times, self._clock = times, None

    def _time(self, i: int) -> float:
        """The time of the ``i``-th sample kept, oldest first."""
        if self._times is not None:
            oldest = self._next if self._count == self._capacity else 0
            return self._times[(oldest + i) % self._capacity]
        assert self._clock is not None
        return self._clock.time(self._round - (self._count - 1 - i))

    def last(self, n: int) -> list[Sample]:
        """The last ``n`` samples (fewer if there are fewer), oldest first."""
        n = max(0, min(n, self._count))
        oldest = self._next if self._count == self._capacity else 0
        figures, first = self._figures, self._first
        out = []
        for i in range(self._count - n, self._count):
            slot = (oldest + i) % self._capacity
            start = ((self._rows[slot] - first) & _ROW_MASK) * _ROW
            out.append((self._time(i), *figures[start : start + _ROW]))
        return out

    def resize(self, capacity: int, clock: Clock | None = None) -> Ring:
        """A ring of ``capacity`` holding this one's newest samples; it shares
        ``clock`` (this ring's clock resized) if this ring shares a clock."""
        ring = Ring(capacity)
        for sample in self.last(ring._capacity):
            ring.append(sample)
        if (
            self._clock is not None
            and clock is not None
            and clock.rounds == self._clock.rounds
            and clock._capacity >= ring._capacity
        ):
            ring._times, ring._clock, ring._round = None, clock, self._round
        return ring


class _Probe:
    """Takes samples in the worker thread; keeps what the next sample needs."""

    def __init__(self) -> None:
        # pid: (cpu seconds, monotonic, start time): a recycled pid starts afresh
        self._previous: dict[int, tuple[float, float, float]] = {}

    def sample(self, pids: list[int], *, uss: bool) -> dict[int, Sample]:
        now_wall, now = time.time(), time.monotonic()
        children = self._children() if pids else {}
        result: dict[int, Sample] = {}
        seen: set[int] = set()
        for pid in pids:
            own = self._one(pid, now, seen, full=True, uss=uss)
            if own is None:
                continue
            cpu, cpu_seconds, rss, uss_bytes, threads, fds = own
            tree_cpu, tree_rss, count = cpu, rss, 0
            stack = list(children.get(pid, ()))
            while stack:
                child = stack.pop()
                if child in seen:
                    continue
                stack.extend(children.get(child, ()))
                figures = self._one(child, now, seen, full=False, uss=False)
                if figures is not None:
                    tree_cpu += figures[0]
                    tree_rss += figures[2]
                    count += 1
            result[pid] = (
                now_wall,
                cpu,
                cpu_seconds,
                float(rss),
                float(uss_bytes),
                float(threads),
                float(fds),
                float(count),
                tree_cpu,
                float(tree_rss),
            )
        for pid in [p for p in self._previous if p not in seen]:
            del self._previous[pid]
        return result

    @staticmethod
    def _children() -> dict[int, list[int]]:
        """``{ppid: [pid, ...]}`` of every process (one read of each /proc/PID/stat,
        by the library's procfs reader: several times cheaper than psutil's)."""
        return process_children()

    def _one(
        self, pid: int, now: float, seen: set[int], *, full: bool, uss: bool
    ) -> tuple[float, float, int, int, int, int] | None:
        """``(cpu %, cpu seconds, rss, uss, threads, fds)``; ``None`` if it is gone."""
        seen.add(pid)
        read = _read_proc if _PROCFS else _read_psutil
        figures = read(pid, full=full, uss=uss)
        if figures is None:
            self._previous.pop(pid, None)
            return None
        cpu_seconds, started, rss, uss_bytes, threads, fds = figures
        previous = self._previous.get(pid)
        if previous is not None and previous[2] != started:
            previous = None  # another process with a recycled pid
        if previous is None:  # first sight: the average since it started
            elapsed = max(time.time() - started, 1e-3)
        else:
            elapsed = max(now - previous[1], 1e-3)
        used = cpu_seconds - (previous[0] if previous else 0.0)
        self._previous[pid] = (cpu_seconds, now, started)
        cpu = max(0.0, 100.0 * used / elapsed)
        return (cpu, cpu_seconds, rss, uss_bytes, threads, fds)


_Figures = tuple[float, float, int, int, int, int]
"""``(cpu seconds, start time (epoch), rss, uss, threads, fds)`` of one process."""


@functools.cache
def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return 0.0  # pragma: no cover - every Linux /proc/stat has btime


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _read_proc(pid: int, *, full: bool, uss: bool) -> _Figures | None:
    """One process's figures from ``/proc/PID`` (what psutil reads, without loading it:
    about 3 MiB less resident in the daemon); ``None`` if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    # Fields 14, 15 (utime, stime), 20 (threads), 22 (start), 24 (rss), counted from 1.
    cpu_seconds = (int(fields[11]) + int(fields[12])) / _TICKS
    threads = int(fields[17]) if full else 0
    started = _boot_time() + int(fields[19]) / _TICKS
    rss = int(fields[21]) * _PAGE
    fds = -1
    if full:
        with contextlib.suppress(OSError):
            fds = len(os.listdir(f"/proc/{pid}/fd"))
    uss_bytes = -1
    if uss:
        with contextlib.suppress(OSError):
            uss_bytes = _private_bytes(pid)
    return (cpu_seconds, started, rss, uss_bytes, threads, fds)


def _private_bytes(pid: int) -> int:
    """Private_Clean + Private_Dirty (+ Private_Hugetlb) of ``/proc/PID/smaps_rollup``
    (or of every mapping in ``smaps``): the process's unique set size."""
    name = "smaps_rollup" if _HAS_SMAPS_ROLLUP else "smaps"
    total = 0
    with open(f"/proc/{pid}/{name}", "rb") as f:
        for line in f:
            if line.startswith(b"Private_"):
                total += int(line.split()[1])
    return total * 1024


def _read_psutil(pid: int, *, full: bool, uss: bool) -> _Figures | None:  # pragma: no cover
    """The same figures through psutil, where there is no ``/proc``."""
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            times = proc.cpu_times()
            rss = proc.memory_info().rss
            threads = proc.num_threads() if full else 0
            try:
                fds = proc.num_fds() if full else -1
            except psutil.AccessDenied:
                fds = -1
            uss_bytes = -1
            if uss:
                with contextlib.suppress(psutil.AccessDenied):
                    uss_bytes = proc.memory_full_info().uss
            return (times.user + times.system, proc.create_time(), rss, uss_bytes, threads, fds)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds (seconds) of the loop-lag histogram's buckets (``+Inf`` is implied)."""


class LoopLag:
    """A heartbeat: a task that sleeps ``period`` and records how late it wakes up.

    Its lateness is the event loop's lag at that moment (a callback that holds the
    loop, a slow ``/proc`` read on it, a flood of lines...). Kept two ways, both of
    fixed size: the last ``window`` lateness values (for p99 and max over the last
    minute or so) and a cumulative histogram over :data:`LAG_BUCKETS` since start
    (for Prometheus). Ten wake-ups a second by default: a few microseconds of CPU
    each.
    """

    def __init__(self, *, period: float = 0.1, window: int = 600) -> None:
        self.period = period
        self.recent: collections.deque[float] = collections.deque(maxlen=window)
        self.buckets = [0] * (len(LAG_BUCKETS) + 1)  # the last one: above every bound
        self.count = 0
        self.total = 0.0
        self.last: float | None = None

    def record(self, lag: float) -> None:
        self.recent.append(lag)
        self.buckets[bisect.bisect_left(LAG_BUCKETS, lag)] += 1
        self.count += 1
        self.total += lag
        self.last = lag

    async def run(self) -> None:
        """Beat until cancelled."""
        while True:
            deadline = trio.current_time() + self.period
            await trio.sleep_until(deadline)
            self.record(max(0.0, trio.current_time() - deadline))

    def percentile(self, fraction: float) -> float | None:
        """The lateness below which ``fraction`` of the recent beats fall."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]

    def summary(self) -> dict[str, Any]:
        """The figures ``daemon.metrics`` gives in its ``daemon`` section."""
        p50, p99 = self.percentile(0.5), self.percentile(0.99)
        return {
            "loop_lag": None if self.last is None else round(self.last, 6),
            "loop_lag_p50": None if p50 is None else round(p50, 6),
            "loop_lag_p99": None if p99 is None else round(p99, 6),
            "loop_lag_max": round(max(self.recent), 6) if self.recent else None,
            "loop_lag_window": len(self.recent),
            "loop_lag_histogram": {
                "buckets": list(LAG_BUCKETS),
                "counts": list(self.buckets),
                "count": self.count,
                "sum": round(self.total, 6),
            },
        }


class Sampler:
    """CPU and memory of the managed processes, sampled periodically off the event loop.

    One task (:meth:`run`) samples every ``interval`` seconds in a worker thread;
    every caller reads the last sample, so a ``status`` call costs no system call.
    A sample that cannot be taken (no worker thread could be started, ...) is
    counted in :attr:`failures`, logged, and retried at the next interval.

    Args:
        pids: Returns the pids to sample (called on the event loop). The daemon's
            own pid is added.
        interval: Seconds between samples.
        retention: Seconds of samples kept per process.
        on_sample: Called on the event loop after each sample, with the sampler's
            nursery (for work a sample calls for, e.g. a memory restart).
        settings: Returns the ``[monitoring] metrics`` settings (with ``interval`` and
            ``retention``), read when :meth:`run` starts; they replace the two above.
    """

    def __init__(
        self,
        pids: Callable[[], list[int]],
        *,
        interval: float = 5.0,
        retention: float = 3600.0,
        on_sample: Callable[[trio.Nursery], None] = lambda nursery: None,
        settings: Callable[[], Any] | None = None,
    ) -> None:
        self._pids = pids
        self._settings = settings
        self._on_sample = on_sample
        self._probe = _Probe()
        self.interval = interval
        self.retention = retention
        self.enabled = True
        self.rings: dict[int, Ring] = {}
        """Every sampled process's samples, by pid."""
        self._clock = Clock(self.capacity)  # the rounds' times, shared by the rings
        self.last: dict[int, Sample] = {}
        """The last sample of every process (the daemon's included), by pid."""
        self.samples: dict[int, tuple[float, int]] = {}
        """``{pid: (cpu percent, resident bytes)}`` of the last sample."""
        self.failures = 0
        """Samples that could not be taken."""
        self.taken = 0
        """Samples taken."""
        self.sampled_at: float | None = None
        """When the last sample was taken (wall clock)."""
        self.loop_lag: float | None = None
        """Seconds the event loop was late to wake the sampler at its last interval."""
        self.lag = LoopLag()
        """The heartbeat (run beside the sampling, whether sampling is on or off)."""
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    @property
    def capacity(self) -> int:
        """Samples kept per process."""
        return max(1, math.ceil(self.retention / self.interval))

    def configure(self, *, interval: float, retention: float) -> None:
        """Apply new settings (a reload); the rings keep their newest samples."""
        if (interval, retention) == (self.interval, self.retention):
            return
        self.interval, self.retention = interval, retention
        self._clock = clock = self._clock.resize(self.capacity)
        self.rings = {pid: ring.resize(self.capacity, clock) for pid, ring in self.rings.items()}
        self._wake()

    def set_enabled(self, enabled: bool) -> None:
        """Turn sampling on or off; off forgets the last sample (no stale figures)."""
        if enabled == self.enabled:
            return
        self.enabled = enabled
        if not enabled:
            self.last, self.samples = {}, {}
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample until cancelled (while enabled)."""
        if self._settings is not None:
            settings = self._settings()
            self.configure(interval=settings.interval, retention=settings.retention)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.lag.run)
            task_status.started()
            try:
                await self._loop()
            finally:
                self._nursery = None

    async def _loop(self) -> None:
        while True:
            changed = self._changed
            if self.enabled:
                await self.sample()
                with trio.move_on_after(self.interval) as waited:
                    await changed.wait()
                if waited.cancelled_caught:
                    # How late the loop woke this task: its lag at this moment.
                    self.loop_lag = max(0.0, trio.current_time() - waited.deadline)
            else:
                await changed.wait()

    async def sample(self) -> None:
        """Take one sample now, in a worker thread; a failure is counted and logged."""
        pids = self._pids()
        own = os.getpid()
        if own not in pids:
            pids = [*pids, own]
        try:
            taken = await trio.to_thread.run_sync(self._take, pids)
        except (RuntimeError, OSError) as exc:  # e.g. "can't start new thread"
            self.failures += 1
            log.warning("sampling_failed", error=str(exc), failures=self.failures)
            return
        if not self.enabled:
            return  # turned off while this sample was taken
        self._keep(taken)
        if self._nursery is not None:
            self._on_sample(self._nursery)

    def _take(self, pids: list[int]) -> dict[int, Sample]:
        return self._probe.sample(pids, uss=_HAS_SMAPS_ROLLUP)

    def _keep(self, taken: dict[int, Sample]) -> None:
        rings = self.rings
        for pid in [p for p in rings if p not in taken]:
            del rings[pid]
        capacity, clock = self.capacity, self._clock
        if taken:
            clock.tick(next(iter(taken.values()))[0])  # one time for the round's samples
        for pid, sample in taken.items():
            ring = rings.get(pid)
            if ring is None:
                ring = rings[pid] = Ring(capacity, clock)
            ring.append(sample)
        self.last = taken
        self.samples = {pid: (s[_CPU], int(s[_RSS])) for pid, s in taken.items()}
        self.taken += 1
        self.sampled_at = time.time()


def figures(sample: Sample | None) -> dict[str, Any]:
    """A sample as ``{field: value}`` (integers where the figure is one; ``None``
    for unknown); all ``None`` without a sample."""
    if sample is None:
        return dict.fromkeys(FIELDS[1:])
    out: dict[str, Any] = {}
    for name, value in zip(FIELDS[1:], sample[1:], strict=True):
        if name in ("cpu", "cpu_seconds", "tree_cpu"):
            out[name] = round(value, 2)
        else:
            out[name] = None if value < 0 else int(value)
    return out


def aggregate(processes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum over an app's processes of each figure known for at least one."""
    total: dict[str, Any] = {}
    for name in FIELDS[1:]:
        values = [p[name] for p in processes if p.get(name) is not None]
        if not values:
            total[name] = None
        else:
            total[name] = round(sum(values), 2) if name.endswith("cpu") else sum(values)
    return total


class CountingDispatcher(Dispatcher):
    """A :class:`~omnitron.rpc.Dispatcher` that counts the calls it answers.

    The count is the dispatcher's own :attr:`~omnitron.rpc.Dispatcher.calls`, kept
    on every path (a call answered inline has no ``dispatch`` to wrap), so this
    adds no layer to a call.
    """


# --------------------------------------------------------------------------- prometheus


def prometheus_text(metrics: Mapping[str, Any]) -> str:
    """A ``daemon.metrics`` result in the Prometheus text exposition format (0.0.4).

    Per process (labels ``app``, ``instance``): CPU seconds, RSS, restarts, up,
    uptime, ready, and for a probed process its health (``omnitron_process_healthy``
    1/0, and ``omnitron_process_health_status`` 1 for its current ``status`` label).
    Per daemon: its RSS, CPU seconds, RPC calls, the state file's generation, failed
    samples, event loop lag (the heartbeat's histogram, and its recent p99 and max).
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    labels = ["app", "instance"]
    cpu = CounterMetricFamily(
        "omnitron_process_cpu_seconds",
        "CPU time used by the process (user + system)",
        labels=labels,
    )
    rss = GaugeMetricFamily(
        "omnitron_process_resident_memory_bytes", "Resident memory of the process", labels=labels
    )
    tree_rss = GaugeMetricFamily(
        "omnitron_process_tree_resident_memory_bytes",
        "Resident memory of the process and its descendants",
        labels=labels,
    )
    restarts = CounterMetricFamily(
        "omnitron_process_restarts", "Restarts of the process", labels=labels
    )
    up = GaugeMetricFamily("omnitron_process_up", "1 while the process exists", labels=labels)
    ready = GaugeMetricFamily(
        "omnitron_process_ready", "1 while the process is ready", labels=labels
    )
    uptime = GaugeMetricFamily(
        "omnitron_process_uptime_seconds", "Seconds since the process became ready", labels=labels
    )
    healthy = GaugeMetricFamily(
        "omnitron_process_healthy",
        "1 while the process's health probe passes (probed processes only)",
        labels=labels,
    )
    health_status = GaugeMetricFamily(
        "omnitron_process_health_status",
        "1 for the current status of the process's health probe",
        labels=[*labels, "status"],
    )
    for app in metrics.get("apps", ()):
        for process in app["processes"]:
            values = [app["name"], str(process["instance"])]
            if process.get("cpu_seconds") is not None:
                cpu.add_metric(values, process["cpu_seconds"])
            if process.get("rss") is not None:
                rss.add_metric(values, process["rss"])
            if process.get("tree_rss") is not None:
                tree_rss.add_metric(values, process["tree_rss"])
            restarts.add_metric(values, process["restarts"])
            up.add_metric(values, 1 if process["pid"] is not None else 0)
            ready.add_metric(values, 1 if process["status"] == "online" else 0)
            uptime.add_metric(values, process["uptime"])
            status = process.get("health")
            if status is not None:
                healthy.add_metric(values, 1 if status == "healthy" else 0)
                health_status.add_metric([*values, status], 1)
    daemon = metrics["daemon"]
    families: list[Any] = [
        cpu,
        rss,
        tree_rss,
        restarts,
        up,
        ready,
        uptime,
        healthy,
        health_status,
    ]
    for name, text, value, kind in (
        ("omnitron_daemon_resident_memory_bytes", "Resident memory of the daemon", "rss", "g"),
        ("omnitron_daemon_cpu_seconds", "CPU time used by the daemon", "cpu_seconds", "c"),
        ("omnitron_daemon_rpc_calls", "Control-plane calls answered", "rpc_calls", "c"),
        (
            "omnitron_daemon_persistence_generation",
            "Generation of the state file",
            "generation",
            "g",
        ),
        ("omnitron_daemon_sampling_failures", "Samples that could not be taken", "failures", "c"),
        (
            "omnitron_daemon_loop_lag_p99_seconds",
            "99th percentile of the event loop's lag over the recent heartbeats",
            "loop_lag_p99",
            "g",
        ),
        (
            "omnitron_daemon_loop_lag_max_seconds",
            "Largest event loop lag over the recent heartbeats",
            "loop_lag_max",
            "g",
        ),
    ):
        if daemon.get(value) is None:
            continue
        family = (CounterMetricFamily if kind == "c" else GaugeMetricFamily)(name, text)
        family.add_metric([], daemon[value])
        families.append(family)
    histogram = daemon.get("loop_lag_histogram")
    if histogram:
        lag = HistogramMetricFamily(
            "omnitron_daemon_loop_lag_seconds",
            "How late the daemon's heartbeat woke up: the event loop's lag",
        )
        cumulative, buckets = 0, []
        bounds = [*histogram["buckets"], math.inf]
        for bound, count in zip(bounds, histogram["counts"], strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
        lag.add_metric([], buckets, sum_value=histogram["sum"])
        families.append(lag)

    class _Collector:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry).decode()
