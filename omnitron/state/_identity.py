"""Process identity: a pid plus the process's start time and the boot it belongs to.

A pid alone names a process only until it exits; the kernel then hands the
number to the next process. ``(pid, start_time, boot_id)`` names one process
for ever, so a recycled pid is recognised (promise 4: we never signal a
stranger). The library's :class:`supervision.ProcessIdentity` is the one
implementation (``/proc/<pid>/stat`` is parsed there only); ``state.json`` and
the pid lock record its fields unchanged: ``start_time`` in seconds since boot
on Linux, and the boot id from ``/proc/sys/kernel/random/boot_id``.
"""

from __future__ import annotations

from supervision import ProcessIdentity

__all__ = ["ProcessIdentity"]
