"""The frozen, validated spec types a supervision tree is described with."""

from __future__ import annotations

import enum
import inspect
import math
import re
import signal as _signal
import socket as _socket
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

import attrs

from ._errors import InvalidSpec, InvalidSpecType

if TYPE_CHECKING:
    from ._runner import Runner, RunnerContext

__all__ = [
    "AutoShutdown",
    "Backoff",
    "ChildSpec",
    "Intensity",
    "Listen",
    "Output",
    "ProcessChild",
    "Ready",
    "Restart",
    "Strategy",
    "SupervisorSpec",
    "TaskChild",
]


class Strategy(enum.Enum):
    """Which children are restarted when one of them must be restarted."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that died."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: the others are stopped (reverse order), then all restart in order."""
    REST_FOR_ONE = "rest_for_one"
    """The child that died and every child started after it."""


class Restart(enum.Enum):
    """When a child that exited is restarted."""

    PERMANENT = "permanent"
    """Always."""
    TRANSIENT = "transient"
    """Only after an abnormal exit (non-zero code, killed by a signal, exception)."""
    TEMPORARY = "temporary"
    """Never; it is removed from the supervisor when it exits."""


class AutoShutdown(enum.Enum):
    """When a supervisor shuts itself down because its significant children exited."""

    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


# --------------------------------------------------------------------------- helpers


def _fail(cls: type, field: str, message: str) -> InvalidSpec:
    return InvalidSpec(f"{cls.__name__}.{field}: {message}")


def _number(cls: type, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSpecType(
            f"{cls.__name__}.{field}: expected a number, got {type(value).__name__}"
        )
    if math.isnan(value):
        raise _fail(cls, field, "must not be NaN")
    return float(value)


def _non_negative(cls: type, field: str, value: object, *, finite: bool = True) -> float:
    number = _number(cls, field, value)
    if number < 0:
        raise _fail(cls, field, f"must be >= 0, got {value!r}")
    if finite and math.isinf(number):
        raise _fail(cls, field, "must be finite")
    return number


def _positive(cls: type, field: str, value: object, *, finite: bool = True) -> float:
    number = _non_negative(cls, field, value, finite=finite)
    if number == 0:
        raise _fail(cls, field, "must be > 0")
    return number


def _enum(cls: type, field: str, enum_type: type[enum.Enum], value: object) -> Any:
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str):
        try:
            return enum_type(value.lower())
        except ValueError:
            pass
        choices = ", ".join(m.value for m in enum_type)
        raise _fail(cls, field, f"unknown value {value!r}; expected one of {choices}")
    raise InvalidSpecType(
        f"{cls.__name__}.{field}: expected {enum_type.__name__}, got {type(value).__name__}"
    )


# --------------------------------------------------------------------------- limits


@attrs.frozen
class Intensity:
    """Restart intensity: more than ``max_restarts`` restarts within ``window`` seconds
    makes the supervisor give up.

    Args:
        max_restarts: Restarts tolerated inside the window (``0`` gives up on the first).
        window: The sliding window, in seconds of monotonic time.
    """

    max_restarts: int = 5
    window: float = 60.0

    def __attrs_post_init__(self) -> None:
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int):
            raise InvalidSpecType(
                f"Intensity.max_restarts: expected an int, got {type(self.max_restarts).__name__}"
            )
        if self.max_restarts < 0:
            raise _fail(Intensity, "max_restarts", f"must be >= 0, got {self.max_restarts}")
        object.__setattr__(self, "window", _positive(Intensity, "window", self.window))


