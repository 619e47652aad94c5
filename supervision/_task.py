"""Trio task leaves."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio

from ._errors import StartFailure
from ._exit import ExitStatus
from ._runner import RunnerContext, StopReport
from ._spec import TaskChild

__all__ = ["TaskRunner"]


class _ReadySignal:
    """Stands in for ``task_status``: knows whether ``started()`` ran, and lifts the
    startup deadline when it does."""

    def __init__(self, outer: trio.TaskStatus[int | None], deadline: trio.CancelScope) -> None:
        self._outer = outer
        self._deadline = deadline
        self.fired = False

    def started(self, value: object = None) -> None:
        if self.fired:
            raise RuntimeError("task_status.started() called twice")
        self.fired = True
        self._deadline.deadline = math.inf
        self._outer.started(None)


class TaskRunner:
    """Runs a :class:`TaskChild`: one call of its async function per generation."""

    def __init__(self, spec: TaskChild, context: RunnerContext) -> None:
        self._spec = spec
        self._context = context
        self._stop_report: StopReport | None = None

    @property
    def pid(self) -> int | None:
        return None

    @property
    def stop_report(self) -> StopReport | None:
        return self._stop_report

    async def run(
        self,
        spawned: Callable[[int | None], None],
        *,
        task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED,
    ) -> ExitStatus:
        self._stop_report = None
        timeout = self._spec.startup_timeout
        deadline = trio.CancelScope(deadline=trio.current_time() + timeout)
        ready = _ReadySignal(task_status, deadline)
        spawned(None)
        kwargs: dict[str, Any] = {}
        if self._spec.uses_task_status:
            kwargs["task_status"] = ready
        else:
            ready.started()
        try:
            with deadline:
                await self._spec.async_fn(*self._spec.args, **kwargs)
        except trio.Cancelled:
            self._stop_report = StopReport()
            raise
        except Exception as exc:
            if not ready.fired:
                raise StartFailure(self._context.path, f"raised {exc!r} before ready") from exc
            return ExitStatus.raised(exc)
        if deadline.cancelled_caught:
            raise StartFailure(
                self._context.path,
                f"not ready within {timeout:g}s (task_status.started() was not called)",
            )
        if not ready.fired:
            raise StartFailure(self._context.path, "returned without calling task_status.started()")
        return ExitStatus.returned()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
