"""How a child ended."""

from __future__ import annotations

import os
import signal as _signal

import attrs

__all__ = ["ExitStatus"]


def _signal_name(signum: int) -> str:
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@attrs.frozen
class ExitStatus:
    """How one run of a child ended.

    Exactly one of ``code``, ``signal`` and ``exception`` is set, except for a start
    failure, where ``exception`` holds the :class:`~supervision.StartFailure`.

    Attributes:
        code: The exit code of a process that exited.
        signal: The number of the signal that killed a process.
        exception: What a task raised, or why a start failed.
        normal: Whether the exit counts as normal for the child's restart policy.
        reason: One line for humans: ``"exited with code 3"``, ``"killed by SIGKILL"``.
    """

    code: int | None = None
    signal: int | None = None
    exception: BaseException | None = attrs.field(default=None, eq=False)
    normal: bool = False
    reason: str = ""

    @classmethod
    def exited(cls, code: int, *, normal: bool | None = None) -> ExitStatus:
        return cls(
            code=code,
            normal=(code == 0) if normal is None else normal,
            reason=f"exited with code {code}",
        )

    @classmethod
    def killed(cls, signum: int, *, normal: bool = False) -> ExitStatus:
        return cls(signal=signum, normal=normal, reason=f"killed by {_signal_name(signum)}")

    @classmethod
    def from_wait_status(
        cls,
        status: int,
        *,
        success_codes: frozenset[int] = frozenset({0}),
        normal_signals: frozenset[int] = frozenset(),
    ) -> ExitStatus:
        """Decode a raw ``waitpid`` status."""
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            return cls.killed(-code, normal=-code in normal_signals)
        return cls.exited(code, normal=code in success_codes)

    @classmethod
    def raised(cls, exc: BaseException) -> ExitStatus:
        return cls(exception=exc, normal=False, reason=f"raised {exc!r}")

    @classmethod
    def returned(cls) -> ExitStatus:
        return cls(normal=True, reason="returned")

    @classmethod
    def start_failed(cls, exc: BaseException, reason: str) -> ExitStatus:
        return cls(exception=exc, normal=False, reason=f"start failed: {reason}")

    @property
    def signal_name(self) -> str | None:
        """``"SIGKILL"`` etc., or ``None`` if no signal ended the child."""
        return None if self.signal is None else _signal_name(self.signal)

    def __str__(self) -> str:
        return self.reason