@attrs.frozen
class Backoff:
    """Delay before a child's n-th consecutive restart: ``min(max, initial * factor**(n-1))``.

    Args:
        initial: Delay before the first restart, in seconds.
        max: Upper bound of the delay.
        factor: Growth factor (``>= 1``).
        jitter: Random spread as a fraction of the delay (``0.1`` = ±10 %), in ``[0, 1]``.
        reset_after: Uptime in seconds after which the consecutive-restart count goes
            back to zero. ``None`` means the supervisor's intensity window.
    """

    initial: float = 1.0
    max: float = 30.0
    factor: float = 2.0
    jitter: float = 0.0
    reset_after: float | None = None

    def __attrs_post_init__(self) -> None:
        initial = _non_negative(Backoff, "initial", self.initial)
        maximum = _non_negative(Backoff, "max", self.max)
        factor = _number(Backoff, "factor", self.factor)
        if factor < 1 or math.isinf(factor):
            raise _fail(Backoff, "factor", f"must be a finite number >= 1, got {self.factor!r}")
        jitter = _number(Backoff, "jitter", self.jitter)
        if not 0 <= jitter <= 1:
            raise _fail(Backoff, "jitter", f"must be within [0, 1], got {self.jitter!r}")
        if maximum < initial:
            raise _fail(Backoff, "max", f"must be >= initial ({initial:g}), got {maximum:g}")
        object.__setattr__(self, "initial", initial)
        object.__setattr__(self, "max", maximum)
        object.__setattr__(self, "factor", float(factor))
        object.__setattr__(self, "jitter", float(jitter))
        if self.reset_after is not None:
            object.__setattr__(
                self, "reset_after", _positive(Backoff, "reset_after", self.reset_after)
            )

    @classmethod
    def none(cls) -> Backoff:
        """Restart at once, every time."""
        return cls(initial=0.0, max=0.0, factor=1.0)

    def delay(self, attempt: int, *, spread: float = 0.0) -> float:
        """The delay before the ``attempt``-th consecutive restart (1-based).

        Args:
            attempt: 1 for the first restart after a stable run.
            spread: A number in ``[-1, 1]`` scaled by ``jitter`` (the engine draws it).
        """
        if attempt < 1:
            raise ValueError("attempt is 1-based")
        if self.max == 0 or self.initial == 0:
            return 0.0
        # Cap the exponent so huge attempt counts do not overflow a float.
        exponent = min(attempt - 1, 1024)
        try:
            base = self.initial * self.factor**exponent
        except OverflowError:
            base = self.max
        return max(0.0, min(self.max, base * (1 + self.jitter * spread)))


# --------------------------------------------------------------------------- readiness


@attrs.frozen
class Ready:
    """How a process child tells the supervisor it is ready.

    Build one with the classmethods: :meth:`on_spawn`, :meth:`after`, :meth:`notify`,
    :meth:`fd`, :meth:`tcp`, :meth:`http`.
    """

    kind: ClassVar[str] = "ready"

    @staticmethod
    def on_spawn() -> ReadyOnSpawn:
        """Ready as soon as the exec succeeded."""
        return ReadyOnSpawn()

    @staticmethod
    def after(seconds: float) -> ReadyAfter:
        """Ready once the child has stayed alive for ``seconds`` (supervisord's startsecs)."""
        return ReadyAfter(seconds=seconds)

    @staticmethod
    def notify(*, watchdog: float | None = None) -> ReadyNotify:
        """Ready when the child sends ``READY=1`` to ``$NOTIFY_SOCKET`` (sd_notify).

        Args:
            watchdog: If set, the child must send ``WATCHDOG=1`` at least this often
                (seconds) once ready; a missed ping is treated as a crash. The interval
                is passed to the child as ``WATCHDOG_USEC``.
        """
        return ReadyNotify(watchdog=watchdog)

    @staticmethod
    def fd(n: int) -> ReadyFd:
        """Ready when the child writes a newline to its file descriptor ``n`` (s6 style)."""
        return ReadyFd(n=n)

    @staticmethod
    def tcp(port: int, host: str = "127.0.0.1") -> ReadyTcp:
        """Ready when ``host:port`` accepts a TCP connection."""
        return ReadyTcp(port=port, host=host)

    @staticmethod
    def http(url: str) -> ReadyHttp:
        """Ready when a GET of ``url`` answers with a 2xx status."""
        return ReadyHttp(url=url)


@attrs.frozen
class ReadyOnSpawn(Ready):
    kind: ClassVar[str] = "on_spawn"


@attrs.frozen
class ReadyAfter(Ready):
    kind: ClassVar[str] = "after"
    seconds: float

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "seconds", _non_negative(ReadyAfter, "seconds", self.seconds))


@attrs.frozen
class ReadyNotify(Ready):
    kind: ClassVar[str] = "notify"
    watchdog: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.watchdog is not None:
            object.__setattr__(self, "watchdog", _positive(ReadyNotify, "watchdog", self.watchdog))


