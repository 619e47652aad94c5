"""The last stderr lines of an app, read from its log file (standard library only).

Shared by the daemon (the ``data`` of a start failure) and ``omnitron up`` (which
reads the file itself), so both show the same lines.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["STDERR_TAIL", "stderr_tail"]

STDERR_TAIL = 10
"""Lines of an app's stderr shown when it did not come up."""
TAIL_BYTES = 65536
"""How much of the end of the log file is searched for those lines."""


def stderr_tail(path: Path, app: str, lines: int = STDERR_TAIL) -> list[str]:
    """The text of ``app``'s last ``lines`` stderr lines (any instance), oldest first.

    Log lines look like ``<time> <app>[<instance>] err | <text>``; an unreadable or
    missing file has none.
    """
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    marker = re.compile(rf" {re.escape(app)}\[\d+\] err \| ")
    found = []
    for line in text.splitlines():
        match = marker.search(line)
        if match is not None:
            found.append(line[match.end() :])
    return found[-lines:] if lines > 0 else []
