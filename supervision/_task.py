"""Trio task leaves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from ._errors import StartFailure
from ._exit import ExitStatus
from ._runner import RunnerContext, StopReport
from ._spec import TaskChild

__all__ = ["TaskRunner"]


class _ReadySignal:
    """Stands in for ``task_status`` so the runner knows whether ``started()`` ran."""

    def __init__(self, outer: trio.TaskStatus[int | None]) -> None:
        self._outer = outer
        self.fired = False

    def started(self, value: object = None) -> None:
        if self.fired:
            raise RuntimeError("task_status.started() called twice")
        self.fired = True
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
        ready = _ReadySignal(task_status)
        spawned(None)
        kwargs: dict[str, Any] = {}
        if self._spec.uses_task_status:
            kwargs["task_status"] = ready
        else:
            ready.started()
        try:
            await self._spec.async_fn(*self._spec.args, **kwargs)
        except trio.Cancelled:
            self._stop_report = StopReport()
            raise
        except Exception as exc:
            if not ready.fired:
                raise StartFailure(self._context.path, f"raised {exc!r} before ready") from exc
            return ExitStatus.raised(exc)
        if not ready.fired:
            raise StartFailure(self._context.path, "returned without calling task_status.started()")
        return ExitStatus.returned()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