@attrs.frozen
class ReadyFd(Ready):
    kind: ClassVar[str] = "fd"
    n: int

    def __attrs_post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int):
            raise InvalidSpecType(f"ReadyFd.n: expected an int, got {type(self.n).__name__}")
        if not 3 <= self.n <= 1023:
            raise _fail(ReadyFd, "n", f"must be within 3..1023 (0-2 are stdio), got {self.n}")


def _check_port(cls: type, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecType(f"{cls.__name__}.port: expected an int, got {type(value).__name__}")
    if not 0 <= value <= 65535:
        raise _fail(cls, "port", f"must be within 0..65535, got {value}")
    return value


@attrs.frozen
class ReadyTcp(Ready):
    kind: ClassVar[str] = "tcp"
    port: int
    host: str = "127.0.0.1"

    def __attrs_post_init__(self) -> None:
        if _check_port(ReadyTcp, self.port) == 0:
            raise _fail(ReadyTcp, "port", "must be within 1..65535, got 0")
        if not isinstance(self.host, str) or not self.host:
            raise _fail(ReadyTcp, "host", "must be a non-empty string")


@attrs.frozen
class ReadyHttp(Ready):
    kind: ClassVar[str] = "http"
    url: str

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.url, str) or not re.match(r"^https?://[^/\s]+", self.url):
            raise _fail(ReadyHttp, "url", f"must be an http:// or https:// URL, got {self.url!r}")


# --------------------------------------------------------------------------- output


@attrs.frozen
class Output:
    """Where a process child's stdout or stderr goes.

    Build one with :meth:`inherit`, :meth:`discard`, :meth:`lines` or :meth:`batches`.
    """

    kind: ClassVar[str] = "output"

    @staticmethod
    def inherit() -> OutputInherit:
        """The child writes to the supervisor's own stream."""
        return OutputInherit()

    @staticmethod
    def discard() -> OutputDiscard:
        """The output goes to ``/dev/null``."""
        return OutputDiscard()

    @staticmethod
    def lines(sink: Callable[[str], object], *, max_line: int = 65536) -> OutputLines:
        """Deliver the output line by line to ``sink`` (a plain, non-blocking callable).

        Lines are decoded as UTF-8 with replacement characters; the newline is
        stripped. A line longer than ``max_line`` bytes is delivered in pieces, each
        piece but the last ending with a ``"…"`` continuation marker. ``sink`` must not
        block: for a Trio channel, pass ``channel.send_nowait`` wrapped to drop on
        ``trio.WouldBlock``.
        """
        return OutputLines(sink=sink, max_line=max_line)

    @staticmethod
    def batches(sink: Callable[[bytes], object], *, max_line: int = 65536) -> OutputBatches:
        """Deliver the output a read at a time: ``sink(data)`` gets the complete lines
        of each read of the pipe as one ``bytes`` object, each line ending with ``b"\\n"``.

        The bytes are as the child wrote them (not decoded: invalid UTF-8 passes
        through). Lines longer than ``max_line`` bytes are cut as by :meth:`lines`,
        each piece but the last ending with ``"…"`` (UTF-8) and its own newline; a last
        line without a newline is delivered with one added. One call per read instead
        of one per line: the form for a sink that handles many lines at once (a log
        file). ``sink`` must not block.
        """
        return OutputBatches(sink=sink, max_line=max_line)


@attrs.frozen
class OutputInherit(Output):
    kind: ClassVar[str] = "inherit"


@attrs.frozen
class OutputDiscard(Output):
    kind: ClassVar[str] = "discard"


def _check_read_output(output: Output, sink: object, max_line: object) -> None:
    """The checks of an output the supervisor reads (lines or batches)."""
    name = type(output).__name__
    if not callable(sink):
        raise InvalidSpecType(f"{name}.sink: must be callable")
    if isinstance(max_line, bool) or not isinstance(max_line, int):
        raise InvalidSpecType(f"{name}.max_line: expected an int")
    if max_line < 16:
        raise _fail(type(output), "max_line", f"must be >= 16, got {max_line}")


@attrs.frozen
class OutputLines(Output):
    kind: ClassVar[str] = "lines"
    sink: Callable[[str], object] = attrs.field(eq=False)
    max_line: int = 65536

    def __attrs_post_init__(self) -> None:
        _check_read_output(self, self.sink, self.max_line)


