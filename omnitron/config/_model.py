"""The typed, frozen configuration records an ecosystem is made of.

These are the *results* of validation: :func:`~omnitron.config.load_config` and
:func:`~omnitron.config.define_ecosystem` build them after checking every field,
with durations in seconds (``float``), sizes in bytes (``int``) and paths
absolute. Derive variants with :func:`attrs.evolve` or :meth:`Ecosystem.with_stack`.
"""

from __future__ import annotations

import enum
import heapq
import signal
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import attrs

from ._errors import ConfigError, ConfigIssue
from ._fields import (
    MAX_INSTANCES,
    did_you_mean,
    key,
    p_bool,
    p_directory,
    p_duration,
    p_enum,
    p_factor,
    p_int,
    p_interpreter,
    p_name,
    p_port,
    p_signal,
    p_size,
    p_strings,
    p_url,
)

__all__ = [
    "DEFAULT_READY",
    "DEFAULT_RESTART_POLICY",
    "DEFAULT_WATCH_IGNORE",
    "AppConfig",
    "BackoffConfig",
    "Ecosystem",
    "HealthCheckConfig",
    "HealthConfig",
    "LogLevel",
    "LoggingConfig",
    "MetricsConfig",
    "MonitoringConfig",
    "ReadyConfig",
    "ReadyKind",
    "Restart",
    "RestartPolicy",
    "SocketConfig",
    "StackAppOverride",
    "StackConfig",
    "Strategy",
    "SupervisionConfig",
    "WatchConfig",
]

# Always ignored by the watcher; an app's ``watch.ignore`` adds to these. Editors'
# swap, backup and lock files: vim (``*.swp``, ``*.swo``, ``*.swx``, ``4913``, ``*~``),
# emacs (``.#*``, ``#*#``).
DEFAULT_WATCH_IGNORE: tuple[str, ...] = (
    ".git",
    ".hg",
    "__pycache__",
    "*.pyc",
    "*.pyo",
    "*.swp",
    "*.swo",
    "*.swx",
    "4913",
    "*~",
    ".#*",
    "#*#",
    "*.log",
    "logs",
    ".venv",
    "venv",
    "node_modules",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
)


# A key accepted before it is built carries an ``inert`` marker of :func:`key` (why it
# has no effect yet); the change that builds it deletes the marker and the warning.
# Every key of this version is built.

_POSITIVE = p_duration(positive=True)
_DURATION = p_duration(positive=False)


_EMPTY_MAP: Mapping[str, Any] = MappingProxyType({})
"""The one empty read-only mapping: every record without ``env`` (or overrides) shares it."""


def _frozen_map(value: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value)) if value else _EMPTY_MAP


def _env_repr(env: Mapping[str, str]) -> str:
    # Values may be secrets expanded from the daemon's environment: show keys only.
    return "{" + ", ".join(f"{key!r}: ..." for key in env) + "}"


class Strategy(enum.Enum):
    """How the daemon's top-level supervisor restarts apps (OTP strategies)."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class DaemonDeath(enum.Enum):
    """What happens to the apps when the daemon dies without stopping them."""

    STOP = "stop"
    KEEP = "keep"


class Restart(enum.Enum):
    """When an app that exited is restarted."""

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class LogLevel(enum.Enum):
    """The daemon's log level (standard :mod:`logging` names, lowercase)."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


class ReadyKind(enum.Enum):
    """How an app reports that it is ready (see :class:`ReadyConfig`)."""

    ON_SPAWN = "on_spawn"
    NOTIFY = "notify"
    TCP = "tcp"
    HTTP = "http"
    AFTER = "after"
    FD = "fd"


@attrs.frozen(kw_only=True)
class BackoffConfig:
    """Delay before the n-th consecutive restart: ``min(max, initial * factor**(n-1))``."""

    initial: float = attrs.field(default=1.0, metadata=key(_DURATION))
    max: float = attrs.field(default=30.0, metadata=key(_DURATION))
    factor: float = attrs.field(default=2.0, metadata=key(p_factor))


