"""Module-worker systems: ``define_system`` and what a bootstrap file declares.

A bootstrap file holds one module-level ``system = define_system(...)``. Each
:class:`Process` entry becomes ``instances`` OS processes, each started with
``python -m omnitron.worker serve BOOTSTRAP PROCESS`` and importing only its
``module``. The definition is validated as a whole: every problem is collected and
raised at once as :class:`~omnitron.errors.SystemDefinitionError`, each with the
path of the field (``processes[1].module``) and what is wrong.

This module imports only attrs and the standard library: the worker and the
``describe`` step import it in the app's own interpreter.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

from . import __version__
from .errors import SystemDefinitionError
from .worker._api import SERVICE_NAME

__all__ = [
    "HOOK_NAMES",
    "PROTOCOL_VERSION",
    "Hook",
    "Hooks",
    "Process",
    "System",
    "SystemDefinitionError",
    "Topology",
    "check_identity",
    "define_system",
    "hook_text",
    "start_order",
]

PROTOCOL_VERSION: Final = 1
"""The worker protocol spoken between the daemon and ``python -m omnitron.worker``.

Raised whenever the describe output, the built-in ``worker.*`` methods or the call
convention change incompatibly. The daemon refuses a worker speaking another one
(:func:`check_identity`).
"""

HOOK_NAMES: Final = ("before_start", "after_start", "before_stop", "after_stop", "on_health_check")
"""The lifecycle hooks a system and each of its processes may declare."""

MAX_INSTANCES: Final = 1024
"""The most instances one process entry may ask for."""

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MODULE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_HOOK_REF: Final = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
)
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Hook = Callable[[], Any] | str
"""A hook: a callable taking no arguments (sync or ``async``), or ``"module:function"``."""


@attrs.frozen(kw_only=True)
class Topology:
    """Who a process serves and whom it calls.

    Attributes:
        expose: Its services may be accessed by other processes of the system.
        access: What it calls: names of processes of this system, or names of
            services that a process of this system serves (``"users"`` for a
            process whose module has ``@service("users")``). A name that is not a
            process's is a service's: ``describe`` finds the process serving it
            (:meth:`System.resolve_access`). The processes it accesses start
            before it; a cycle is an error.
    """

    expose: bool = False
    access: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class Hooks:
    """Lifecycle hooks; each is a callable (no arguments, sync or async) or ``"module:function"``.

    Attributes:
        before_start: Before the process's module is imported.
        after_start: Once the services listen, before ready is reported.
        before_stop: On SIGTERM, before the services' ``on_stop``.
        after_stop: After the services' ``on_stop``, before the process exits.
        on_health_check: Returns a health result (see :mod:`omnitron.worker`).
    """

    before_start: Hook | None = None
    after_start: Hook | None = None
    before_stop: Hook | None = None
    after_stop: Hook | None = None
    on_health_check: Hook | None = None

    def items(self) -> list[tuple[str, Hook]]:
        """The hooks that are set, as ``(name, hook)``."""
        return [(name, hook) for name in HOOK_NAMES if (hook := getattr(self, name)) is not None]


@attrs.frozen(kw_only=True)
class Process:
    """One process entry of a system (validated by :func:`define_system`).

    ``topology`` may be given as a map (``{"expose": True, "access": ["users"]}``),
    ``hooks`` as a map of hook name to hook. A missing ``name`` or ``module`` is
    reported by :func:`define_system` with the entry's path.

    Attributes:
        name: Unique within the system: letters, digits, ``_``, ``.``, ``-``.
        module: The dotted module the worker imports (``shop.http``), relative to
            the bootstrap file's directory.
        instances: How many OS processes run it (1 to 1024).
        topology: See :class:`Topology`.
        env: Extra environment variables of its processes.
        hooks: Its own lifecycle hooks, run inside each of its processes.
        python: The interpreter of its processes, when it differs from the app's.
    """

    name: Any = None
    module: Any = None
    instances: Any = 1
    topology: Any = attrs.field(factory=Topology)
    env: Any = attrs.field(factory=dict)
    hooks: Any = None
    python: Any = None


@attrs.frozen(kw_only=True)
class System:
    """A validated module-worker system (built by :func:`define_system`).

    Attributes:
        name: The system's name.
        version: Its version text (shown by the daemon; not interpreted).
        processes: Its process entries, normalised: ``topology`` is a
            :class:`Topology`, ``hooks`` a :class:`Hooks`, ``env`` a dict.
        hooks: System-level hooks, run inside every process of the system,
            around the process's own hooks.
        env: Environment variables of every process (a process's ``env`` wins).
    """

    name: str
    version: str
    processes: tuple[Process, ...]
    hooks: Hooks = attrs.field(factory=Hooks)
    env: Mapping[str, str] = attrs.field(factory=dict)

    def process(self, name: str) -> Process:
        """The process entry called ``name``.

        Raises:
            KeyError: No such process; the message lists the ones there are.
        """
        for process in self.processes:
            if process.name == name:
                return process
        known = ", ".join(p.name for p in self.processes)
        raise KeyError(f"system {self.name!r} has no process {name!r} (it has: {known})")

    def start_order(self) -> list[str]:
        """Process names with providers before their consumers (see :func:`start_order`)."""
        return start_order(self.processes)

    def service_access(self) -> list[tuple[int, int, str]]:
        """``(process index, access position, name)`` of each ``access`` entry that
        names a service, not a process (to be resolved with :meth:`resolve_access`)."""
        names = {p.name for p in self.processes}
        return [
            (index, position, target)
            for index, process in enumerate(self.processes)
            for position, target in enumerate(process.topology.access)
            if target not in names
        ]

    def resolve_access(self, services: Mapping[str, Iterable[str]]) -> System:
        """This system with every ``access`` entry naming a process: a service name
        is replaced by the process that serves it.

        Args:
            services: The service names each process's module defines, by process.

        Raises:
            SystemDefinitionError: A service no process serves, or more than one
                does, or one that the accessing process serves itself, or whose
                process does not expose it; or a cycle once resolved.
        """
        serving: dict[str, list[str]] = {}
        for process in self.processes:
            for service in services.get(process.name, ()):
                serving.setdefault(service, []).append(process.name)
        names = {p.name for p in self.processes}
        issues = _Issues()
        resolved: list[Process] = []
        for index, process in enumerate(self.processes):
            access: list[str] = []
            for position, target in enumerate(process.topology.access):
                path = f"processes[{index}].topology.access[{position}]"
                providers = [target] if target in names else serving.get(target, [])
                if not providers:
                    known = ", ".join(sorted(serving)) or "none"
                    issues.add(
                        path,
                        f"no process or service named {target!r} in this system "
                        f"(processes: {', '.join(sorted(names))}; services: {known})",
                    )
                elif len(providers) > 1:
                    issues.add(
                        path,
                        f"service {target!r} is served by processes {', '.join(providers)}; "
                        "name the process to access instead",
                    )
                elif providers[0] == process.name and target != process.name:
                    issues.add(
                        path,
                        f"service {target!r} is served by process {process.name!r} itself; "
                        "a process calls its own services directly",
                    )
                elif providers[0] not in access:
                    access.append(providers[0])
            topology = attrs.evolve(process.topology, access=tuple(access))
            resolved.append(attrs.evolve(process, topology=topology))
        if not issues.items:
            _check_access(issues, resolved, resolved, by_service=True)
        if issues.items:
            raise SystemDefinitionError(issues.items)
        return attrs.evolve(self, processes=tuple(resolved))

    def to_json(self) -> dict[str, object]:
        """The JSON form printed by ``python -m omnitron.worker describe``."""
        return {
            "name": self.name,
            "version": self.version,
            "env": dict(self.env),
            "hooks": _hooks_json(self.hooks),
            "processes": [
                {
                    "name": p.name,
                    "module": p.module,
                    "instances": p.instances,
                    "topology": {"expose": p.topology.expose, "access": list(p.topology.access)},
                    "env": dict(p.env),
                    "hooks": _hooks_json(p.hooks),
                    "python": p.python,
                }
                for p in self.processes
            ],
            "start_order": self.start_order(),
        }


def hook_text(hook: Hook) -> str:
    """``"module:qualname"`` of a hook, for display and the describe output."""
    if isinstance(hook, str):
        return hook
    module = getattr(hook, "__module__", None) or "?"
    name = getattr(hook, "__qualname__", None) or type(hook).__qualname__
    return f"{module}:{name}"


def _hooks_json(hooks: Hooks) -> dict[str, str]:
    return {name: hook_text(hook) for name, hook in hooks.items()}


class _Issues:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))


def _describe(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a string of {len(value)} characters"
    return f"a value of type {type(value).__name__}"


def _check_name(issues: _Issues, path: str, value: object) -> str | None:
    if value is None or value == "":
        issues.add(path, "is required")
        return None
    if not isinstance(value, str):
        issues.add(path, f"must be a string, got {_describe(value)}")
        return None
    if not _NAME.fullmatch(value) or ".." in value:
        issues.add(
            path,
            f"{_describe(value)} is not a valid name (letters, digits, '_', '.', '-'; "
            "at most 64 characters, starting with a letter or digit)",
        )
        return None
    return value


def _check_env(issues: _Issues, path: str, value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        issues.add(path, f"must be a map of NAME to string, got {_describe(value)}")
        return {}
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            issues.add(f"{path}.{key}", "is not a valid environment variable name")
        elif not isinstance(item, str):
            issues.add(f"{path}.{key}", f"must be a string, got {_describe(item)}")
        elif "\0" in item:
            issues.add(f"{path}.{key}", "must not contain a NUL character")
        else:
            env[key] = item
    return env


def _check_hook(issues: _Issues, path: str, value: object) -> Hook | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not _HOOK_REF.fullmatch(value):
            issues.add(path, f"{_describe(value)} must look like 'package.module:function'")
            return None
        return value
    if not callable(value):
        issues.add(path, f"must be a callable or 'module:function', got {_describe(value)}")
        return None
    return value


def _check_hooks(issues: _Issues, path: str, value: object) -> Hooks:
    if value is None:
        return Hooks()
    if isinstance(value, Hooks):
        items: Mapping[object, object] = {name: getattr(value, name) for name in HOOK_NAMES}
    elif isinstance(value, Mapping):
        items = value
    else:
        issues.add(path, f"must be a map of hook name to hook, got {_describe(value)}")
        return Hooks()
    checked: dict[str, Hook | None] = {}
    for key, hook in items.items():
        if key not in HOOK_NAMES:
            issues.add(f"{path}.{key}", f"is not a hook; hooks are {', '.join(HOOK_NAMES)}")
            continue
        assert isinstance(key, str)
        checked[key] = _check_hook(issues, f"{path}.{key}", hook)
    return Hooks(**checked)


def _check_topology(issues: _Issues, path: str, value: object) -> Topology:
    if value is None:
        return Topology()
    if isinstance(value, Topology):
        expose: object = value.expose
        access: object = value.access
    elif isinstance(value, Mapping):
        unknown = [key for key in value if key not in ("expose", "access")]
        for key in unknown:
            issues.add(f"{path}.{key}", "is not a topology key; use expose and access")
        expose = value.get("expose", False)
        access = value.get("access", ())
    else:
        issues.add(path, f"must be a map with expose and access, got {_describe(value)}")
        return Topology()
    if not isinstance(expose, bool):
        issues.add(f"{path}.expose", f"must be true or false, got {_describe(expose)}")
        expose = False
    names: list[str] = []
    if isinstance(access, str) or not isinstance(access, Iterable):
        issues.add(f"{path}.access", f"must be a list of process names, got {_describe(access)}")
    else:
        for index, item in enumerate(access):
            name = _check_name(issues, f"{path}.access[{index}]", item)
            if name is not None and name not in names:
                names.append(name)
    return Topology(expose=bool(expose), access=tuple(names))


def _check_process(issues: _Issues, path: str, value: object) -> Process | None:
    if not isinstance(value, Process):
        issues.add(path, f"must be a Process(...), got {_describe(value)}")
        return None
    name = _check_name(issues, f"{path}.name", value.name)
    module = value.module
    if module is None or module == "":
        issues.add(f"{path}.module", "is required")
    elif not isinstance(module, str):
        issues.add(f"{path}.module", f"must be a string, got {_describe(module)}")
    elif not _MODULE.fullmatch(module) or any(keyword.iskeyword(p) for p in module.split(".")):
        issues.add(
            f"{path}.module", f"{_describe(module)} is not a dotted module name (e.g. shop.http)"
        )
    instances = value.instances
    if not isinstance(instances, int) or isinstance(instances, bool):
        issues.add(f"{path}.instances", f"must be an integer, got {_describe(instances)}")
    elif not 1 <= instances <= MAX_INSTANCES:
        issues.add(f"{path}.instances", f"must be between 1 and {MAX_INSTANCES}, got {instances}")
    python = value.python
    if python is not None and (not isinstance(python, str) or not python or "\0" in python):
        issues.add(f"{path}.python", f"must be an interpreter path, got {_describe(python)}")
    topology = _check_topology(issues, f"{path}.topology", value.topology)
    env = _check_env(issues, f"{path}.env", value.env)
    hooks = _check_hooks(issues, f"{path}.hooks", value.hooks)
    return attrs.evolve(
        value,
        name=name,
        module=module,
        topology=topology,
        env=env,
        hooks=hooks,
    )


def _find_cycle(access: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One access cycle (``[a, b, a]``), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in access:
        if state.get(root):
            continue
        path: list[str] = [root]
        stack: list[Iterator[str]] = [iter(access.get(root, ()))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(child) == 1:
                return [*path[path.index(child) :], child]
            if not state.get(child) and child in access:
                state[child] = 1
                path.append(child)
                stack.append(iter(access[child]))
    return None


def start_order(processes: Sequence[Process]) -> list[str]:
    """Process names ordered so that every process starts after those it accesses.

    Each next process is the first one, in definition order, whose providers
    are all placed. Names a process
    accesses that are not in ``processes`` are ignored (validation reports them).

    Raises:
        ValueError: The access graph has a cycle (only for unvalidated input).
    """
    names = [p.name for p in processes]
    pending = {p.name: [a for a in p.topology.access if a in names] for p in processes}
    order: list[str] = []
    while pending:
        ready = next(
            (n for n in names if n in pending and all(a in order for a in pending[n])), None
        )
        if ready is None:
            raise ValueError(f"topology cycle among {', '.join(sorted(pending))}")
        order.append(ready)
        del pending[ready]
    return order


def define_system(
    name: str,
    version: str,
    processes: Sequence[Process],
    hooks: Hooks | Mapping[str, Hook] | None = None,
    env: Mapping[str, str] | None = None,
) -> System:
    """Declare a module-worker system (the ``system`` of a bootstrap file).

    Args:
        name: The system's name.
        version: Its version text, e.g. ``"1.0"``.
        processes: At least one :class:`Process`; names must be unique.
        hooks: System-level hooks (a :class:`Hooks` or a map of hook name to hook).
        env: Environment variables of all its processes.

    Raises:
        SystemDefinitionError: Every problem found, each with its path.
    """
    issues = _Issues()
    checked_name = _check_name(issues, "name", name)
    if version is None or version == "":
        issues.add("version", "is required")
    elif not isinstance(version, str):
        issues.add("version", f"must be a string, got {_describe(version)}")
    checked: list[Process] = []
    if processes is None or (isinstance(processes, Sequence) and not processes):
        issues.add("processes", "at least one process is required")
    elif isinstance(processes, str) or not isinstance(processes, Sequence):
        issues.add("processes", f"must be a list of Process(...), got {_describe(processes)}")
    else:
        seen: dict[str, int] = {}
        for index, entry in enumerate(processes):
            process = _check_process(issues, f"processes[{index}]", entry)
            if process is None:
                continue
            if process.name is not None:
                if process.name in seen:
                    issues.add(
                        f"processes[{index}].name",
                        f"duplicate process name {process.name!r} "
                        f"(also processes[{seen[process.name]}])",
                    )
                    continue
                seen[process.name] = index
                checked.append(process)
        _check_access(issues, processes, checked)
    system_hooks = _check_hooks(issues, "hooks", hooks)
    system_env = _check_env(issues, "env", env)
    if issues.items:
        raise SystemDefinitionError(issues.items)
    assert checked_name is not None
    return System(
        name=checked_name,
        version=version,
        processes=tuple(checked),
        hooks=system_hooks,
        env=system_env,
    )


def _check_access(
    issues: _Issues,
    entries: Sequence[object],
    checked: Sequence[Process],
    *,
    by_service: bool = False,
) -> None:
    """Check each process's ``access``: a process it names exists, exposes its
    services and is not itself; no cycle. A name that is no process's but could be
    a service's is left for :meth:`System.resolve_access` (``by_service``: the
    names were resolved from service names, and the messages say so)."""
    by_name = {p.name: p for p in checked}
    index_of = {
        entry.name: index
        for index, entry in enumerate(entries)
        if isinstance(entry, Process) and isinstance(entry.name, str)
    }
    for process in checked:
        index = index_of[process.name]
        for position, target in enumerate(process.topology.access):
            path = f"processes[{index}].topology.access[{position}]"
            provider = by_name.get(target)
            if target == process.name:
                issues.add(path, f"process {target!r} cannot access itself")
            elif provider is None:
                if SERVICE_NAME.fullmatch(target):
                    continue  # a service's name: resolved when described
                known = ", ".join(sorted(by_name)) or "none"
                issues.add(
                    path,
                    f"no process named {target!r} in this system (known: {known}), and "
                    "it is not a service name either (a lower-case identifier)",
                )
            elif not provider.topology.expose:
                served = " (it serves a service named here)" if by_service else ""
                issues.add(
                    path,
                    f"process {target!r}{served} does not expose its services; "
                    'give it topology={"expose": True}',
                )
    graph = {
        p.name: [a for a in p.topology.access if a in by_name and a != p.name] for p in checked
    }
    cycle = _find_cycle(graph)
    if cycle is not None:
        issues.add(
            f"processes[{index_of[cycle[0]]}].topology.access",
            f"topology cycle: {' -> '.join(cycle)}",
        )


def check_identity(described: Mapping[str, object]) -> str | None:
    """Why a worker's ``describe``/``worker.hello`` answer cannot be used, or ``None``.

    The daemon and a worker must speak the same :data:`PROTOCOL_VERSION`; the
    message names both omnitron versions and the worker's interpreter.
    """
    python = described.get("python") or "the app's interpreter"
    theirs = described.get("omnitron") or "an unknown version"
    protocol = described.get("protocol")
    if protocol == PROTOCOL_VERSION and type(protocol) is int:
        return None
    spoken = "no worker protocol version" if protocol is None else f"worker protocol {protocol!r}"
    return (
        f"the omnitron installed for {python} is {theirs} and speaks {spoken}; "
        f"this daemon's omnitron is {__version__} and speaks worker protocol "
        f"{PROTOCOL_VERSION}: install omnitron {__version__} in that environment"
    )