@attrs.frozen
class OutputBatches(Output):
    kind: ClassVar[str] = "batches"
    sink: Callable[[bytes], object] = attrs.field(eq=False)
    max_line: int = 65536

    def __attrs_post_init__(self) -> None:
        _check_read_output(self, self.sink, self.max_line)


# --------------------------------------------------------------------------- sockets


@attrs.frozen
class Listen:
    """A listening socket the supervisor owns and passes to a process child.

    The socket is created when the child first starts and kept open across its
    restarts, so clients are never refused while the child is replaced. It reaches
    the child with the systemd socket-activation protocol (``LISTEN_FDS``,
    ``LISTEN_PID``, ``LISTEN_FDNAMES``), starting at file descriptor 3.
    """

    kind: ClassVar[str] = "listen"

    @staticmethod
    def tcp(
        port: int, host: str = "127.0.0.1", *, name: str | None = None, backlog: int = 511
    ) -> ListenTcp:
        """A TCP listening socket on ``host:port``."""
        return ListenTcp(port=port, host=host, name=name, backlog=backlog)

    @staticmethod
    def unix(path: str, *, name: str | None = None, backlog: int = 511) -> ListenUnix:
        """A Unix stream listening socket at ``path`` (a stale socket file is replaced)."""
        return ListenUnix(path=path, name=name, backlog=backlog)

    @staticmethod
    def socket(sock: _socket.socket, *, name: str | None = None) -> ListenSocket:
        """A stream socket already bound and listening, owned by the caller.

        The supervisor passes it like the others but never opens nor closes it, so
        one socket can be shared by several children (the instances of a pool, an
        old and a new process during a replacement). The caller keeps it open for
        as long as a child may start with it.
        """
        return ListenSocket(sock=sock, name=name)


_FDNAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")


def _check_listen_common(cls: type, name: str | None, backlog: int) -> None:
    if name is not None and (not isinstance(name, str) or not _FDNAME.match(name)):
        raise _fail(cls, "name", f"must match [A-Za-z0-9_.-]{{1,255}}, got {name!r}")
    if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
        raise _fail(cls, "backlog", f"must be a positive int, got {backlog!r}")


@attrs.frozen
class ListenTcp(Listen):
    kind: ClassVar[str] = "tcp"
    port: int
    host: str = "127.0.0.1"
    name: str | None = None
    backlog: int = 511

    def __attrs_post_init__(self) -> None:
        _check_port(ListenTcp, self.port)
        _check_listen_common(ListenTcp, self.name, self.backlog)


@attrs.frozen
class ListenUnix(Listen):
    kind: ClassVar[str] = "unix"
    path: str
    name: str | None = None
    backlog: int = 511

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise _fail(ListenUnix, "path", "must be a non-empty string")
        if len(self.path.encode()) > 107:
            raise _fail(ListenUnix, "path", "is longer than the 107 bytes AF_UNIX allows")
        _check_listen_common(ListenUnix, self.name, self.backlog)


@attrs.frozen
class ListenSocket(Listen):
    kind: ClassVar[str] = "socket"
    sock: _socket.socket
    name: str | None = None

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.sock, _socket.socket):
            raise InvalidSpecType(
                f"ListenSocket.sock: expected a socket.socket, got {type(self.sock).__name__}"
            )
        if self.sock.fileno() < 0:
            raise _fail(ListenSocket, "sock", "is closed")
        if self.sock.type != _socket.SOCK_STREAM:
            raise _fail(ListenSocket, "sock", "must be a stream (SOCK_STREAM) socket")
        _check_listen_common(ListenSocket, self.name, 1)


# --------------------------------------------------------------------------- leaves


def _argv(value: object) -> tuple[str, ...]:
    if isinstance(value, str | bytes):
        raise InvalidSpecType(
            "ProcessChild.argv: expected a list of strings, got a single string; "
            "split it (shlex.split) or wrap it in a list"
        )
    if not isinstance(value, Sequence):
        raise InvalidSpecType(
            f"ProcessChild.argv: expected a list of strings, got {type(value).__name__}"
        )
    argv = tuple(value)
    if not argv:
        raise InvalidSpec("ProcessChild.argv: must not be empty")
    for i, arg in enumerate(argv):
        if not isinstance(arg, str):
            raise InvalidSpecType(
                f"ProcessChild.argv[{i}]: expected a string, got {type(arg).__name__}"
            )
        if "\0" in arg:
            raise InvalidSpec(f"ProcessChild.argv[{i}]: must not contain NUL bytes")
    if not argv[0]:
        raise InvalidSpec("ProcessChild.argv[0]: the executable must not be empty")
    return argv


