"""The public surface of omnitron.state, pinned so changes to it are deliberate."""

from __future__ import annotations

import builtins
import os

import pytest

import omnitron.state
import omnitron.state.testing
from omnitron.errors import OmnitronError
from omnitron.state import (
    CorruptStateFile,
    DaemonAlreadyRunning,
    HomeUnavailable,
    NewerStateSchema,
    SocketInUse,
    SocketPathTooLong,
    StateError,
    UnsafeHome,
)


def test_exported_names() -> None:
    assert sorted(omnitron.state.__all__) == sorted(
        [
            "AF_UNIX_PATH_MAX",
            "Home",
            "remove_stale_socket",
            "LockInfo",
            "PidLock",
            "ProcessIdentity",
            "acquire_pid_lock",
            "open_pid_lock",
            "read_lock_info",
            "AppMode",
            "AppState",
            "AppStatus",
            "DaemonState",
            "DesiredStatus",
            "ProcessState",
            "SCHEMA_VERSION",
            "LoadResult",
            "StateSource",
            "load_state",
            "FileSystem",
            "PersistenceHealth",
            "PersistenceStatistics",
            "PersistenceStatus",
            "StateStore",
            "Step",
            "open_persistence",
            "open_state_writer",
            "run_persistence",
            "CorruptStateFile",
            "DaemonAlreadyRunning",
            "HomeUnavailable",
            "NewerStateSchema",
            "SocketInUse",
            "SocketPathTooLong",
            "StateError",
            "UnsafeHome",
        ]
    )
    for name in omnitron.state.__all__:
        assert getattr(omnitron.state, name) is not None


def test_testing_exports() -> None:
    assert sorted(omnitron.state.testing.__all__) == [
        "Fault",
        "FaultyFileSystem",
        "MemoryFileSystem",
    ]


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (HomeUnavailable, OSError),
        (UnsafeHome, PermissionError),
        (DaemonAlreadyRunning, RuntimeError),
        (CorruptStateFile, ValueError),
        (NewerStateSchema, ValueError),
    ],
)
def test_errors_derive_from_omnitron_error_and_a_builtin(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, StateError)
    assert issubclass(error, OmnitronError)
    assert issubclass(error, builtin)
    assert getattr(builtins, builtin.__name__) is builtin


def test_socket_in_use_is_the_rpc_layers_one_class() -> None:
    """One definition: the state package re-exports the RPC layer's error for a live socket."""
    import omnitron.rpc

    assert SocketInUse is omnitron.rpc.SocketInUse
    assert issubclass(SocketInUse, omnitron.rpc.RpcError)
    assert issubclass(SocketInUse, OSError)
    assert not issubclass(SocketInUse, StateError)
    err = SocketInUse("/h/daemon.sock", "a process is accepting connections on /h/daemon.sock")
    assert str(err) == "a process is accepting connections on /h/daemon.sock"
    assert err.path == "/h/daemon.sock"
    assert str(SocketInUse("/s")) == (
        "another server is already listening on /s; refusing to replace it"
    )


def test_socket_path_too_long_is_the_rpc_layers_one_class() -> None:
    """One definition: the home check and the socket client raise the same class."""
    import omnitron.rpc
    from omnitron.rpc import _errors

    assert SocketPathTooLong is omnitron.rpc.SocketPathTooLong is _errors.SocketPathTooLong
    assert issubclass(SocketPathTooLong, omnitron.rpc.RpcError)
    assert issubclass(SocketPathTooLong, ValueError)
    assert not issubclass(SocketPathTooLong, StateError)
    err = SocketPathTooLong("/h/daemon.sock", 108, 107)
    assert err.path == "/h/daemon.sock"
    assert err.length == 108
    assert str(err) == (
        "socket path /h/daemon.sock is 108 bytes long, but a Unix socket allows at most 107; "
        "set OMNITRON_HOME to a shorter directory"
    )


def test_os_errors_keep_their_message_and_errno() -> None:
    err = HomeUnavailable(
        "cannot create lock file /x: Read-only file system", errno=30, filename="/x"
    )
    assert str(err) == "cannot create lock file /x: Read-only file system"
    assert err.errno == 30
    assert err.filename == "/x"


def test_daemon_already_running_message() -> None:
    assert str(DaemonAlreadyRunning(4242)) == "daemon already running (pid 4242)"
    err = DaemonAlreadyRunning(7, since="2025-01-01T00:00:00Z", path="/h/daemon.pid")
    assert str(err).startswith("daemon already running (pid 7), started 2025-01-01T00:00:00Z")
    assert err.pid == 7
    assert str(DaemonAlreadyRunning(None)) == "daemon already running (pid unknown)"


def test_an_unreadable_proc_entry_is_no_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors (EMFILE), a process is not provably anyone: no identity, no raise."""
    import errno

    from omnitron.state import ProcessIdentity

    real_open = os.open

    def no_fds(path: str, *args: int, **kwargs: int) -> int:
        if str(path).endswith("/stat"):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_fds)
    assert ProcessIdentity.of(os.getpid()) is None
