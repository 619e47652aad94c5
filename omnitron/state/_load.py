"""Loading ``state.json`` at daemon start, with every fallback decided in one place.

Order of trust: ``state.json``; if it is corrupt, ``state.json.bak``; if both
are, nothing. Evidence is never destroyed: a corrupt file is moved aside to
``<name>.corrupt-<UTC timestamp>`` (with a numeric suffix rather than
overwriting an earlier one). A file written by a newer omnitron is not
interpreted and not touched: the daemon starts with no apps and the returned
result is read-only, so the writer never overwrites it (PC-04). Leftover
temporary files of an interrupted write are removed, never loaded (PC-01).

Call :func:`load_state` once, while holding the home's pid lock.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import attrs

from .._log import get_logger
from ._codec import SCHEMA_VERSION, Decoded, decode_state
from ._errors import CorruptStateFile, NewerStateSchema, UnsafeHome
from ._home import Home
from ._records import DaemonState

__all__ = ["LoadResult", "StateSource", "load_state"]

_log = get_logger()

_MAX_STATE_BYTES = 64 * 1024 * 1024


class StateSource(enum.Enum):
    """Which file the loaded state came from."""

    PRIMARY = "primary"
    """``state.json``."""
    BACKUP = "backup"
    """``state.json.bak``: the primary was missing or corrupt."""
    NONE = "none"
    """No usable file: the daemon starts with no apps."""


@attrs.frozen(kw_only=True)
class LoadResult:
    """The outcome of :func:`load_state`.

    Attributes:
        state: The loaded intent (empty when nothing usable was found).
        source: Where it came from.
        generation: Its generation (0 when nothing was loaded).
        warnings: One line per problem found, for the operator; already logged.
        read_only: The state on disk must not be overwritten (newer schema, or a
            file that could not be read or moved aside). A writer built from this
            result writes nothing.
        read_only_reason: Why, when ``read_only``.
        moved_aside: Corrupt (or reset) files, as renamed.
        removed_temp: Leftover temporary files that were removed.
    """

    state: DaemonState = attrs.field(factory=DaemonState)
    source: StateSource = StateSource.NONE
    generation: int = 0
    warnings: tuple[str, ...] = ()
    read_only: bool = False
    read_only_reason: str | None = None
    moved_aside: tuple[Path, ...] = ()
    removed_temp: tuple[Path, ...] = ()


@attrs.frozen
class _Candidate:
    path: Path
    decoded: Decoded | None = None
    missing: bool = False
    corrupt: str | None = None
    newer: NewerStateSchema | None = None
    unreadable: OSError | None = None


def _read(path: Path) -> _Candidate:
    try:
        # O_NONBLOCK: a FIFO planted under this name must not hang the boot.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return _Candidate(path, missing=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeHome(
                f"{path} is a symbolic link; refusing to read or replace it",
                errno=exc.errno,
                filename=str(path),
            ) from exc
        return _Candidate(path, unreadable=exc)
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            data = f.read(_MAX_STATE_BYTES + 1)
    except OSError as exc:
        return _Candidate(path, unreadable=exc)
    if len(data) > _MAX_STATE_BYTES:
        return _Candidate(path, corrupt=f"larger than {_MAX_STATE_BYTES} bytes")
    try:
        return _Candidate(path, decoded=decode_state(data))
    except CorruptStateFile as exc:
        return _Candidate(path, corrupt=exc.reason)
    except NewerStateSchema as exc:
        return _Candidate(path, newer=exc)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _move_aside(path: Path, tag: str, stamp: str) -> Path:
    """Rename ``path`` to ``<name>.<tag>-<stamp>[-N]`` without ever replacing a file."""
    for n in range(1000):
        target = path.with_name(f"{path.name}.{tag}-{stamp}" + (f"-{n}" if n else ""))
        try:
            os.link(path, target, follow_symlinks=False)  # fails if target exists
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if os.path.lexists(target):  # no hard links here; we hold the lock, so no race
                continue
            os.rename(path, target)
            return target
        os.unlink(path)
        return target
    raise FileExistsError(errno.EEXIST, "no free name to move the file aside to", str(path))


def _remove_temp_files(home: Home) -> list[Path]:
    removed: list[Path] = []
    try:
        names = os.listdir(home.path)
    except OSError:
        return removed
    for name in sorted(names):
        if name.startswith("state.json.") and name.endswith(".tmp"):
            path = home.path / name
            try:
                os.unlink(path)
            except OSError as exc:
                _log.warning("state_temp_file_not_removed", path=str(path), error=str(exc))
                continue
            removed.append(path)
            _log.info("state_temp_file_removed", path=str(path))
    return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:  # evidence moves are best effort; the load result stands
        _log.warning("state_dir_fsync_failed", path=str(path), error=str(exc))


def _describe(c: _Candidate) -> str:
    if c.corrupt is not None:
        return c.corrupt
    if c.unreadable is not None:
        return f"cannot read: {c.unreadable.strerror or c.unreadable}"
    if c.missing:
        return "missing"
    return "ok"  # pragma: no cover - not called for usable files


class _Loader:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.warnings: list[str] = []
        self.moved: list[Path] = []
        self.read_only_reason: str | None = None
        self.stamp = _stamp()

    def warn(self, event: str, message: str, *, error: bool = False, **fields: object) -> None:
        self.warnings.append(message)
        if error:
            _log.error(event, message=message, **fields)
        else:
            _log.warning(event, message=message, **fields)

    def set_aside(self, c: _Candidate, tag: str = "corrupt") -> str:
        """Move a bad file aside; return how to describe where it went."""
        try:
            target = _move_aside(c.path, tag, self.stamp)
        except OSError as exc:
            # Without the evidence safe elsewhere, writing could destroy it: go read-only.
            self.read_only_reason = f"could not move {c.path} aside ({exc.strerror or exc})"
            return f"it could not be moved aside ({exc.strerror or exc}) and is left in place"
        self.moved.append(target)
        return f"it was kept as {target.name}"

    def newer(self, c: _Candidate) -> LoadResult:
        assert c.newer is not None
        by = f", {c.newer.written_by}" if c.newer.written_by else ""
        message = (
            f"{c.path} was written by a newer omnitron (schema {c.newer.schema_version}{by}); "
            f"refusing to downgrade: this omnitron reads schema {SCHEMA_VERSION}. Starting with "
            "no apps adopted; the file will not be overwritten. Upgrade omnitron, or move the "
            "file away to start over."
        )
        self.warn(
            "state_schema_newer",
            message,
            error=True,
            path=str(c.path),
            schema_version=c.newer.schema_version,
        )
        return self.result(
            None,
            StateSource.NONE,
            read_only_reason=f"{c.path.name} has a newer schema ({c.newer.schema_version})",
        )

    def result(
        self, decoded: Decoded | None, source: StateSource, *, read_only_reason: str | None = None
    ) -> LoadResult:
        reason = read_only_reason or self.read_only_reason
        return LoadResult(
            state=decoded.state if decoded else DaemonState(),
            source=source,
            generation=decoded.generation if decoded else 0,
            warnings=tuple(self.warnings),
            read_only=reason is not None,
            read_only_reason=reason,
            moved_aside=tuple(self.moved),
        )

    def load(self, reset: bool) -> LoadResult:
        home = self.home
        if reset:
            return self.reset()
        primary = _read(home.state_file)
        if primary.decoded is not None:
            return self.result(primary.decoded, StateSource.PRIMARY)
        if primary.newer is not None:
            return self.newer(primary)
        if primary.unreadable is not None:
            # Unknown content, possibly the newest: never replace it.
            self.read_only_reason = f"cannot read {primary.path}"
        backup = _read(home.backup_file)
        if primary.missing and backup.missing:
            return self.result(None, StateSource.NONE)
        primary_fate = ""
        if primary.corrupt is not None:
            primary_fate = self.set_aside(primary)
        if backup.decoded is not None:
            why = _describe(primary)
            fate = f"; {primary_fate}" if primary_fate else ""
            self.warn(
                "state_loaded_from_backup",
                f"{primary.path} is unusable ({why}); loaded {backup.path} "
                f"(generation {backup.decoded.generation}) instead{fate}",
                path=str(primary.path),
                reason=why,
            )
            return self.result(backup.decoded, StateSource.BACKUP)
        if backup.newer is not None:
            return self.newer(backup)
        backup_fate = ""
        if backup.corrupt is not None:
            backup_fate = self.set_aside(backup)
        elif backup.unreadable is not None:
            self.read_only_reason = self.read_only_reason or f"cannot read {backup.path}"
        fates = "; ".join(
            f"{c.path.name}: {fate}"
            for c, fate in ((primary, primary_fate), (backup, backup_fate))
            if fate
        )
        self.warn(
            "state_lost",
            f"no usable state: {primary.path} ({_describe(primary)}) and {backup.path} "
            f"({_describe(backup)}); starting with no apps adopted"
            + (f"; {fates}" if fates else ""),
            error=True,
            path=str(primary.path),
        )
        return self.result(None, StateSource.NONE)

    def reset(self) -> LoadResult:
        for path in (self.home.state_file, self.home.backup_file):
            if os.path.lexists(path):
                try:
                    self.moved.append(_move_aside(path, "reset", self.stamp))
                except OSError as exc:
                    self.read_only_reason = f"could not move {path} aside ({exc.strerror or exc})"
        if self.moved:
            names = ", ".join(p.name for p in self.moved)
            self.warn("state_reset", f"state reset as asked: previous files kept as {names}")
        return self.result(None, StateSource.NONE)


def load_state(home: Home, *, reset: bool = False) -> LoadResult:
    """Load the daemon's persisted intent from ``home``.

    Call it once at start-up, holding the pid lock: it removes leftover
    ``state.json.*.tmp`` files and moves corrupt files aside. Every problem is
    logged and listed in :attr:`LoadResult.warnings`; only an unsafe file
    (a symbolic link) raises. Blocking: async callers use
    ``trio.to_thread.run_sync``.

    Args:
        home: The daemon's home.
        reset: Start from an empty state on purpose (``--reset-state``): existing
            files are moved aside to ``<name>.reset-<timestamp>``, not deleted.

    Raises:
        UnsafeHome: ``state.json`` or ``state.json.bak`` is a symbolic link.
    """
    removed = _remove_temp_files(home)
    loader = _Loader(home)
    result = loader.load(reset)
    if removed or loader.moved:
        _fsync_dir(home.path)
    result = attrs.evolve(result, removed_temp=tuple(removed))
    _log.info(
        "state_loaded",
        source=result.source.value,
        generation=result.generation,
        apps=len(result.state.apps),
        read_only=result.read_only,
    )
    return result