def _env(value: object) -> Mapping[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidSpecType(f"ProcessChild.env: expected a mapping, got {type(value).__name__}")
    env: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidSpec(f"ProcessChild.env: invalid variable name {key!r}")
        if not isinstance(val, str):
            raise InvalidSpecType(
                f"ProcessChild.env[{key!r}]: expected a string, got {type(val).__name__}"
            )
        if "\0" in val:
            raise InvalidSpec(f"ProcessChild.env[{key!r}]: must not contain NUL bytes")
        env[key] = val
    return _FrozenDict(env)


class _FrozenDict(Mapping[str, str]):
    """A read-only mapping that hashes by content (for frozen specs)."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, str]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    def __repr__(self) -> str:
        return repr(self._data)


_DEFAULT_READY: Final = ReadyOnSpawn()
_INHERIT: Final = OutputInherit()


def _listen_tuple(value: Iterable[Listen]) -> tuple[Listen, ...]:
    return tuple(value)


_SUCCESS_ONLY: Final = frozenset({0})


def _code_set(value: Iterable[int]) -> frozenset[int]:
    codes = frozenset(value)
    return _SUCCESS_ONLY if codes == _SUCCESS_ONLY else codes  # the usual one, shared


def _signal_number(value: object) -> _signal.Signals:
    if isinstance(value, str):
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            return _signal.Signals[name]
        except KeyError:
            raise InvalidSpec(f"ProcessChild.stop_signal: unknown signal {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecType("ProcessChild.stop_signal: expected a signal")
    try:
        return _signal.Signals(value)
    except ValueError:
        raise InvalidSpec(f"ProcessChild.stop_signal: unknown signal {value!r}") from None


@attrs.frozen(kw_only=True, init=False)
class ProcessChild:
    """An OS process leaf.

    Args:
        argv: The program and its arguments (no shell is involved).
        env: Variables added to (or overriding) the supervisor's environment.
        cwd: Working directory; ``None`` keeps the supervisor's.
        ready: The readiness protocol (default :meth:`Ready.on_spawn`).
        startup_timeout: Seconds allowed to become ready; then it is a start failure.
        stop_signal: Sent to the child's whole process group to stop it.
        stop_timeout: Seconds to wait after ``stop_signal`` before SIGKILL.
        stdout: Where stdout goes (:class:`Output`), default inherit.
        stderr: Where stderr goes (:class:`Output`), default inherit.
        listen: Listening sockets owned by the supervisor and passed to the child.
        success_exit_codes: Exit codes that count as a normal exit (default ``(0,)``).
    """

    kind: ClassVar[str] = "process"

    argv: tuple[str, ...] = attrs.field(converter=_argv)
    env: Mapping[str, str] | None = attrs.field(default=None, converter=_env)
    cwd: str | None = None
    ready: Ready = attrs.field(factory=ReadyOnSpawn)
    startup_timeout: float = 30.0
    stop_signal: _signal.Signals = attrs.field(default=_signal.SIGTERM, converter=_signal_number)
    stop_timeout: float = 10.0
    stdout: Output = attrs.field(factory=OutputInherit)
    stderr: Output = attrs.field(factory=OutputInherit)
    listen: tuple[Listen, ...] = attrs.field(default=(), converter=_listen_tuple)
    success_exit_codes: frozenset[int] = attrs.field(default=_SUCCESS_ONLY, converter=_code_set)

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        ready: Ready = _DEFAULT_READY,
        startup_timeout: float = 30.0,
        stop_signal: int | str = _signal.SIGTERM,
        stop_timeout: float = 10.0,
        stdout: Output = _INHERIT,
        stderr: Output = _INHERIT,
        listen: Iterable[Listen] = (),
        success_exit_codes: Iterable[int] = (0,),
    ) -> None:
        self.__attrs_init__(
            argv=argv,
            env=env,
            cwd=cwd,
            ready=ready,
            startup_timeout=startup_timeout,
            stop_signal=stop_signal,
            stop_timeout=stop_timeout,
            stdout=stdout,
            stderr=stderr,
            listen=listen,
            success_exit_codes=success_exit_codes,
        )

    def __attrs_post_init__(self) -> None:
        cls = ProcessChild
        if self.cwd is not None and (not isinstance(self.cwd, str) or not self.cwd):
            raise _fail(cls, "cwd", f"must be a non-empty string or None, got {self.cwd!r}")
        if not isinstance(self.ready, Ready) or type(self.ready) is Ready:
            raise InvalidSpecType(
                "ProcessChild.ready: expected Ready.on_spawn(), Ready.notify(), ..."
            )
        for field in ("stdout", "stderr"):
            value = getattr(self, field)
            if not isinstance(value, Output) or type(value) is Output:
                raise InvalidSpecType(
                    f"ProcessChild.{field}: expected Output.inherit(), Output.lines(...), ..."
                )
        object.__setattr__(
            self, "startup_timeout", _positive(cls, "startup_timeout", self.startup_timeout)
        )
        object.__setattr__(
            self, "stop_timeout", _non_negative(cls, "stop_timeout", self.stop_timeout)
        )
        for i, sock in enumerate(self.listen):
            if not isinstance(sock, Listen) or type(sock) is Listen:
                raise InvalidSpecType(
                    f"ProcessChild.listen[{i}]: expected Listen.tcp(...), Listen.unix(...) "
                    "or Listen.socket(...)"
                )
        for code in self.success_exit_codes:
            if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
                raise _fail(
                    cls, "success_exit_codes", f"codes must be ints in 0..255, got {code!r}"
                )
        if isinstance(self.ready, ReadyAfter) and self.ready.seconds >= self.startup_timeout:
            raise _fail(
                cls,
                "ready",
                f"Ready.after({self.ready.seconds:g}) can never happen within "
                f"startup_timeout={self.startup_timeout:g}; raise startup_timeout",
            )
        if isinstance(self.ready, ReadyFd) and 3 <= self.ready.n < 3 + len(self.listen):
            raise _fail(
                cls,
                "ready",
                f"fd {self.ready.n} collides with the listening sockets passed at fds "
                f"3..{2 + len(self.listen)}",
            )

    def _make_runner(self, context: RunnerContext) -> Runner:
        from ._process import ProcessRunner

        return ProcessRunner(self, context)


@attrs.frozen(init=False, eq=False)
class TaskChild:
    """A Trio task leaf: ``async_fn(*args)`` runs in the supervisor's nursery.

    Returning is a normal exit; raising is an abnormal one. If ``async_fn`` takes a
    ``task_status`` keyword argument it is started like ``nursery.start`` and is ready
    when it calls ``task_status.started()``; otherwise it is ready at once. A task
    that is not ready within ``startup_timeout`` seconds (keyword-only, default 30)
    is cancelled, and that is a start failure, as for a process child.
    """

    kind: ClassVar[str] = "task"

    async_fn: Callable[..., Awaitable[object]]
    args: tuple[Any, ...]
    uses_task_status: bool
    startup_timeout: float

    def __init__(
        self,
        async_fn: Callable[..., Awaitable[object]],
        *args: Any,
        startup_timeout: float = 30.0,
    ) -> None:
        if not callable(async_fn):
            raise InvalidSpecType("TaskChild.async_fn: must be an async function")
        params: Mapping[str, Any]
        try:
            params = inspect.signature(async_fn).parameters
        except (TypeError, ValueError):
            params = {}
        self.__attrs_init__(
            async_fn=async_fn,
            args=args,
            uses_task_status="task_status" in params,
            startup_timeout=_positive(TaskChild, "startup_timeout", startup_timeout),
        )

    def _make_runner(self, context: RunnerContext) -> Runner:
        from ._task import TaskRunner

        return TaskRunner(self, context)


# --------------------------------------------------------------------------- tree


_NAME = re.compile(r"^[^/\x00-\x1f\x7f]{1,255}$")
NAME_RULE: Final = "1 to 255 characters, no '/' and no control characters"


def _check_name(cls: type, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidSpecType(f"{cls.__name__}.name: expected a string, got {type(value).__name__}")
    if not _NAME.match(value) or value in {".", ".."}:
        raise _fail(cls, "name", f"{value!r} is not a valid name ({NAME_RULE})")
    return value


@attrs.frozen
class ChildSpec:
    """One child of a supervisor.

    Args:
        name: Unique among its siblings.
        child: A :class:`ProcessChild`, :class:`TaskChild` or :class:`SupervisorSpec`.
        restart: When it is restarted (default :attr:`Restart.PERMANENT`).
        significant: Its exit counts toward the parent's ``auto_shutdown``
            (only for transient or temporary children).
        backoff: Overrides the supervisor's backoff for this child.
    """

    name: str
    child: Any
    restart: Restart = attrs.field(default=Restart.PERMANENT, kw_only=True)
    significant: bool = attrs.field(default=False, kw_only=True)
    backoff: Backoff | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _check_name(ChildSpec, self.name)
        if not hasattr(self.child, "_make_runner"):
            raise InvalidSpecType(
                f"ChildSpec.child ({self.name!r}): expected ProcessChild, TaskChild or "
                f"SupervisorSpec, got {type(self.child).__name__}"
            )
        object.__setattr__(self, "restart", _enum(ChildSpec, "restart", Restart, self.restart))
        if not isinstance(self.significant, bool):
            raise InvalidSpecType("ChildSpec.significant: expected a bool")
        if self.significant and self.restart is Restart.PERMANENT:
            raise _fail(
                ChildSpec,
                "significant",
                f"child {self.name!r} is permanent; only transient or temporary children "
                "can be significant",
            )
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            raise InvalidSpecType("ChildSpec.backoff: expected a Backoff or None")

    @property
    def kind(self) -> str:
        """``"process"``, ``"task"`` or ``"supervisor"``."""
        return str(self.child.kind)


def _children(value: Iterable[ChildSpec]) -> tuple[ChildSpec, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class SupervisorSpec:
    """A supervisor: a strategy, limits, and an ordered list of children.

    Args:
        name: The supervisor's name (the root of event paths).
        strategy: See :class:`Strategy` (default ONE_FOR_ONE).
        intensity: See :class:`Intensity` (default 5 restarts in 60 s).
        backoff: See :class:`Backoff` (default 1 s doubling up to 30 s).
        children: Started in this order, stopped in reverse.
        auto_shutdown: See :class:`AutoShutdown` (default NEVER).
    """

    kind: ClassVar[str] = "supervisor"

    name: str = "supervisor"
    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: Intensity = attrs.field(factory=Intensity)
    backoff: Backoff = attrs.field(factory=Backoff)
    children: tuple[ChildSpec, ...] = attrs.field(default=(), converter=_children)
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER

    def __attrs_post_init__(self) -> None:
        cls = SupervisorSpec
        _check_name(cls, self.name)
        object.__setattr__(self, "strategy", _enum(cls, "strategy", Strategy, self.strategy))
        object.__setattr__(
            self, "auto_shutdown", _enum(cls, "auto_shutdown", AutoShutdown, self.auto_shutdown)
        )
        if not isinstance(self.intensity, Intensity):
            raise InvalidSpecType("SupervisorSpec.intensity: expected an Intensity")
        if not isinstance(self.backoff, Backoff):
            raise InvalidSpecType("SupervisorSpec.backoff: expected a Backoff")
        seen: set[str] = set()
        for i, child in enumerate(self.children):
            if not isinstance(child, ChildSpec):
                raise InvalidSpecType(
                    f"SupervisorSpec.children[{i}]: expected a ChildSpec, "
                    f"got {type(child).__name__}"
                )
            if child.name in seen:
                raise _fail(cls, f"children[{i}]", f"duplicate child name {child.name!r}")
            seen.add(child.name)
            self.check_child(child, index=i)

    def check_child(self, child: ChildSpec, *, index: int | None = None) -> None:
        """Raise :class:`InvalidSpec` if ``child`` cannot belong to this supervisor."""
        where = f"children[{index}]" if index is not None else "children"
        if child.significant and self.auto_shutdown is AutoShutdown.NEVER:
            raise _fail(
                SupervisorSpec,
                where,
                f"child {child.name!r} is significant but auto_shutdown is 'never'; "
                "set auto_shutdown to any_significant or all_significant",
            )

    def _make_runner(self, context: RunnerContext) -> Runner:
        from ._supervisor import SubtreeRunner

        return SubtreeRunner(self, context)
