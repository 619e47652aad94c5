"""The base of every error the omnitron daemon, client and CLI raise.

Each subsystem defines its errors next to its code, deriving from
:class:`OmnitronError` (and from the matching builtin where one fits).
"""

from __future__ import annotations


class OmnitronError(Exception):
    """Base class of every omnitron error. ``str(err)`` is a one-line, secret-free reason."""


class SystemDefinitionError(OmnitronError, ValueError):
    """A module-worker system (``define_system``) is invalid; nothing of it can run.

    ``str(err)`` is one line for a single problem, otherwise a summary line followed
    by one indented line per problem.

    Attributes:
        issues: Every problem found (never empty), as ``(path, message)`` pairs, e.g.
            ``("processes[1].module", "is required")``.
    """

    def __init__(self, issues: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> None:
        self.issues: tuple[tuple[str, str], ...] = tuple(issues)
        if not self.issues:
            raise ValueError("SystemDefinitionError needs at least one issue")
        lines = [f"{path}: {message}" if path else message for path, message in self.issues]
        if len(lines) == 1:
            text = f"invalid system definition: {lines[0]}"
        else:
            text = f"invalid system definition ({len(lines)} problems):\n" + "\n".join(
                f"  {line}" for line in lines
            )
        super().__init__(text)