@attrs.frozen(kw_only=True)
class SupervisionConfig:
    """``[supervision]``: the strategy and limits of the supervisor above all apps."""

    strategy: Strategy = attrs.field(default=Strategy.ONE_FOR_ONE, metadata=key(p_enum(Strategy)))
    max_restarts: int = attrs.field(default=5, metadata=key(p_int(0, 1_000_000)))
    window: float = attrs.field(default=60.0, metadata=key(_POSITIVE))
    backoff: BackoffConfig = attrs.field(default=BackoffConfig(), metadata=key())
    on_daemon_death: DaemonDeath = attrs.field(
        default=DaemonDeath.STOP, metadata=key(p_enum(DaemonDeath))
    )


@attrs.frozen(kw_only=True)
class HealthCheckConfig:
    """``[monitoring] health_check``: defaults for every app's health probe."""

    interval: float = attrs.field(default=15.0, metadata=key(_POSITIVE))
    timeout: float = attrs.field(default=5.0, metadata=key(_POSITIVE))


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """``[monitoring] metrics``: sampling cadence and in-memory retention (seconds)."""

    interval: float = attrs.field(default=5.0, metadata=key(_POSITIVE))
    retention: float = attrs.field(default=3600.0, metadata=key(_POSITIVE))


@attrs.frozen(kw_only=True)
class MonitoringConfig:
    """``[monitoring]``."""

    health_check: HealthCheckConfig = attrs.field(default=HealthCheckConfig(), metadata=key())
    metrics: MetricsConfig = attrs.field(default=MetricsConfig(), metadata=key())


@attrs.frozen(kw_only=True)
class LoggingConfig:
    """``[logging]``: the daemon's level and the rotation of app log files.

    Attributes:
        max_size: Bytes at which ``<app>.log`` is rotated (``<app>.log.1`` ...).
        max_files: Rotated files kept per app (0: none, the file is restarted).
        compress: Gzip rotated files (``<app>.log.1.gz``).
        directory: Where app logs go; ``None`` means ``$OMNITRON_HOME/logs``.
        rate: Bytes per second of output kept per app; lines past it are
            suppressed, with a ``suppressed N lines`` marker.
        burst: Bytes an app may write at once above ``rate``.
        buffer: Bytes buffered per app while the disk is slower than the app.
    """

    level: LogLevel = attrs.field(default=LogLevel.INFO, metadata=key(p_enum(LogLevel)))
    max_size: int = attrs.field(default=50_000_000, metadata=key(p_size))
    max_files: int = attrs.field(default=10, metadata=key(p_int(0, 1000)))
    compress: bool = attrs.field(default=True, metadata=key(p_bool))
    directory: Path | None = attrs.field(default=None, metadata=key())
    rate: int = attrs.field(default=64 * 1024 * 1024, metadata=key(p_size))
    burst: int = attrs.field(default=128 * 1024 * 1024, metadata=key(p_size))
    buffer: int = attrs.field(default=64 * 1024 * 1024, metadata=key(p_size))


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """An app's own restart limits (defaults come from ``[supervision]``)."""

    max_restarts: int = attrs.field(default=5, metadata=key(p_int(0, 1_000_000)))
    window: float = attrs.field(default=60.0, metadata=key(_POSITIVE))
    backoff: BackoffConfig = attrs.field(default=BackoffConfig(), metadata=key())


@attrs.frozen(kw_only=True)
class ReadyConfig:
    """How an app reports ready. Build one with the classmethods.

    Only the attributes of its :attr:`kind` are set: ``port``/``host`` for TCP,
    ``url`` for HTTP, ``seconds`` for AFTER, ``fd`` for FD, ``watchdog`` (optional)
    for NOTIFY.
    """

    kind: ReadyKind = ReadyKind.ON_SPAWN
    port: int | None = None
    host: str | None = None
    url: str | None = None
    seconds: float | None = None
    fd: int | None = None
    watchdog: float | None = None

    @classmethod
    def on_spawn(cls) -> ReadyConfig:
        return cls(kind=ReadyKind.ON_SPAWN)

    @classmethod
    def notify(cls, watchdog: float | None = None) -> ReadyConfig:
        return cls(kind=ReadyKind.NOTIFY, watchdog=watchdog)

    @classmethod
    def tcp(cls, port: int, host: str = "127.0.0.1") -> ReadyConfig:
        return cls(kind=ReadyKind.TCP, port=port, host=host)

    @classmethod
    def http(cls, url: str) -> ReadyConfig:
        return cls(kind=ReadyKind.HTTP, url=url)

    @classmethod
    def after(cls, seconds: float) -> ReadyConfig:
        return cls(kind=ReadyKind.AFTER, seconds=seconds)

    @classmethod
    def on_fd(cls, fd: int) -> ReadyConfig:
        return cls(kind=ReadyKind.FD, fd=fd)


