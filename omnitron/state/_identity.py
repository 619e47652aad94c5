"""Process identity: a pid plus the process's start time and the boot it belongs to.

A pid alone names a process only until it exits; the kernel then hands the
number to the next process. ``(pid, start_time, boot_id)`` names one process
for ever, so a recycled pid is recognised (promise 4: we never signal a
stranger). On Linux the start time is read from ``/proc/<pid>/stat`` (clock
ticks since boot, turned into seconds) and the boot id from
``/proc/sys/kernel/random/boot_id``; elsewhere psutil's ``create_time`` is used
and there is no boot id.
"""

from __future__ import annotations

import functools
import os
import sys

import attrs

__all__ = ["ProcessIdentity"]

_PROC = "/proc"


@functools.cache
def _boot_id() -> str | None:
    try:
        with open(f"{_PROC}/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


@functools.cache
def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def _linux_start(pid: int) -> tuple[float, bool] | None:
    """Return ``(seconds since boot, is_zombie)``, or ``None`` if there is no such process."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        # Gone, hidden from us (hidepid), or unreadable right now (EMFILE): in every
        # case the process is not provably the same one, so it is not matched.
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    end = raw.rfind(b")")
    fields = raw[end + 2 :].split()
    if end < 0 or len(fields) < 20:
        return None  # truncated: the process was exiting as we read
    state = fields[0]  # field 3
    start_ticks = int(fields[19])  # field 22
    return start_ticks / _clock_ticks(), state in (b"Z", b"X")


def _psutil_start(pid: int) -> float | None:  # pragma: no cover - non-Linux fallback
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@attrs.frozen(kw_only=True)
class ProcessIdentity:
    """Who a process is, in a form that survives pid reuse.

    Build one with :meth:`of` or :meth:`current`; compare a remembered identity
    with the live process with :meth:`is_running`. ``start_time`` is opaque:
    compare it only with a value obtained the same way on the same host.

    Attributes:
        pid: The process id.
        start_time: When the process started (seconds since boot on Linux).
        boot_id: The kernel's boot id when the identity was taken, if known.
    """

    pid: int = attrs.field(validator=attrs.validators.gt(0))
    start_time: float | None = None
    boot_id: str | None = None

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of the live process ``pid``, or ``None`` if there is none (or a zombie).

        Blocking (reads ``/proc``); cheap enough for the loop, but batch it in a
        thread when walking many pids.
        """
        if sys.platform.startswith("linux") and os.path.isdir(_PROC):
            found = _linux_start(pid)
            if found is None or found[1]:
                return None
            return cls(pid=pid, start_time=found[0], boot_id=_boot_id())
        start = _psutil_start(pid)  # pragma: no cover - non-Linux fallback
        return None if start is None else cls(pid=pid, start_time=start)  # pragma: no cover

    @classmethod
    def current(cls) -> ProcessIdentity:
        """The identity of the calling process."""
        me = cls.of(os.getpid())
        assert me is not None  # we are alive
        return me

    def is_running(self) -> bool:
        """Whether this very process is still alive (same pid, start time and boot)."""
        live = ProcessIdentity.of(self.pid)
        if live is None:
            return False
        if self.boot_id is not None and live.boot_id is not None and self.boot_id != live.boot_id:
            return False
        return self.start_time is None or live.start_time == self.start_time
