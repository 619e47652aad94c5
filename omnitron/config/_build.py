"""Raw data (parsed TOML, or ``define_ecosystem`` keyword arguments) -> validated records.

One pass over the data collects every problem instead of stopping at the first;
each problem carries its field path (``apps[1].depends_on``) and, where known,
its line. Only when nothing is wrong are the records returned.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ._fields import (
    MAX_ARG,
    NAME_RULE,
    NO_STRINGS,
    BuildContext,
    Invalid,
    Path_,
    build_env,
    check_name,
    describe,
    did_you_mean,
    inside_project,
    open_table,
    p_directory,
    p_duration,
    p_int,
    p_port,
    p_strings,
    p_text,
    p_url,
    read,
    read_keys,
    read_table,
    render_path,
    resolve,
    short,
)
from ._graph import find_cycles
from ._model import (
    DEFAULT_READY,
    DEFAULT_RESTART_POLICY,
    DEFAULT_WATCH_IGNORE,
    AppConfig,
    BackoffConfig,
    Ecosystem,
    HealthCheckConfig,
    HealthConfig,
    LoggingConfig,
    MetricsConfig,
    MonitoringConfig,
    ReadyConfig,
    ReadyKind,
    RestartPolicy,
    SocketConfig,
    StackAppOverride,
    StackConfig,
    Strategy,
    SupervisionConfig,
    WatchConfig,
)

__all__ = ["build_ecosystem"]

MAX_APPS = 1024
MAX_COMMAND_TEXT = 64 * 1024
T = TypeVar("T")

_SHELL_TOKENS = frozenset({"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1"})
_READY_KINDS = ("tcp", "http", "after", "fd", "notify")


# --------------------------------------------------------------------------- sections


def build_backoff(
    ctx: BuildContext, path: Path_, value: object, default: BackoffConfig
) -> BackoffConfig:
    table = open_table(ctx, BackoffConfig, path, value)
    backoff = BackoffConfig(
        **read_keys(ctx, BackoffConfig, path, table, attrs.asdict(default, recurse=False))
    )
    if backoff.max < backoff.initial:
        where = (*path, "max") if "max" in table else (*path, "initial")
        ctx.error(where, f"max ({backoff.max:g}s) must be >= initial ({backoff.initial:g}s)")
    return backoff


def build_supervision(ctx: BuildContext, value: object) -> SupervisionConfig:
    path: Path_ = ("supervision",)
    default = SupervisionConfig()
    table = open_table(ctx, SupervisionConfig, path, value)
    return SupervisionConfig(
        **read_keys(ctx, SupervisionConfig, path, table),
        backoff=build_backoff(ctx, (*path, "backoff"), table["backoff"], default.backoff)
        if table.get("backoff") is not None
        else default.backoff,
    )


def build_monitoring(ctx: BuildContext, value: object) -> MonitoringConfig:
    path: Path_ = ("monitoring",)
    table = open_table(ctx, MonitoringConfig, path, value)
    sections: dict[str, Any] = {}
    for name, cls in (("health_check", HealthCheckConfig), ("metrics", MetricsConfig)):
        if table.get(name) is not None:
            sub = (*path, name)
            sections[name] = cls(**read_keys(ctx, cls, sub, open_table(ctx, cls, sub, table[name])))
    return MonitoringConfig(**sections)


def build_logging(ctx: BuildContext, value: object) -> LoggingConfig:
    path: Path_ = ("logging",)
    table = open_table(ctx, LoggingConfig, path, value)
    directory = read(ctx, table, path, "directory", lambda raw: resolve(ctx, raw), None)
    if (
        directory is not None
        and not Path(table["directory"]).is_absolute()
        and not inside_project(ctx, directory)
    ):
        ctx.error(
            (*path, "directory"),
            f"a relative log directory must stay inside the project ({ctx.base_dir}); "
            "use an absolute path to log elsewhere",
        )
    return LoggingConfig(**read_keys(ctx, LoggingConfig, path, table), directory=directory)


def build_command(ctx: BuildContext, path: Path_, value: object) -> tuple[str, ...] | None:
    if isinstance(value, str):
        if len(value) > MAX_COMMAND_TEXT:
            ctx.error(path, f"too long ({len(value)} > {MAX_COMMAND_TEXT} characters)")
            return None
        if "\0" in value:
            ctx.error(path, "must not contain a NUL byte")
            return None
        import shlex

        try:
            argv = tuple(shlex.split(value))
        except ValueError as exc:
            ctx.error(path, f"cannot split into arguments: {str(exc).lower()}")
            return None
        for token in argv:
            if token in _SHELL_TOKENS or "$(" in token or "`" in token:
                ctx.warn(
                    path,
                    f"runs without a shell: {short(token)} is passed to the program as a literal "
                    'argument; for shell syntax write command = ["sh", "-c", "..."]',
                )
                break
    elif isinstance(value, list | tuple):
        argv_list = []
        for index, item in enumerate(value):
            try:
                argv_list.append(p_text(item, limit=MAX_ARG) if index == 0 else _argument(item))
            except Invalid as exc:
                ctx.error((*path, index), exc.message)
        argv = tuple(argv_list)
        if len(argv) != len(value):
            return None
    else:
        ctx.error(path, f"expected an array of arguments or a string, got {describe(value)}")
        return None
    if not argv:
        ctx.error(path, "must not be empty")
        return None
    return argv


def _argument(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {describe(value)}")
    if len(value) > MAX_ARG:
        raise Invalid(f"too long ({len(value)} > {MAX_ARG} characters)")
    if "\0" in value:
        raise Invalid("must not contain a NUL byte")
    return value


def _host(value: object) -> str:
    return p_text(value, limit=255)


def build_ready(ctx: BuildContext, path: Path_, value: object) -> ReadyConfig:
    default = ReadyConfig.on_spawn()
    if isinstance(value, str):
        if value == "notify":
            return ReadyConfig.notify()
        if value == "on_spawn":
            return default
        ctx.error(
            path,
            f"unknown readiness {short(value)}{did_you_mean(value, ('notify', 'on_spawn'))}; use "
            "'notify', 'on_spawn' or one of { tcp = PORT }, { http = URL }, { after = DURATION }, "
            "{ fd = N }, { notify = { watchdog = DURATION } }",
        )
        return default
    if not isinstance(value, Mapping):
        ctx.error(path, f"expected 'notify', 'on_spawn' or a table, got {describe(value)}")
        return default
    table = read_table(ctx, path, value, (*_READY_KINDS, "host"))
    kinds = [kind for kind in _READY_KINDS if table.get(kind) is not None]
    if len(kinds) != 1:
        ctx.error(path, f"set exactly one of {', '.join(_READY_KINDS)}")
        return default
    (kind,) = kinds
    if table.get("host") is not None and kind != "tcp":
        ctx.error((*path, "host"), "only allowed with tcp")
    if kind == "tcp":
        port = read(ctx, table, path, "tcp", p_port, 1)
        host = read(ctx, table, path, "host", _host, "127.0.0.1")
        return ReadyConfig.tcp(port, host)
    if kind == "http":
        return ReadyConfig.http(read(ctx, table, path, "http", p_url, ""))
    if kind == "after":
        return ReadyConfig.after(read(ctx, table, path, "after", p_duration(positive=False), 0.0))
    if kind == "fd":
        return ReadyConfig.on_fd(read(ctx, table, path, "fd", p_int(3, 1023), 3))
    notify = table["notify"]
    if notify is True:
        return ReadyConfig.notify()
    sub = (*path, "notify")
    if not isinstance(notify, Mapping):
        ctx.error(
            sub, f"expected true or a table {{ watchdog = DURATION }}, got {describe(notify)}"
        )
        return default
    raw = read_table(ctx, sub, notify, ("watchdog",))
    return ReadyConfig.notify(read(ctx, raw, sub, "watchdog", p_duration(positive=True), None))


_SOCKET_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_UNIX_PATH_MAX = 107


def _socket_name(value: object) -> str:
    if not isinstance(value, str) or not _SOCKET_NAME.fullmatch(value):
        raise Invalid(
            f"invalid socket name {short(str(value))}: letters, digits, '_', '.', '-' "
            "(1 to 255), as LISTEN_FDNAMES allows"
        )
    return value


def _socket_host(value: object) -> str:
    host = p_text(value, limit=255)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            raise Invalid(f"not an IP address or a host name: {short(host)}") from None
    return host


def build_sockets(ctx: BuildContext, path: Path_, value: object) -> tuple[SocketConfig, ...]:
    """``sockets = [{ name = "http", port = 8000, host = "127.0.0.1" }, { name, path }]``."""
    if not isinstance(value, list | tuple):
        ctx.error(path, f"expected an array of tables, got {describe(value)}")
        return ()
    sockets: list[SocketConfig] = []
    first: dict[str, int] = {}
    for index, raw in enumerate(value):
        sub = (*path, index)
        table = open_table(ctx, SocketConfig, sub, raw)
        if not isinstance(raw, Mapping):
            continue
        if table.get("name") is None:
            ctx.error(sub, "missing required key 'name'")
        name = read(ctx, table, sub, "name", _socket_name, "")
        if name in first:
            ctx.error((*sub, "name"), f"duplicate socket name {name!r} (also [{first[name]}])")
        elif name:
            first[name] = index
        kinds = [key for key in ("port", "path") if table.get(key) is not None]
        if len(kinds) != 1:
            ctx.error(sub, "set exactly one of port (a TCP socket) or path (a Unix socket)")
            continue
        if table.get("host") is not None and kinds != ["port"]:
            ctx.error((*sub, "host"), "only allowed with port")
        backlog = read(ctx, table, sub, "backlog", p_int(1, 65535), 511)
        if kinds == ["port"]:
            port = read(ctx, table, sub, "port", p_port, 0)
            host = read(ctx, table, sub, "host", _socket_host, "127.0.0.1")
            sockets.append(SocketConfig(name=name, port=port, host=host, backlog=backlog))
            continue
        try:
            where = resolve(ctx, table["path"])
        except Invalid as exc:
            ctx.error((*sub, "path"), exc.message)
            continue
        if len(os.fsencode(where)) > _UNIX_PATH_MAX:
            ctx.error(
                (*sub, "path"),
                f"{where} is longer than the {_UNIX_PATH_MAX} bytes a Unix socket path allows",
            )
            continue
        sockets.append(SocketConfig(name=name, path=where, backlog=backlog))
    return tuple(sockets)


def check_sockets(ctx: BuildContext, apps: Sequence[tuple[int, AppConfig]]) -> None:
    """No address bound twice (by two apps, or twice by one); no ``ready`` probe of
    a port the daemon itself listens on (it would answer at once)."""
    owners: dict[str, tuple[str, Path_]] = {}
    for index, app in apps:
        for position, sock in enumerate(app.sockets):
            address = sock.describe()
            where: Path_ = ("apps", index, "sockets", position)
            owner = owners.get(address)
            if owner is not None:
                other = "this app" if owner[0] == app.name else f"app {owner[0]!r}"
                ctx.error(
                    where, f"{address} is already a socket of {other} ({render_path(owner[1])})"
                )
            else:
                owners[address] = (app.name, where)
            if app.ready.kind is ReadyKind.TCP and sock.port == app.ready.port:
                ctx.warn(
                    ("apps", index, "ready"),
                    f"probes port {sock.port}, on which the daemon itself listens (socket "
                    f'{sock.name!r}): it answers at once; use ready = "notify" instead',
                )


def build_health(
    ctx: BuildContext, path: Path_, value: object, defaults: HealthCheckConfig
) -> HealthConfig | None:
    table = open_table(ctx, HealthConfig, path, value)
    probes = [key for key in ("http", "tcp", "command") if table.get(key) is not None]
    if len(probes) != 1 and isinstance(value, Mapping):
        ctx.error(path, "set exactly one of http (a URL), tcp (a port) or command (an argv)")
    if table.get("host") is not None and probes != ["tcp"]:
        ctx.error((*path, "host"), "only allowed with tcp")
    return HealthConfig(
        **read_keys(ctx, HealthConfig, path, table, attrs.asdict(defaults, recurse=False)),
        host=read(ctx, table, path, "host", _host, "127.0.0.1") if probes == ["tcp"] else None,
        command=build_command(ctx, (*path, "command"), table["command"])
        if probes == ["command"]
        else None,
    )


def build_watch(ctx: BuildContext, path: Path_, value: object, cwd: Path) -> WatchConfig | None:
    if value is False:
        return None
    if value is True:
        return WatchConfig(directory=cwd)
    if isinstance(value, str):
        try:
            return WatchConfig(directory=p_directory(ctx)(value))
        except Invalid as exc:
            ctx.error(path, exc.message)
            return None
    if not isinstance(value, Mapping):
        ctx.error(path, f"expected true, false, a directory or a table, got {describe(value)}")
        return None
    table = open_table(ctx, WatchConfig, path, value)
    values = read_keys(ctx, WatchConfig, path, table, {"directory": cwd, "ignore": NO_STRINGS})
    return WatchConfig(**{**values, "ignore": _with_defaults(values["ignore"])})


def _with_defaults(ignore: tuple[str, ...]) -> tuple[str, ...]:
    return DEFAULT_WATCH_IGNORE + tuple(p for p in ignore if p not in DEFAULT_WATCH_IGNORE)


def build_restart_policy(
    ctx: BuildContext, path: Path_, value: object, sup: SupervisionConfig
) -> RestartPolicy:
    table = open_table(ctx, RestartPolicy, path, value)
    return RestartPolicy(
        **read_keys(ctx, RestartPolicy, path, table, attrs.asdict(sup, recurse=False)),
        backoff=build_backoff(ctx, (*path, "backoff"), table["backoff"], sup.backoff)
        if table.get("backoff") is not None
        else sup.backoff,
    )


def build_bootstrap(ctx: BuildContext, path: Path_, value: object) -> Path | None:
    try:
        bootstrap = resolve(ctx, value)
    except Invalid as exc:
        ctx.error(path, exc.message)
        return None
    if bootstrap.suffix != ".py":
        ctx.error(path, f"must be a Python file (.py), got {short(str(value))}")
    elif not inside_project(ctx, bootstrap):
        ctx.error(
            path, f"must be inside the project directory {ctx.base_dir} (after resolving symlinks)"
        )
    elif not bootstrap.is_file():
        ctx.error(path, f"file not found: {bootstrap}")
    return bootstrap


def _shared_default(record: T, default: T) -> T:
    """``default`` itself when ``record`` equals it: apps left at the defaults share
    one frozen instance instead of a copy each."""
    return default if record == default else record


def build_app(
    ctx: BuildContext, index: int, value: object, sup: SupervisionConfig, mon: MonitoringConfig
) -> AppConfig | None:
    """One app; ``None`` when it has no valid name (it then takes no part in cross checks)."""
    path: Path_ = ("apps", index)
    if not isinstance(value, Mapping):
        ctx.error(path, f"expected a table, got {describe(value)}")
        return None
    table = open_table(ctx, AppConfig, path, value)
    if table.get("name") is None:
        ctx.error(path, "missing required key 'name'")
    values = read_keys(ctx, AppConfig, path, table, {"cwd": ctx.base_dir})
    name, cwd = values["name"], values["cwd"]
    if name is not None and name.lower() == "all":
        ctx.error((*path, "name"), "'all' is reserved (the CLI uses it for every app)")
    has_command = table.get("command") is not None
    has_bootstrap = table.get("bootstrap") is not None
    if has_command and has_bootstrap:
        ctx.error(
            path, "set either command (any program) or bootstrap (a module-worker file), not both"
        )
    elif not has_command and not has_bootstrap:
        ctx.error(path, "missing command (any program) or bootstrap (a module-worker file)")
    if table.get("python") is not None and not has_bootstrap:
        ctx.error(
            (*path, "python"),
            "applies to module-worker apps (bootstrap) only; a classic app names its "
            "interpreter in its command",
        )
    if has_bootstrap and not has_command:
        from ._bootstrap import inert_for_workers

        for key_name, reason in inert_for_workers(table):
            ctx.note_inert((*path, key_name), reason, yet=False)
    command = build_command(ctx, (*path, "command"), table["command"]) if has_command else None
    bootstrap = (
        build_bootstrap(ctx, (*path, "bootstrap"), table["bootstrap"]) if has_bootstrap else None
    )
    env = build_env(ctx, (*path, "env"), table["env"]) if table.get("env") is not None else {}
    seen: set[str] = set()
    for dependency in values["depends_on"]:
        if dependency in seen:
            ctx.warn((*path, "depends_on"), f"{dependency!r} is listed twice")
        seen.add(dependency)
    restart_policy = (
        build_restart_policy(ctx, (*path, "restart_policy"), table["restart_policy"], sup)
        if table.get("restart_policy") is not None
        else _shared_default(
            RestartPolicy(max_restarts=sup.max_restarts, window=sup.window, backoff=sup.backoff),
            DEFAULT_RESTART_POLICY,
        )
    )
    if table.get("restart_policy") is not None and sup.strategy is not Strategy.ONE_FOR_ONE:
        ctx.note_inert(
            (*path, "restart_policy"),
            f"with strategy {sup.strategy.value!r}: the root's [supervision] limits and "
            "backoff apply to every app",
            yet=False,
        )
    health = (
        build_health(ctx, (*path, "health"), table["health"], mon.health_check)
        if table.get("health") is not None
        else None
    )
    watch = (
        build_watch(ctx, (*path, "watch"), table["watch"], cwd)
        if table.get("watch") is not None
        else None
    )
    ready = (
        build_ready(ctx, (*path, "ready"), table["ready"])
        if table.get("ready") is not None
        else DEFAULT_READY
    )
    sockets = (
        build_sockets(ctx, (*path, "sockets"), table["sockets"])
        if table.get("sockets") is not None
        else ()
    )
    app = AppConfig(
        **{**values, "name": name or ""},
        sockets=sockets,
        command=command,
        bootstrap=bootstrap,
        env=env,
        ready=ready,
        restart_policy=restart_policy,
        health=health,
        watch=watch,
    )
    return app if name is not None else None


def build_override(ctx: BuildContext, path: Path_, value: object) -> StackAppOverride:
    table = open_table(ctx, StackAppOverride, path, value)
    return StackAppOverride(
        **read_keys(ctx, StackAppOverride, path, table),
        env=build_env(ctx, (*path, "env"), table["env"]) if table.get("env") is not None else {},
    )


def build_stack(
    ctx: BuildContext, name: str, value: object, apps: dict[str, AppConfig]
) -> StackConfig:
    path: Path_ = ("stacks", name)
    table = open_table(ctx, StackConfig, path, value)
    selected: tuple[str, ...] | None = None
    if table.get("apps") not in (None, "all"):
        selected = read(ctx, table, path, "apps", p_strings, NO_STRINGS)
        for app_name in selected:
            app = apps.get(app_name)
            if app is None:
                message = f"unknown app {short(app_name)}{did_you_mean(app_name, apps)}"
                ctx.error((*path, "apps"), message)
                continue
            for dependency in app.depends_on:
                if dependency in apps and dependency not in selected:
                    message = f"{app_name!r} depends on {dependency!r}, which is not in this stack"
                    ctx.error((*path, "apps"), message)
    overrides: dict[str, StackAppOverride] = {}
    raw_overrides = table.get("overrides")
    if raw_overrides is not None:
        sub = (*path, "overrides")
        if not isinstance(raw_overrides, Mapping):
            ctx.error(
                sub, f"expected a table of app name = {{ ... }}, got {describe(raw_overrides)}"
            )
        else:
            for app_name, raw in raw_overrides.items():
                if app_name not in apps:
                    ctx.error(
                        (*sub, str(app_name)), f"unknown app{did_you_mean(str(app_name), apps)}"
                    )
                    continue
                overrides[app_name] = build_override(ctx, (*sub, app_name), raw)
    return StackConfig(
        **read_keys(ctx, StackConfig, path, table),
        name=name,
        apps=selected,
        env=build_env(ctx, (*path, "env"), table["env"]) if table.get("env") is not None else {},
        overrides=overrides,
    )


# --------------------------------------------------------------------------- cross checks


def check_graph(ctx: BuildContext, apps: Sequence[tuple[int, AppConfig]]) -> None:
    """Duplicate names, unknown ``depends_on`` targets and dependency cycles."""
    first: dict[str, int] = {}
    for index, app in apps:
        if app.name in first:
            where = [_where(ctx, ("apps", i, "name")) for i in (first[app.name], index)]
            ctx.error(
                ("apps", index, "name"), f"duplicate app name {app.name!r} ({', '.join(where)})"
            )
        else:
            first[app.name] = index
    by_name = {app.name: (index, app) for index, app in reversed(apps)}  # first one wins
    for index, app in apps:
        for dependency in dict.fromkeys(app.depends_on):
            if dependency not in by_name:
                ctx.error(
                    ("apps", index, "depends_on"),
                    f"unknown app {short(dependency)}{did_you_mean(dependency, by_name)}",
                )
            elif app.enabled and not by_name[dependency][1].enabled:
                ctx.warn(
                    ("apps", index, "depends_on"), f"{dependency!r} is disabled (enabled = false)"
                )
    for cycle in find_cycles(
        {name: [d for d in app.depends_on if d in by_name] for name, (_, app) in by_name.items()},
        list(first),
    ):
        index = by_name[cycle[0]][0]
        ctx.error(("apps", index, "depends_on"), "dependency cycle: " + " -> ".join(cycle))


def _where(ctx: BuildContext, path: Path_) -> str:
    line = ctx.line_of(path)
    if ctx.locator is not None and line is not None and ctx.file is not None:
        return f"{ctx.file.name}:{line}"
    return render_path(path[:2])


# --------------------------------------------------------------------------- the whole


def build_ecosystem(
    ctx: BuildContext, raw: Mapping[str, Any], *, project_default: str | None
) -> Ecosystem:
    """Validate ``raw`` (the TOML-shaped data) into an :class:`Ecosystem`.

    Raises:
        ConfigError: With every problem found.
    """
    root = open_table(ctx, Ecosystem, (), raw)
    project = read(ctx, root, (), "project", lambda value: check_name(value, "project"), None)
    if project is None and root.get("project") is None:
        if project_default is not None:
            project = project_default
        else:
            ctx.error(
                ("project",),
                f"missing, and the directory name {short(ctx.base_dir.name)} is not a valid "
                f"project name ({NAME_RULE})",
            )
    sup = (
        build_supervision(ctx, root["supervision"])
        if root.get("supervision") is not None
        else SupervisionConfig()
    )
    mon = (
        build_monitoring(ctx, root["monitoring"])
        if root.get("monitoring") is not None
        else MonitoringConfig()
    )
    logging = (
        build_logging(ctx, root["logging"]) if root.get("logging") is not None else LoggingConfig()
    )
    raw_apps = root.get("apps")
    named: list[tuple[int, AppConfig]] = []
    if raw_apps is None or (isinstance(raw_apps, list | tuple) and not raw_apps):
        ctx.warn(("apps",), "empty: no apps defined")
    elif not isinstance(raw_apps, list | tuple):
        ctx.error(("apps",), f"expected an array of tables ([[apps]]), got {describe(raw_apps)}")
    elif len(raw_apps) > MAX_APPS:
        ctx.error(("apps",), f"too many apps ({len(raw_apps)} > {MAX_APPS})")
    else:
        for index, raw_app in enumerate(raw_apps):
            app = build_app(ctx, index, raw_app, sup, mon)
            if app is not None:
                named.append((index, app))
    check_graph(ctx, named)
    check_sockets(ctx, named)
    apps_by_name = {app.name: app for _, app in reversed(named)}
    stacks: dict[str, StackConfig] = {}
    raw_stacks = root.get("stacks")
    if raw_stacks is not None:
        if not isinstance(raw_stacks, Mapping):
            ctx.error(
                ("stacks",), f"expected a table of [stacks.NAME] tables, got {describe(raw_stacks)}"
            )
        else:
            for stack_name, raw_stack in raw_stacks.items():
                try:
                    check_name(stack_name, "stack")
                except Invalid as exc:
                    ctx.error(("stacks", str(stack_name)), exc.message)
                    continue
                stacks[stack_name] = build_stack(ctx, stack_name, raw_stack, apps_by_name)
    ctx.raise_if_errors()
    assert project is not None
    return Ecosystem(
        project=project,
        base_dir=ctx.base_dir,
        supervision=sup,
        monitoring=mon,
        logging=logging,
        apps=tuple(app for _, app in named),
        stacks=stacks,
        source=ctx.file,
        warnings=tuple(ctx.warnings),
        inert=tuple(sorted(ctx.inert, key=lambda issue: issue.line or 0)),
    )
