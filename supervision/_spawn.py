"""Spawning a child process: ``Popen`` (vfork) or ``posix_spawn`` with fd placements.

Children are started synchronously in the Trio thread, each in a new session
(its pid is its process group and session id), with every signal at its
default disposition and an empty signal mask, as systemd starts services: a
supervisor launched with ``nohup`` or as a background job has SIGHUP or SIGINT
ignored, and an ignored signal survives ``exec``, so a child inheriting it
could never be stopped by it.

The common case uses what :class:`subprocess.Popen` uses (CPython's
``_posixsubprocess.fork_exec``, with ``vfork``; it resets SIGPIPE and SIGXFSZ,
which Python itself ignores): called directly where its arguments are known
(CPython 3.11 to 3.13), with an environment the runner encodes once per slot,
else through ``Popen`` itself; signals this process
ignores are caught by a no-op handler for the instant of the spawn, so that
``exec`` resets them. Children that need file descriptors at fixed numbers
(listening sockets at 3..., ``Ready.fd(n)``), and every child while the
spawning thread blocks a signal (or is not the main thread while a signal is
ignored), use :func:`os.posix_spawn` with file actions and signal attributes,
which run no Python code between fork and exec.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import importlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final

from ._errors import SpawnError

__all__: list[str] = []

_SHELL: Final = "/bin/sh"

# Every signal a child may have a disposition for (SIGKILL and SIGSTOP have none).
_RESETTABLE: Final = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
# What Popen resets by itself (restore_signals): Python ignores these at start-up.
_POPEN_RESETS: Final = frozenset({signal.SIGPIPE, signal.SIGXFSZ})
_CHECKED: Final[tuple[int, ...]] = tuple(sorted(_RESETTABLE - _POPEN_RESETS))
# signal.getsignal converts every answer to an enum (about 1 us a call here); the
# C function answers the plain number in well under a tenth of that.
_getsignal: Callable[[int], object] = getattr(
    importlib.import_module("_signal"), "getsignal", signal.getsignal
)
_IGNORED: Final = int(signal.SIG_IGN)


def _find_fork_exec() -> Callable[..., int] | None:
    """``_posixsubprocess.fork_exec``, where its arguments are known to be those
    ``Popen`` passes in CPython 3.11 to 3.13 (23, the last one ``allow_vfork``);
    ``None`` elsewhere (``Popen`` is used then)."""
    if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 13):
        return None
    names = subprocess.Popen._execute_child.__code__.co_names  # type: ignore[attr-defined]
    if "_fork_exec" not in names or "_USE_VFORK" not in names:
        return None
    try:
        from _posixsubprocess import fork_exec
    except ImportError:
        return None
    return fork_exec


_FORK_EXEC: Final = _find_fork_exec()
_USE_VFORK: Final[bool] = bool(getattr(subprocess, "_USE_VFORK", True))


def encode_env(items: Iterable[tuple[str, str]]) -> list[bytes]:
    """``KEY=value`` entries for ``execve``, as ``Popen`` encodes an environment.

    Raises:
        ValueError: A name holds ``=``.
    """
    encoded = []
    fsencode = os.fsencode
    for key, value in items:
        name = fsencode(key)
        if b"=" in name:
            raise ValueError("illegal environment variable name")
        encoded.append(name + b"=" + fsencode(value))
    return encoded


_SHARED: dict[tuple[str, str], bytes] = {}
_SHARED_MAX: Final = 4096


def encode_env_shared(items: Iterable[tuple[str, str]]) -> list[bytes]:
    """:func:`encode_env`, each entry kept once per process (up to 4096 of them).

    For the variables slots inherit from this process's environment: the slots
    of a tree then share their bytes (about 3 KiB a slot otherwise).
    """
    encoded = []
    for item in items:
        entry = _SHARED.get(item)
        if entry is None:
            [entry] = encode_env((item,))
            if len(_SHARED) < _SHARED_MAX:
                _SHARED[item] = entry
        encoded.append(entry)
    return encoded


_CANDIDATES: dict[tuple[str, str | None], tuple[bytes, ...]] = {}


def exec_candidates(name: str, env: Mapping[str, str]) -> tuple[bytes, ...]:
    """The paths ``execve`` tries for ``name`` (the ``PATH`` of ``env``), as ``Popen``.

    Kept once per process for each name and ``PATH`` (up to 4096 of them): the
    slots running the same program share them.
    """
    key = (name, env.get("PATH"))
    found = _CANDIDATES.get(key)
    if found is not None:
        return found
    executable = os.fsencode(name)
    if os.path.dirname(executable):
        found = (executable,)
    else:
        found = tuple(os.path.join(os.fsencode(d), executable) for d in os.get_exec_path(env))
    if len(_CANDIDATES) < _SHARED_MAX:
        _CANDIDATES[key] = found
    return found


def _child_error(data: bytes, argv0: str, cwd: str | None) -> BaseException:
    """The exception a child reported before ``exec`` (``Popen``'s error pipe format)."""
    try:
        name, hex_errno, message_bytes = data.split(b":", 2)
        message = message_bytes.decode()
    except ValueError:
        return subprocess.SubprocessError(f"Bad exception data from child: {data!r}")
    kind = getattr(builtins, name.decode("ascii", "replace"), subprocess.SubprocessError)
    if not (isinstance(kind, type) and issubclass(kind, BaseException)):
        kind = subprocess.SubprocessError
    if issubclass(kind, OSError) and hex_errno:
        code = int(hex_errno, 16)
        # Before exec: "noexec" until 3.12 (from chdir), "noexec:chdir" from 3.13,
        # where a bare "noexec" is another step before exec (no file name then).
        filename: str | None = argv0
        if message == "noexec:chdir" or (message == "noexec" and sys.version_info < (3, 13)):
            filename = cwd
        elif message == "noexec":
            filename = None
        return kind(code, os.strerror(code) if code else "", filename)
    return kind(message)


def _fork_exec(
    fork_exec: Callable[..., int],
    argv: Sequence[str],
    executables: Sequence[bytes],
    env_list: list[bytes],
    cwd: str | None,
    stdin: int,
    stdout: int | None,
    stderr: int | None,
) -> int:
    """What ``Popen(argv, env=..., cwd=..., stdin/stdout/stderr=fds,
    start_new_session=True, close_fds=True)`` does, without its per-spawn Python
    work (the environment encoded anew, the object, its handles and pipes)."""
    errpipe_read, errpipe_write = os.pipe()
    try:
        low = []
        while errpipe_write < 3:  # as Popen: never at 0, 1 or 2 (the child's stdio)
            low.append(errpipe_write)
            errpipe_write = os.dup(errpipe_write)
        for fd in low:
            os.close(fd)
        try:
            pid = fork_exec(
                list(argv), executables, True, (errpipe_write,), cwd, env_list,
                stdin, -1, -1, -1 if stdout is None else stdout,
                -1, -1 if stderr is None else stderr,
                errpipe_read, errpipe_write,
                True, True, -1, None, None, None, -1, None, _USE_VFORK,
            )  # fmt: skip
        finally:
            os.close(errpipe_write)
        # The child closes its end at exec (close-on-exec), or reports its error.
        data = bytearray()
        while True:
            part = os.read(errpipe_read, 50000)
            data += part
            if not part or len(data) > 50000:
                break
    finally:
        os.close(errpipe_read)
    if data:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        raise _child_error(bytes(data), argv[0], cwd)
    return pid


def _ignored_signals() -> list[int] | None:
    """The signals to stop ignoring around a ``Popen``, or ``None`` if it cannot do.

    A vfork child starts with this thread's signal mask and this process's
    ignored signals (``nohup`` ignores SIGHUP, a background job SIGINT and
    SIGQUIT); caught signals are no concern, ``exec`` resets them. ``None``
    when this thread blocks a signal, or when a signal is ignored and this is
    not the main thread (only it may change a disposition).
    """
    if signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        return None
    getsignal = _getsignal
    ignored = [sig for sig in _CHECKED if getsignal(sig) == _IGNORED]
    if ignored and threading.current_thread() is not threading.main_thread():
        return None
    return ignored


def _discard(signum: int, frame: object) -> None:
    """Catches an ignored signal for the instant of a spawn: still ignored here,
    and reset to its default by the child's ``exec``."""


@contextlib.contextmanager
def _caught(signals: Sequence[int]) -> Iterator[None]:
    """Turn ignored ``signals`` into caught-and-discarded ones for the block."""
    changed: list[int] = []
    try:
        for sig in signals:
            signal.signal(sig, _discard)
            changed.append(sig)
        yield
    finally:
        for sig in changed:
            signal.signal(sig, signal.SIG_IGN)


def _inheritable_fds() -> list[int]:
    """This process's fds above 2 without close-on-exec (inherited from our parent)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = [str(fd) for fd in range(3, 1024)]
    fds = []
    for name in names:
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    fds.append(fd)
    return fds


def _file_actions(placements: Mapping[int, int]) -> list[tuple[int, ...]]:
    """posix_spawn actions putting each source fd at its target, closing everything else.

    Sources go first to temporaries above every number involved, so no source is
    overwritten before it has been copied; ``dup2`` clears close-on-exec on the
    targets, and fds inherited without close-on-exec are closed.
    """
    floor = max([2, *placements, *placements.values()]) + 1
    temps = {target: floor + i for i, target in enumerate(placements)}
    actions: list[tuple[int, ...]] = []
    for target, source in placements.items():
        actions.append((os.POSIX_SPAWN_DUP2, source, temps[target]))
    for target, temp in temps.items():
        actions.append((os.POSIX_SPAWN_DUP2, temp, target))
    for temp in temps.values():
        actions.append((os.POSIX_SPAWN_CLOSE, temp))
    for fd in _inheritable_fds():
        if fd not in placements:
            actions.append((os.POSIX_SPAWN_CLOSE, fd))
    return actions


def _check_format(path: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return  # unreadable but executable: let the kernel decide
    if not (magic.startswith(b"#!") or magic == b"\x7fELF"):
        raise OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC), path)


def _resolve_executable(name: str, env: Mapping[str, str], cwd: str | None) -> str:
    """Find ``name`` as ``execvpe`` in the child would (PATH of the child's env).

    Raises the ``OSError`` the exec would have raised, naming ``name``.
    """
    if cwd is not None and not os.path.isdir(cwd):
        err = errno.ENOENT if not os.path.exists(cwd) else errno.ENOTDIR
        raise OSError(err, os.strerror(err), cwd)
    if "/" in name:
        candidates = [name]
    else:
        candidates = [
            os.path.join(d or ".", name) for d in env.get("PATH", os.defpath).split(os.pathsep)
        ]
    denied: str | None = None
    for candidate in candidates:
        full = os.path.join(cwd, candidate) if cwd is not None else candidate
        if not os.path.exists(full):
            continue
        if os.path.isfile(full) and os.access(full, os.X_OK):
            _check_format(full)
            return full
        denied = denied or full
    if denied is not None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _shim(argv: Sequence[str], *, cwd: str | None, listen_pid: bool) -> list[str]:
    """A ``/bin/sh -c`` prefix doing what must happen in the child after fork.

    ``LISTEN_PID`` must be the child's pid, known only after fork: ``$$`` is the
    shell's pid and ``exec`` keeps it. ``posix_spawn`` has no ``chdir`` action,
    so the shell also changes directory when needed.
    """
    steps = []
    if cwd is not None:
        steps.append('cd -- "$0" || exit 127')
    if listen_pid:
        steps.append("LISTEN_PID=$$; export LISTEN_PID")
    if cwd is not None:
        steps.append('exec "$@"')
        return [_SHELL, "-c", "; ".join(steps), cwd, *argv]
    steps.append('exec "$0" "$@"')
    return [_SHELL, "-c", "; ".join(steps), *argv]


def _spawn_error(
    path: tuple[str, ...], exc: OSError, argv0: str, env: Mapping[str, str], cwd: str | None
) -> SpawnError:
    code = exc.errno
    filename = exc.filename if isinstance(exc.filename, str) else None
    about_cwd = cwd is not None and filename == cwd and argv0 != cwd
    if code == errno.ENOENT and about_cwd:
        reason = f"working directory not found: {cwd}"
    elif code == errno.ENOTDIR and about_cwd:
        reason = f"working directory is not a directory: {cwd}"
    elif code == errno.EACCES and about_cwd:
        reason = f"permission denied entering working directory {cwd}"
    elif code == errno.ENOENT:
        if "/" in argv0:
            where = argv0 if cwd is None or os.path.isabs(argv0) else os.path.join(cwd, argv0)
            if os.path.exists(where):
                reason = f"interpreter not found for {argv0} (check its #! line)"
            else:
                reason = f"executable not found: {argv0}"
        else:
            search = env.get("PATH", os.defpath)
            reason = f"executable not found: {argv0} (PATH={search})"
    elif code == errno.EACCES:
        reason = f"permission denied executing {argv0}"
    elif code == errno.ENOEXEC:
        reason = (
            f"exec format error: {argv0} (add a shebang line or run it through its interpreter)"
        )
    elif code == errno.EAGAIN:
        reason = "fork failed: resource temporarily unavailable"
    elif code == errno.EMFILE:
        reason = "too many open files"
    elif code == errno.ENFILE:
        reason = "too many open files in the system"
    elif code == errno.ENOMEM:
        reason = "fork failed: out of memory"
    else:
        reason = f"cannot start {argv0}: {exc.strerror or exc}"
    return SpawnError(path, reason, errno=code, filename=filename)


def spawn_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    stdin: int,
    stdout: int | None,
    stderr: int | None,
    extra_fds: Mapping[int, int],
    listen_pid: bool,
    env_list: list[bytes] | None = None,
    executables: Sequence[bytes] | None = None,
) -> int:
    """Start ``argv`` in a new session; its pid. The caller reaps it (by pid).

    ``stdout``/``stderr`` of ``None`` are inherited. ``extra_fds`` maps fd
    numbers in the child to fds here; ``listen_pid`` sets ``LISTEN_PID`` in the
    child (socket activation). The child starts with every signal at its
    default disposition and none blocked, whatever this process ignores.
    ``env_list`` and ``executables`` are ``env`` encoded (:func:`encode_env`)
    and ``argv[0]`` looked up (:func:`exec_candidates`) ahead, by a caller that
    spawns the same program again and again.

    Raises:
        OSError: The OS refused (see :func:`_spawn_error` for the message).
    """
    ignored = None if extra_fds else _ignored_signals()
    if ignored is not None:
        fork_exec = _FORK_EXEC
        if fork_exec is not None:
            if env_list is None:
                env_list = encode_env(env.items())
            if executables is None:
                executables = exec_candidates(argv[0], env)
            with _caught(ignored):
                return _fork_exec(
                    fork_exec, argv, executables, env_list, cwd, stdin, stdout, stderr
                )
        with _caught(ignored):
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
                close_fds=True,
            )
        # The runner reaps this pid itself (pidfd, then waitpid by pid). A
        # returncode keeps Popen from ever waiting on it (its __del__ would
        # otherwise queue it for subprocess._cleanup(), which could reap it)
        # and from warning that it is still running.
        popen.returncode = 0
        return popen.pid
    executable = _resolve_executable(argv[0], env, cwd)
    args: list[str] = list(argv)
    if listen_pid or cwd is not None:
        args = _shim(args, cwd=cwd, listen_pid=listen_pid)
        executable = _SHELL
    placements = {0: stdin}
    if stdout is not None:
        placements[1] = stdout
    if stderr is not None:
        placements[2] = stderr
    placements.update(extra_fds)
    return os.posix_spawn(
        executable,
        args,
        env,
        file_actions=_file_actions(placements),
        setsid=True,
        setsigdef=_RESETTABLE,
        setsigmask=(),
    )