@attrs.frozen(kw_only=True)
class HealthConfig:
    """An app's periodic liveness probe: exactly one of ``http`` (URL), ``tcp`` (port,
    on ``host``, default ``127.0.0.1``) or ``command`` (an argv run in the app's
    ``cwd``; exit 0 is healthy).

    The first probe runs ``start_period`` seconds after the process is ready;
    ``retries`` consecutive failures restart the process through its supervisor.
    """

    http: str | None = attrs.field(default=None, metadata=key(p_url))
    tcp: int | None = attrs.field(default=None, metadata=key(p_port))
    command: tuple[str, ...] | None = attrs.field(default=None, metadata=key())
    host: str | None = attrs.field(default=None, metadata=key())
    start_period: float = attrs.field(default=0.0, metadata=key(_DURATION))
    interval: float = attrs.field(default=15.0, metadata=key(_POSITIVE))
    timeout: float = attrs.field(default=5.0, metadata=key(_POSITIVE))
    retries: int = attrs.field(default=3, metadata=key(p_int(1, 1000)))


@attrs.frozen(kw_only=True)
class WatchConfig:
    """Reload an app when files under ``directory`` change (development).

    ``ignore`` holds :data:`DEFAULT_WATCH_IGNORE` followed by the app's own patterns;
    ``debounce`` is the quiet time (seconds) after the last change before the reload.
    """

    directory: Path = attrs.field(metadata=key(per_build=p_directory))
    ignore: tuple[str, ...] = attrs.field(default=DEFAULT_WATCH_IGNORE, metadata=key(p_strings))
    debounce: float = attrs.field(default=0.3, metadata=key(_DURATION))


@attrs.frozen(kw_only=True)
class SocketConfig:
    """A listening socket the daemon binds for an app and hands to every one of its
    processes (socket activation: ``LISTEN_FDS``): TCP on ``host:port``, or a Unix
    socket at ``path`` (absolute). Exactly one of ``port`` and ``path`` is set.
    """

    name: str = attrs.field(metadata=key())
    port: int | None = attrs.field(default=None, metadata=key())
    host: str | None = attrs.field(default=None, metadata=key())
    path: Path | None = attrs.field(default=None, metadata=key())
    backlog: int = attrs.field(default=511, metadata=key())

    def describe(self) -> str:
        """``tcp 127.0.0.1:8000`` or ``unix /run/web.sock``."""
        if self.path is not None:
            return f"unix {self.path}"
        host = self.host or "127.0.0.1"
        return f"tcp {f'[{host}]' if ':' in host else host}:{self.port}"


DEFAULT_READY = ReadyConfig()
DEFAULT_RESTART_POLICY = RestartPolicy()
"""An app's defaults: one instance, shared by every app that keeps them."""


