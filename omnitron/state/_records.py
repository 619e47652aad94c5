"""The typed records of the daemon's persisted intent.

A :class:`DaemonState` is an immutable snapshot: the daemon builds a new one
after every change and hands it to the persistence task, which may write it
later (or not at all, if a newer one arrives first) without copying.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Any

import attrs

from ._identity import ProcessIdentity

__all__ = ["AppMode", "AppState", "AppStatus", "DaemonState", "DesiredStatus", "ProcessState"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_TEXT = 4096


class AppStatus(enum.Enum):
    """What an app or one of its processes is doing, as shown by ``omnitron status``."""

    STARTING = "starting"
    ONLINE = "online"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERRORED = "errored"
    CRASHED = "crashed"


class DesiredStatus(enum.Enum):
    """What the operator asked for: the state a resurrected daemon brings the app back to."""

    RUNNING = "running"
    STOPPED = "stopped"


class AppMode(enum.Enum):
    """How an app is launched."""

    CLASSIC = "classic"
    """Any program: one command, ``instances`` copies of it."""
    BOOTSTRAP = "bootstrap"
    """Module-worker mode: one process per ``Process`` entry instance."""


# --------------------------------------------------------------------------- validators


def _name(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name}: expected a string, got {type(value).__name__}")
    if not _NAME.fullmatch(value) or value == "..":
        raise ValueError(
            f"{attribute.name}: {value[:80]!r} is not a valid name "
            "(letters, digits, '_', '.', '-', at most 64, not starting with a punctuation mark)"
        )


def _count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name}: expected an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{attribute.name}: must be >= 0, got {value}")


def _optional_pid(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{attribute.name}: expected an integer or None, got {type(value).__name__}"
        )
    if value <= 0:
        raise ValueError(f"{attribute.name}: must be > 0, got {value}")


def _optional_time(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{attribute.name}: expected a number or None, got {type(value).__name__}")
    if not 0 <= value < float("inf"):
        raise ValueError(f"{attribute.name}: must be a finite number >= 0, got {value}")


def _optional_text(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name}: expected a string or None, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{attribute.name}: longer than {MAX_TEXT} characters")


def _tuple_of(kind: type) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: tuple[object, ...]) -> None:
        for i, item in enumerate(value):
            if not isinstance(item, kind):
                raise TypeError(
                    f"{attribute.name}[{i}]: expected {kind.__name__}, got {type(item).__name__}"
                )

    return check


def _to_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


# --------------------------------------------------------------------------- records


@attrs.frozen(kw_only=True)
class ProcessState:
    """One OS process of an app, as last seen by the daemon.

    ``pid``, ``start_time`` and ``boot_id`` identify the process across a daemon
    restart; take them from :meth:`ProcessIdentity.of` (or build the record with
    :meth:`from_identity`) so they compare equal with a later
    :meth:`ProcessIdentity.of` of the same process.

    Attributes:
        name: The process name (the app name in classic mode).
        instance: Index of this copy in the app's pool.
        status: What the process is doing.
        pid: Its pid while it runs, else ``None``.
        start_time: Its start time (see :class:`ProcessIdentity`), with ``pid``.
        boot_id: The boot it was started in, with ``pid``.
        restarts: How many times this process has been restarted.
    """

    name: str = attrs.field(validator=_name)
    instance: int = attrs.field(default=0, validator=_count)
    status: AppStatus = attrs.field(
        default=AppStatus.STOPPED, validator=attrs.validators.instance_of(AppStatus)
    )
    pid: int | None = attrs.field(default=None, validator=_optional_pid)
    start_time: float | None = attrs.field(default=None, validator=_optional_time)
    boot_id: str | None = attrs.field(default=None, validator=_optional_text)
    restarts: int = attrs.field(default=0, validator=_count)

    @classmethod
    def from_identity(
        cls,
        name: str,
        identity: ProcessIdentity,
        *,
        instance: int = 0,
        status: AppStatus = AppStatus.ONLINE,
        restarts: int = 0,
    ) -> ProcessState:
        """A record for a running process whose identity was taken with :class:`ProcessIdentity`."""
        return cls(
            name=name,
            instance=instance,
            status=status,
            pid=identity.pid,
            start_time=identity.start_time,
            boot_id=identity.boot_id,
            restarts=restarts,
        )

    @property
    def identity(self) -> ProcessIdentity | None:
        """The recorded identity, or ``None`` when no pid is recorded."""
        if self.pid is None:
            return None
        return ProcessIdentity(pid=self.pid, start_time=self.start_time, boot_id=self.boot_id)


def _unique_processes(
    instance: object, attribute: attrs.Attribute[Any], value: tuple[ProcessState, ...]
) -> None:
    seen: set[tuple[str, int]] = set()
    for proc in value:
        key = (proc.name, proc.instance)
        if key in seen:
            raise ValueError(f"{attribute.name}: duplicate process {proc.name}[{proc.instance}]")
        seen.add(key)


@attrs.frozen(kw_only=True)
class AppState:
    """One app of the ecosystem: what the operator wants and what it last was.

    Attributes:
        name: The app name.
        mode: Classic (any command) or bootstrap (module workers).
        desired: Running or stopped, as the operator last asked.
        status: The aggregate status last observed.
        instances: How many processes the app should have (the pool size).
        config_instances: The config's ``instances`` when this was recorded: a
            scaled count is restored only while the config's is still this one.
        restarts: Restarts of the app, all processes together.
        last_error: The last failure, one line (e.g. ``"exit code 3"``), if any.
        processes: Its processes, by name and instance.
    """

    name: str = attrs.field(validator=_name)
    mode: AppMode = attrs.field(
        default=AppMode.CLASSIC, validator=attrs.validators.instance_of(AppMode)
    )
    desired: DesiredStatus = attrs.field(
        default=DesiredStatus.RUNNING, validator=attrs.validators.instance_of(DesiredStatus)
    )
    status: AppStatus = attrs.field(
        default=AppStatus.STOPPED, validator=attrs.validators.instance_of(AppStatus)
    )
    instances: int = attrs.field(default=1, validator=_count)
    config_instances: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_count)
    )
    restarts: int = attrs.field(default=0, validator=_count)
    last_error: str | None = attrs.field(default=None, validator=_optional_text)
    processes: tuple[ProcessState, ...] = attrs.field(
        default=(),
        converter=_to_tuple,
        validator=[_tuple_of(ProcessState), _unique_processes],
    )


def _unique_apps(
    instance: object, attribute: attrs.Attribute[Any], value: tuple[AppState, ...]
) -> None:
    seen: set[str] = set()
    for app in value:
        if app.name in seen:
            raise ValueError(f"{attribute.name}: duplicate app name {app.name!r}")
        seen.add(app.name)


@attrs.frozen(kw_only=True)
class DaemonState:
    """Everything the daemon persists: its apps, in start order.

    Attributes:
        apps: The apps, unique by name.
        stop_reason: Why the daemon stopped on its own (``"critical app 'db'
            crashed: ..."``); ``None`` while it runs, and after a requested stop.
    """

    apps: tuple[AppState, ...] = attrs.field(
        default=(), converter=_to_tuple, validator=[_tuple_of(AppState), _unique_apps]
    )
    stop_reason: str | None = attrs.field(default=None, validator=_optional_text)

    def get(self, name: str) -> AppState | None:
        """The app called ``name``, or ``None``."""
        for app in self.apps:
            if app.name == name:
                return app
        return None

    def with_app(self, app: AppState) -> DaemonState:
        """A copy where ``app`` replaces the app of the same name, or is appended."""
        apps = list(self.apps)
        for i, old in enumerate(apps):
            if old.name == app.name:
                apps[i] = app
                break
        else:
            apps.append(app)
        return attrs.evolve(self, apps=apps)

    def without_app(self, name: str) -> DaemonState:
        """A copy without the app called ``name`` (unchanged if there is none)."""
        return attrs.evolve(self, apps=[app for app in self.apps if app.name != name])
