"""Best-effort line numbers for field paths in a TOML document.

``tomllib`` does not report positions, so this scans the text once for table
headers (``[a.b]``, ``[[apps]]``) and ``key = value`` lines and records where
each key path starts. A path that is not found falls back to its nearest
recorded parent (an inline table's key line, an ``[[apps]]`` header). The scan
is line by line with ``str`` methods only, so it is linear in the input.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["TomlLocator"]

Key = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _split_key(text: str) -> list[str] | None:
    """``a.b."c d"`` -> ``["a", "b", "c d"]``; ``None`` when it is not a plain key."""
    parts: list[str] = []
    for raw in text.split("."):
        part = raw.strip()
        if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'":
            part = part[1:-1]
        elif not part or not set(part) <= _BARE:
            return None
        parts.append(part)
    return parts


class TomlLocator:
    """Maps key paths (``("apps", 1, "depends_on")``) to 1-based line numbers.

    Args:
        text: The document.
        prefix: The key path of the table the paths are relative to, e.g.
            ``("tool", "omnitron")`` for a ``pyproject.toml``.
    """

    def __init__(self, text: str, prefix: Sequence[str] = ()) -> None:
        self._prefix: Key = tuple(prefix)
        self._lines: dict[Key, int] = {}
        self._scan(text)

    def _scan(self, text: str) -> None:
        arrays: dict[tuple[str, ...], int] = {}  # array-of-tables path -> last index
        table: Key = ()
        in_string: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            stripped = line.strip()
            if stripped.startswith("["):
                header = self._header(stripped, arrays)
                if header is not None:
                    table = header
                    self._lines.setdefault(table, number)
                continue
            key_text, equals, value = stripped.partition("=")
            if not equals:
                continue
            parts = _split_key(key_text)
            if parts is None:
                continue
            self._lines.setdefault((*table, *parts), number)
            for quote in ('"""', "'''"):
                if value.count(quote) % 2 == 1:
                    in_string = quote

    def _header(self, stripped: str, arrays: dict[tuple[str, ...], int]) -> Key | None:
        is_array = stripped.startswith("[[")
        closing = "]]" if is_array else "]"
        inner, found, _ = stripped[len(closing) :].partition(closing)
        parts = _split_key(inner) if found else None
        if parts is None:
            return None
        if is_array:
            name = tuple(parts)
            arrays[name] = arrays.get(name, -1) + 1
        key: list[str | int] = []
        for depth in range(1, len(parts) + 1):
            key.append(parts[depth - 1])
            index = arrays.get(tuple(parts[:depth]))
            if index is not None:
                key.append(index)
        return tuple(key)

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """The line where ``path`` (or its nearest recorded parent) is defined."""
        full: Key = (*self._prefix, *path)
        while len(full) > len(self._prefix):
            line = self._lines.get(full)
            if line is not None:
                return line
            full = full[:-1]
        return None
