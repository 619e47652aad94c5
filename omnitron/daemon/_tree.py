"""Turns an ecosystem config into one supervision tree.

The tree has one level per concern::

    <project>                 strategy of [supervision], apps in dependency order
    ├── cache                 one subtree per app: a pool of `instances` processes
    │   └── 0
    └── api
        ├── 0
        └── 1

With ``strategy = "one_for_one"`` each app pool has the app's own restart limits
(``restart_policy``) and is a *temporary* child of the root: an app that exceeds
its limit is removed from the tree and marked ``crashed``; the others keep
running. With ``one_for_all`` / ``rest_for_one`` a crash of any process is a
crash of its app (the pool gives up at once), so the root applies the strategy
across apps, within the limits of ``[supervision]``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from supervision import (
    Backoff,
    ChildSpec,
    Intensity,
    InvalidSpec,
    InvalidSpecType,
    Listen,
    Output,
    ProcessChild,
    Ready,
    Restart,
    Strategy,
    SupervisorSpec,
)

from ..config import AppConfig, Ecosystem, ReadyKind, secret_reference
from ..config import Restart as ConfigRestart
from ..config import Strategy as ConfigStrategy
from ..config._bootstrap import WorkerSlot, WorkerSystem, interpreter
from ._errors import RequestRefused, UnsupportedApp

if TYPE_CHECKING:
    from ._secrets import SecretStore

__all__ = [
    "ENV_APP",
    "ENV_HOME",
    "ENV_INSTANCE",
    "ENV_ROUTER_SOCKET",
    "ENV_WORKER_SOCKET",
    "Place",
    "SecretsUnavailable",
    "TreeBuilder",
    "UnsupportedApp",
    "marker_environ",
]

#: Environment markers put on every managed process: how a restarted daemon finds
#: the processes a dead one left behind (never by command name).
ENV_HOME = "OMNITRON_HOME"
ENV_APP = "OMNITRON_APP"
ENV_INSTANCE = "OMNITRON_INSTANCE"
#: Where a worker of a module-worker app serves its methods to the daemon.
ENV_WORKER_SOCKET = "OMNITRON_WORKER_SOCKET"

#: Where a worker calls the services its process accesses (through the daemon).
ENV_ROUTER_SOCKET = "OMNITRON_ROUTER_SOCKET"

#: ``sockaddr_un.sun_path`` holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107

#: The root never gives up in one_for_one mode: its children are temporary.
_UNBOUNDED = Intensity(max_restarts=1_000_000, window=1.0)

LineSink = Callable[[bytes], None]


def _home_marker(home: str | os.PathLike[str]) -> str:
    # The same normalisation as omnitron.state.Home: absolute, ``~`` expanded, links kept.
    return os.path.abspath(os.path.expanduser(os.fspath(home)))


def marker_environ(home: str | os.PathLike[str], app: str, instance: int) -> dict[str, str]:
    """The environment markers of one managed process, as the daemon sets them and
    :func:`~omnitron.daemon._leftovers.find_leftovers` finds them.

    Args:
        home: The daemon's home directory (made absolute, as ``Home.path`` is).
        app: The app's name.
        instance: The process's index in the app's pool.

    Returns:
        ``OMNITRON_HOME``, ``OMNITRON_APP`` and ``OMNITRON_INSTANCE``, ready to
        merge into the child's environment.
    """
    return {ENV_HOME: _home_marker(home), ENV_APP: app, ENV_INSTANCE: str(instance)}


@attrs.frozen
class Place:
    """What a path of the tree is: an app's pool (``instance`` is ``None``) or one
    of its processes (``worker``: which worker of a module-worker app it runs)."""

    app: str
    instance: int | None = None
    worker: WorkerSlot | None = None


#: Shared by every process ready on spawn (frozen: one object, not one per process).
_ON_SPAWN = Ready.on_spawn()


def _ready(app: AppConfig) -> Ready:
    ready = app.ready
    match ready.kind:
        case ReadyKind.ON_SPAWN:
            return _ON_SPAWN
        case ReadyKind.NOTIFY:
            return Ready.notify(watchdog=ready.watchdog)
        case ReadyKind.TCP:
            assert ready.port is not None
            return Ready.tcp(ready.port, ready.host or "127.0.0.1")
        case ReadyKind.HTTP:
            assert ready.url is not None
            return Ready.http(ready.url)
        case ReadyKind.AFTER:
            assert ready.seconds is not None
            return Ready.after(ready.seconds)
        case ReadyKind.FD:
            assert ready.fd is not None
            return Ready.fd(ready.fd)
    raise UnsupportedApp(f"unknown readiness kind {ready.kind!r}")


class SecretsUnavailable(UnsupportedApp, RequestRefused):
    """An app's ``secret:`` references cannot be resolved (not set, or the store is
    unusable); the message names the secret or the file, never a value."""

    def __str__(self) -> str:
        return self.message  # recorded as the app's last error, without the wire code


def secret_references(app: AppConfig) -> dict[str, str]:
    """``{VARIABLE: secret name}`` for each ``secret:NAME`` value of ``app.env``."""
    return {key: name for key, value in app.env.items() if (name := secret_reference(value))}


_RESTART = {
    ConfigRestart.PERMANENT: Restart.PERMANENT,
    ConfigRestart.TRANSIENT: Restart.TRANSIENT,
    ConfigRestart.TEMPORARY: Restart.TEMPORARY,
}
_STRATEGY = {
    ConfigStrategy.ONE_FOR_ONE: Strategy.ONE_FOR_ONE,
    ConfigStrategy.ONE_FOR_ALL: Strategy.ONE_FOR_ALL,
    ConfigStrategy.REST_FOR_ONE: Strategy.REST_FOR_ONE,
}


class TreeBuilder:
    """Builds the specs of the daemon's tree.

    Every spec it builds is entered in :attr:`places`, the map from a path of the
    tree (as events carry it) to the app and instance it belongs to, so that no
    one has to read a path back.

    Args:
        ecosystem: The validated config.
        home: The daemon's home (put in every child's environment as a marker).
        sink: ``sink(app, instance, stream)`` returns the batch sink of that stream.
        places: A map to extend (a new builder after a reload keeps the paths of
            the specs built before); a new one by default.
        leaf: ``leaf(app, index)`` returns what runs process ``index`` of ``app``
            instead of the :class:`~supervision.ProcessChild` of its config (for
            tests in virtual time, with :mod:`supervision.testing`'s fake child).
        secrets: Where ``secret:NAME`` env values are resolved, each time a process
            spec is built (``None``: an app that uses a secret cannot start).
        sockets: ``sockets(app)`` gives the daemon-owned listening sockets every
            process of ``app`` is handed (see :mod:`._sockets`); none by default.
        systems: The described bootstrap of each module-worker app (kept up to date
            by the orchestrator, which describes an app before it builds its pool).
    """

    def __init__(
        self,
        ecosystem: Ecosystem,
        *,
        home: Path,
        sink: Callable[[str, int, str], LineSink],
        places: dict[tuple[str, ...], Place] | None = None,
        leaf: Callable[[AppConfig, int], Any] | None = None,
        secrets: SecretStore | None = None,
        sockets: Callable[[str], tuple[Listen, ...]] = lambda app: (),
        systems: dict[str, WorkerSystem] | None = None,
    ) -> None:
        self.ecosystem = ecosystem
        self.sockets = sockets
        self.systems: dict[str, WorkerSystem] = {} if systems is None else systems
        self.home = home
        # One string for every process's OMNITRON_HOME marker.
        self._home_marker = _home_marker(home)
        self._sink = sink
        self.secrets = secrets
        self._leaf = leaf
        self.places: dict[tuple[str, ...], Place] = {} if places is None else places

    @property
    def group_mode(self) -> bool:
        """Whether a crash of one app restarts others (one_for_all / rest_for_one)."""
        return self.ecosystem.supervision.strategy is not ConfigStrategy.ONE_FOR_ONE

    def root(self, pools: list[ChildSpec]) -> SupervisorSpec:
        """The root spec over app pools built by :meth:`app`, in the given order."""
        supervision = self.ecosystem.supervision
        if self.group_mode:
            intensity = Intensity(max_restarts=supervision.max_restarts, window=supervision.window)
            backoff = Backoff(
                initial=supervision.backoff.initial,
                max=supervision.backoff.max,
                factor=supervision.backoff.factor,
            )
        else:
            intensity, backoff = _UNBOUNDED, Backoff.none()
        return SupervisorSpec(
            name=self.ecosystem.project,
            strategy=_STRATEGY[supervision.strategy],
            intensity=intensity,
            backoff=backoff,
            children=pools,
        )

    def app(self, app: AppConfig, instances: int) -> ChildSpec:
        """The pool subtree of one app, as a child of the root.

        For a module-worker app, ``instances`` is the number of its workers (see
        :attr:`WorkerSystem.slots`), in topology order.

        Raises:
            UnsupportedApp: The app cannot be run (a bootstrap not described).
        """
        if app.bootstrap is not None and app.name not in self.systems:
            raise UnsupportedApp(f"app {app.name!r}: its bootstrap has not been described")
        policy = app.restart_policy
        if self.group_mode:
            # Any crash is a crash of the app: the root applies the strategy.
            intensity = Intensity(max_restarts=0, window=policy.window)
            backoff = Backoff.none()
        else:
            intensity = Intensity(max_restarts=policy.max_restarts, window=policy.window)
            backoff = Backoff(
                initial=policy.backoff.initial,
                max=policy.backoff.max,
                factor=policy.backoff.factor,
            )
        try:
            children = [self.instance(app, i) for i in range(instances)]
        except (InvalidSpec, InvalidSpecType) as exc:
            raise UnsupportedApp(f"app {app.name!r} cannot run: {exc}") from None
        pool = SupervisorSpec(
            name=app.name,
            strategy=Strategy.ONE_FOR_ONE,
            intensity=intensity,
            backoff=backoff,
            children=children,
        )
        restart = Restart.PERMANENT if self.group_mode else Restart.TEMPORARY
        self.places[(self.ecosystem.project, app.name)] = Place(app.name)
        return ChildSpec(app.name, pool, restart=restart)

    @staticmethod
    def instance_name(index: int) -> str:
        """The name of process ``index`` in its app's pool."""
        return str(index)

    @staticmethod
    def successor_name(index: int, generation: int) -> str:
        """The name of the process that replaces process ``index`` in a reload: a
        new child beside the running one (``0~3``), shown as instance ``index``."""
        return f"{index}~{generation}"

    def instance(self, app: AppConfig, index: int, *, child: str | None = None) -> ChildSpec:
        """Process ``index`` of ``app``'s pool, its secrets resolved now.

        ``child`` names it in the pool (default :meth:`instance_name`; a reload
        names the new process with :meth:`successor_name`): whatever its name, the
        path maps to instance ``index`` in :attr:`places`.

        Raises:
            SecretsUnavailable: A secret it references cannot be resolved.
        """
        name = self.instance_name(index) if child is None else child
        worker = self.worker_slot(app, index)
        if worker is not None:
            worker = attrs.evolve(
                worker, socket=os.fspath(self.socket_path(app.name, worker, name))
            )
        if self._leaf is not None:
            process = self._leaf(app, index)
        elif worker is not None:
            process = self._worker(app, index, worker)
        else:
            process = self._process(app, index)
        self.places[(self.ecosystem.project, app.name, name)] = Place(app.name, index, worker)
        return ChildSpec(name, process, restart=_RESTART[app.restart])

    def _process(self, app: AppConfig, index: int) -> ProcessChild:
        assert app.command is not None
        env = {
            **app.env,
            **self._resolve_secrets(app),
            **self._markers(app.name, index),
        }
        return ProcessChild(
            app.command,  # a tuple: every instance's spec shares it
            env=env,
            cwd=os.fspath(app.cwd),
            ready=_ready(app),
            startup_timeout=app.startup_timeout,
            stop_signal=app.stop_signal,
            stop_timeout=app.stop_timeout,
            stdout=Output.batches(self._sink(app.name, index, "out")),
            stderr=Output.batches(self._sink(app.name, index, "err")),
            listen=self.sockets(app.name),
        )

    def _markers(self, app: str, index: int) -> dict[str, str]:
        """:func:`marker_environ`, with the home's string made once for every process."""
        return {ENV_HOME: self._home_marker, ENV_APP: app, ENV_INSTANCE: str(index)}

    def worker_slot(self, app: AppConfig, index: int) -> WorkerSlot | None:
        """The worker that process ``index`` of a module-worker app runs (``None`` for
        a classic app).

        Raises:
            UnsupportedApp: Not a worker of the app as described (scaled beyond it).
        """
        if app.bootstrap is None:
            return None
        slots = self.systems[app.name].slots
        if not 0 <= index < len(slots):
            raise UnsupportedApp(
                f"app {app.name!r} runs {len(slots)} workers (its bootstrap's instances); "
                f"there is no instance {index}"
            )
        return slots[index]

    @property
    def router_socket(self) -> Path:
        """The daemon's socket for workers' calls to other processes: ``HOME/run/router.sock``."""
        return self.home / "run" / "router.sock"

    def socket_path(self, app: str, worker: WorkerSlot, child: str | None = None) -> Path:
        """Where ``worker`` of ``app`` serves the daemon: ``HOME/run/APP/PROCESS.I.sock``
        (``PROCESS.I~G.sock`` for the process that replaces it in a reload, so
        both serve side by side), or a hashed name under ``HOME/run`` when that
        would be too long for a Unix socket.

        Raises:
            UnsupportedApp: Even the short form is too long (a very deep home).
        """
        run = self.home / "run"
        generation = (child or "").partition("~")[2]
        stem = f"{worker.process}.{worker.index}" + (f"~{generation}" if generation else "")
        path = run / app / f"{stem}.sock"
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
            return path
        digest = hashlib.blake2s(f"{app}/{stem}".encode(), digest_size=8)
        path = run / f"w{digest.hexdigest()}.sock"
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise UnsupportedApp(
                f"app {app!r}: the worker socket path {path} is longer than "
                f"{MAX_SOCKET_PATH} bytes; use a shorter OMNITRON_HOME"
            )
        return path

    def _worker(self, app: AppConfig, index: int, worker: WorkerSlot) -> ProcessChild:
        assert app.bootstrap is not None
        assert worker.socket is not None
        process = self.systems[app.name].process(worker.process)
        socket = Path(worker.socket)
        # The worker removes a stale socket file (one left by a killed worker) itself.
        socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {
            **app.env,
            **process.env,
            **self._resolve_secrets(app),
            **self._markers(app.name, index),
            ENV_WORKER_SOCKET: os.fspath(socket),
            ENV_ROUTER_SOCKET: os.fspath(self.router_socket),
            "OMNITRON_STOP_TIMEOUT": f"{app.stop_timeout:g}",
            "PYTHONUNBUFFERED": "1",
        }
        argv = [process.python or interpreter(app), "-m", "omnitron.worker", "serve"]
        return ProcessChild(
            [*argv, os.fspath(app.bootstrap), worker.process],
            env=env,
            cwd=os.fspath(app.cwd),
            ready=Ready.notify(),
            startup_timeout=app.startup_timeout,
            stop_signal=app.stop_signal,
            stop_timeout=app.stop_timeout,
            stdout=Output.batches(self._sink(app.name, index, "out")),
            stderr=Output.batches(self._sink(app.name, index, "err")),
        )

    def _resolve_secrets(self, app: AppConfig) -> dict[str, str]:
        references = secret_references(app)
        if not references:
            return {}
        from ._secrets import SecretNotSet, SecretStoreUnavailable

        try:
            if self.secrets is None:
                raise SecretStoreUnavailable("this daemon has no secret store")
            values = self.secrets.resolve(references.values())
        except (SecretNotSet, SecretStoreUnavailable) as exc:
            raise SecretsUnavailable(f"app {app.name!r} cannot start: {exc.message}") from None
        return {key: values[name] for key, name in references.items()}