@attrs.frozen(kw_only=True)
class AppConfig:
    """One ``[[apps]]`` entry.

    Exactly one of ``command`` (classic mode: an argv, never run through a shell)
    and ``bootstrap`` (module-worker mode: a Python file inside the project) is set.
    ``env`` holds strings only, ``${VAR}`` references already expanded.
    """

    name: str = attrs.field(metadata=key(p_name("app")))
    command: tuple[str, ...] | None = attrs.field(default=None, metadata=key())
    bootstrap: Path | None = attrs.field(default=None, metadata=key())
    python: str | None = attrs.field(default=None, metadata=key(per_build=p_interpreter))
    """The interpreter of a bootstrap app's workers (a virtualenv's ``bin/python``);
    ``None``: the daemon's own."""
    cwd: Path = attrs.field(metadata=key(per_build=p_directory))
    env: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_map, repr=_env_repr, metadata=key()
    )
    depends_on: tuple[str, ...] = attrs.field(default=(), metadata=key(p_strings))
    instances: int = attrs.field(default=1, metadata=key(p_int(1, MAX_INSTANCES)))
    ready: ReadyConfig = attrs.field(default=DEFAULT_READY, metadata=key())
    startup_timeout: float = attrs.field(default=30.0, metadata=key(_POSITIVE))
    stop_timeout: float = attrs.field(default=10.0, metadata=key(_POSITIVE))
    stop_signal: signal.Signals = attrs.field(default=signal.SIGTERM, metadata=key(p_signal))
    critical: bool = attrs.field(default=False, metadata=key(p_bool))
    restart: Restart = attrs.field(default=Restart.PERMANENT, metadata=key(p_enum(Restart)))
    restart_policy: RestartPolicy = attrs.field(default=DEFAULT_RESTART_POLICY, metadata=key())
    health: HealthConfig | None = attrs.field(default=None, metadata=key())
    watch: WatchConfig | None = attrs.field(default=None, metadata=key())
    enabled: bool = attrs.field(default=True, metadata=key(p_bool))
    max_memory: int | None = attrs.field(default=None, metadata=key(p_size))
    """Restart a process whose RSS exceeds this many bytes in two consecutive samples."""
    sockets: tuple[SocketConfig, ...] = attrs.field(default=(), metadata=key())
    """Listening sockets the daemon owns and passes to every process (fds 3, 4, ...)."""

    @property
    def mode(self) -> Literal["classic", "bootstrap"]:
        """``"bootstrap"`` for module-worker apps, ``"classic"`` for any program."""
        return "bootstrap" if self.bootstrap is not None else "classic"


@attrs.frozen(kw_only=True)
class StackAppOverride:
    """``[stacks.NAME.overrides.APP]``: what a stack changes for one app."""

    instances: int | None = attrs.field(default=None, metadata=key(p_int(1, MAX_INSTANCES)))
    enabled: bool | None = attrs.field(default=None, metadata=key(p_bool))
    watch: bool | None = attrs.field(default=None, metadata=key(p_bool))
    env: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_map, repr=_env_repr, metadata=key()
    )


@attrs.frozen(kw_only=True)
class StackConfig:
    """``[stacks.NAME]``: per-environment overrides, applied by :meth:`Ecosystem.with_stack`.

    Attributes:
        apps: The apps that run in this stack (the others are disabled); ``None``: all.
        env: Merged over every app's ``env``.
        watch: ``True`` turns file watching on for every app (its own ``watch``
            settings, or its ``cwd``); ``False`` turns it off.
        log_level: Replaces ``[logging] level``.
        overrides: Per-app changes, applied last.
    """

    name: str
    apps: tuple[str, ...] | None = attrs.field(default=None, metadata=key())
    env: Mapping[str, str] = attrs.field(
        factory=dict, converter=_frozen_map, repr=_env_repr, metadata=key()
    )
    watch: bool | None = attrs.field(default=None, metadata=key(p_bool))
    log_level: LogLevel | None = attrs.field(default=None, metadata=key(p_enum(LogLevel)))
    overrides: Mapping[str, StackAppOverride] = attrs.field(
        factory=dict, converter=_frozen_map, metadata=key()
    )


def _switch_watch(watch: WatchConfig | None, cwd: Path, on: bool | None) -> WatchConfig | None:
    if on is None:
        return watch
    if not on:
        return None
    return watch or WatchConfig(directory=cwd)


