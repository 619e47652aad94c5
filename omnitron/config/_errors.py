"""The errors and issue records the configuration loader produces."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import attrs

from ..errors import OmnitronError

__all__ = ["ConfigError", "ConfigIssue", "ConfigNotFound"]


@attrs.frozen(kw_only=True)
class ConfigIssue:
    """One problem (or warning) found in a configuration.

    Attributes:
        file: The file the problem is in, or ``None`` when the ecosystem was built in
            code outside any file.
        path: The field path, e.g. ``apps[1].depends_on``; empty for whole-file problems
            such as a syntax error.
        message: What is wrong and, where it helps, what to write instead.
        line: 1-based line in ``file`` where known.
        column: 1-based column where known (syntax errors).
    """

    file: Path | None
    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def location(self) -> str:
        """``file:line:col`` with the parts that are known (may be empty)."""
        parts = [str(self.file)] if self.file is not None else []
        if parts and self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        return ":".join(parts)

    def __str__(self) -> str:
        where = self.location()
        what = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: {what}" if where else what


class ConfigError(OmnitronError, ValueError):
    """The configuration cannot be used; nothing was started.

    ``str(err)`` is one line for a single problem, otherwise a summary line followed
    by one indented line per problem.

    Attributes:
        issues: Every problem found (never empty), by line where lines are known.
    """

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: tuple[ConfigIssue, ...] = tuple(issues)
        if not self.issues:
            raise ValueError("ConfigError needs at least one issue")
        super().__init__(_render(self.issues))


class ConfigNotFound(ConfigError):
    """No configuration file was found (discovery) or the given path does not exist.

    Attributes:
        searched: The directories that were searched, nearest first (empty when an
            explicit path was given).
    """

    def __init__(self, issue: ConfigIssue, searched: Iterable[Path] = ()) -> None:
        super().__init__([issue])
        self.searched: tuple[Path, ...] = tuple(searched)


def _render(issues: tuple[ConfigIssue, ...]) -> str:
    if len(issues) == 1:
        return str(issues[0])
    files = {str(issue.file) for issue in issues if issue.file is not None}
    where = f" in {files.pop()}" if len(files) == 1 else ""
    lines = [f"{len(issues)} configuration problems{where}:"]
    lines.extend(f"  {issue}" for issue in issues)
    return "\n".join(lines)
