"""The daemon's on-disk footprint: home directory, pid lock, and persisted intent.

Typical start-up, all inside the daemon's one ``async with`` block::

    home = Home.from_env()
    await trio.to_thread.run_sync(home.ensure)
    async with open_pid_lock(home):                       # one daemon per home
        loaded = await trio.to_thread.run_sync(load_state, home)
        store = StateStore(home, loaded)
        async with open_persistence(store, snapshot):      # the only writer
            ...
            store.mark_dirty()                             # after every change
            await store.flush()                            # before acknowledging it
            print(store.health())                          # persistence: ok

Blocking functions (``Home.ensure``, ``acquire_pid_lock``, ``read_lock_info``,
``load_state``, ``remove_stale_socket``) are meant for worker threads;
``open_pid_lock`` and the writer do that themselves.
"""

from __future__ import annotations

from ._codec import SCHEMA_VERSION as SCHEMA_VERSION
from ._errors import CorruptStateFile as CorruptStateFile
from ._errors import DaemonAlreadyRunning as DaemonAlreadyRunning
from ._errors import HomeUnavailable as HomeUnavailable
from ._errors import NewerStateSchema as NewerStateSchema
from ._errors import SocketInUse as SocketInUse
from ._errors import SocketPathTooLong as SocketPathTooLong
from ._errors import StateError as StateError
from ._errors import UnsafeHome as UnsafeHome
from ._fs import FileSystem as FileSystem
from ._fs import Step as Step
from ._home import AF_UNIX_PATH_MAX as AF_UNIX_PATH_MAX
from ._home import Home as Home
from ._home import remove_stale_socket as remove_stale_socket
from ._identity import ProcessIdentity as ProcessIdentity
from ._load import LoadResult as LoadResult
from ._load import StateSource as StateSource
from ._load import load_state as load_state
from ._lock import LockInfo as LockInfo
from ._lock import PidLock as PidLock
from ._lock import acquire_pid_lock as acquire_pid_lock
from ._lock import open_pid_lock as open_pid_lock
from ._lock import read_lock_info as read_lock_info
from ._records import AppMode as AppMode
from ._records import AppState as AppState
from ._records import AppStatus as AppStatus
from ._records import DaemonState as DaemonState
from ._records import DesiredStatus as DesiredStatus
from ._records import ProcessState as ProcessState
from ._store import PersistenceHealth as PersistenceHealth
from ._store import PersistenceStatistics as PersistenceStatistics
from ._store import PersistenceStatus as PersistenceStatus
from ._store import StateStore as StateStore
from ._store import open_persistence as open_persistence
from ._store import open_state_writer as open_state_writer
from ._store import run_persistence as run_persistence

__all__ = [
    # home directory
    "AF_UNIX_PATH_MAX",
    "Home",
    "remove_stale_socket",
    # pid lock
    "LockInfo",
    "PidLock",
    "ProcessIdentity",
    "acquire_pid_lock",
    "open_pid_lock",
    "read_lock_info",
    # records
    "AppMode",
    "AppState",
    "AppStatus",
    "DaemonState",
    "DesiredStatus",
    "ProcessState",
    # loading
    "SCHEMA_VERSION",
    "LoadResult",
    "StateSource",
    "load_state",
    # writing
    "FileSystem",
    "PersistenceHealth",
    "PersistenceStatistics",
    "PersistenceStatus",
    "StateStore",
    "Step",
    "open_persistence",
    "open_state_writer",
    "run_persistence",
    # errors
    "CorruptStateFile",
    "DaemonAlreadyRunning",
    "HomeUnavailable",
    "NewerStateSchema",
    "SocketInUse",
    "SocketPathTooLong",
    "StateError",
    "UnsafeHome",
]