@attrs.frozen(kw_only=True)
class Ecosystem:
    """A whole project: its apps and the settings above them.

    Attributes:
        base_dir: The directory relative paths were resolved against (the config
            file's directory).
        stack: The stack applied with :meth:`with_stack`, if any.
        source: The file this was loaded from (not part of equality).
        warnings: Problems that do not prevent a start, e.g. ``empty: no apps
            defined`` (not part of equality).
        inert: A warning for each key set in the config that is accepted but has
            no effect yet (``apps[0].health: has no effect yet: ...``), by line. They
            come from the ``inert`` markers of the fields of these records; ``check``,
            ``up`` and ``reload-config`` print them. Not part of equality.
    """

    project: str = attrs.field(metadata=key())
    base_dir: Path
    supervision: SupervisionConfig = attrs.field(default=SupervisionConfig(), metadata=key())
    monitoring: MonitoringConfig = attrs.field(default=MonitoringConfig(), metadata=key())
    logging: LoggingConfig = attrs.field(default=LoggingConfig(), metadata=key())
    apps: tuple[AppConfig, ...] = attrs.field(default=(), metadata=key())
    stacks: Mapping[str, StackConfig] = attrs.field(
        factory=dict, converter=_frozen_map, metadata=key()
    )
    stack: str | None = None
    source: Path | None = attrs.field(default=None, eq=False)
    warnings: tuple[ConfigIssue, ...] = attrs.field(default=(), eq=False)
    inert: tuple[ConfigIssue, ...] = attrs.field(default=(), eq=False)

    def app(self, name: str) -> AppConfig:
        """The app called ``name``.

        Raises:
            KeyError: No such app.
        """
        for app in self.apps:
            if app.name == name:
                return app
        raise KeyError(name)

    def start_order(self) -> tuple[AppConfig, ...]:
        """Every app, dependencies first; ties keep file order.

        This is the lexicographically smallest topological order by position in the
        file, so an ecosystem without ``depends_on`` starts in file order. Disabled
        apps are included; callers skip them.
        """
        position = {app.name: index for index, app in enumerate(self.apps)}
        waiting_on = {app.name: len(set(app.depends_on)) for app in self.apps}
        dependents: dict[str, list[str]] = {app.name: [] for app in self.apps}
        for app in self.apps:
            for dependency in set(app.depends_on):
                dependents[dependency].append(app.name)
        ready = [position[name] for name, count in waiting_on.items() if count == 0]
        heapq.heapify(ready)
        order: list[AppConfig] = []
        while ready:
            app = self.apps[heapq.heappop(ready)]
            order.append(app)
            for dependent in dependents[app.name]:
                waiting_on[dependent] -= 1
                if waiting_on[dependent] == 0:
                    heapq.heappush(ready, position[dependent])
        if len(order) != len(self.apps):  # only reachable by building records by hand
            raise ValueError("dependency cycle among apps")
        return tuple(order)

    def with_stack(self, name: str) -> Ecosystem:
        """This ecosystem with the overrides of ``[stacks.NAME]`` applied.

        Raises:
            ConfigError: No such stack, or a stack is already applied.
        """
        if self.stack is not None:
            raise ConfigError(
                [
                    ConfigIssue(
                        file=self.source,
                        path="stacks",
                        message=f"stack {self.stack!r} is already applied",
                    )
                ]
            )
        stack = self.stacks.get(name)
        if stack is None:
            known = ", ".join(self.stacks) or "none defined"
            message = f"unknown stack {name!r}{did_you_mean(name, self.stacks)} (stacks: {known})"
            raise ConfigError([ConfigIssue(file=self.source, path="stacks", message=message)])
        apps = []
        for app in self.apps:
            override = stack.overrides.get(app.name, StackAppOverride())
            enabled = app.enabled if stack.apps is None else app.enabled and app.name in stack.apps
            if override.enabled is not None:
                enabled = override.enabled
            watch = _switch_watch(app.watch, app.cwd, stack.watch)
            apps.append(
                attrs.evolve(
                    app,
                    env={**app.env, **stack.env, **override.env},
                    enabled=enabled,
                    instances=app.instances if override.instances is None else override.instances,
                    watch=_switch_watch(watch, app.cwd, override.watch),
                )
            )
        logging = self.logging
        if stack.log_level is not None:
            logging = attrs.evolve(logging, level=stack.log_level)
        return attrs.evolve(self, apps=tuple(apps), logging=logging, stack=name)

    def to_dict(self) -> dict[str, Any]:
        """The plain-data (TOML-shaped) form: durations in seconds, sizes in bytes,
        absolute paths. ``define_ecosystem(**eco.to_dict())`` rebuilds an equal
        ecosystem (without the applied stack)."""
        from ._serialize import unstructure

        result: dict[str, Any] = unstructure(self)
        return result
