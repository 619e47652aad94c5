"""The omnitron control plane: msgpack-rpc over a Unix socket (TCP/WebSocket later).

Server side: build a :class:`Dispatcher`, register methods with a declared
:class:`Role`, and serve it with :func:`open_unix_server` / :func:`serve_unix`.
Client side: :func:`connect_unix`, :func:`connect_url` (``unix://`` or
``tls://HOST:PORT``) and :func:`connect_remote` (an alias of ``remotes.toml``),
async on Trio; or their blocking twins in :mod:`omnitron.rpc.sync_client`
(``connect_unix_sync``, ``connect_url_sync``, ``connect_remote_sync``: no Trio
import, the CLI's fast path). Errors travel as ``{"code", "message"}`` maps and are raised as
:class:`RemoteError` subclasses on the calling side.

Names are imported lazily, so ``import omnitron.rpc.sync_client`` does not pay for
Trio or attrs.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._client import Notifications as Notifications
    from ._client import RpcClient as RpcClient
    from ._client import connect_unix as connect_unix
    from ._connect import connect_remote as connect_remote
    from ._connect import connect_url as connect_url
    from ._dispatch import Call as Call
    from ._dispatch import Dispatcher as Dispatcher
    from ._dispatch import Handler as Handler
    from ._dispatch import MethodInfo as MethodInfo
    from ._dispatch import Peer as Peer
    from ._dispatch import Role as Role
    from ._errors import Busy as Busy
    from ._errors import Conflict as Conflict
    from ._errors import ConnectionLost as ConnectionLost
    from ._errors import DaemonNotRunning as DaemonNotRunning
    from ._errors import DaemonUnreachable as DaemonUnreachable
    from ._errors import ErrorCode as ErrorCode
    from ._errors import Forbidden as Forbidden
    from ._errors import InsecureSocketPath as InsecureSocketPath
    from ._errors import InternalError as InternalError
    from ._errors import InvalidParams as InvalidParams
    from ._errors import InvalidRequest as InvalidRequest
    from ._errors import MethodNotFound as MethodNotFound
    from ._errors import NotFound as NotFound
    from ._errors import ProtocolError as ProtocolError
    from ._errors import RemoteError as RemoteError
    from ._errors import RemoteTimeout as RemoteTimeout
    from ._errors import RpcError as RpcError
    from ._errors import RpcTimeout as RpcTimeout
    from ._errors import SocketInUse as SocketInUse
    from ._errors import SocketPathTooLong as SocketPathTooLong
    from ._errors import Unauthenticated as Unauthenticated
    from ._errors import Unavailable as Unavailable
    from ._params import Len as Len
    from ._params import Match as Match
    from ._params import Name as Name
    from ._params import ParamInfo as ParamInfo
    from ._params import Range as Range
    from ._params import Text as Text
    from ._protocol import ErrorInfo as ErrorInfo
    from ._protocol import Message as Message
    from ._protocol import Notification as Notification
    from ._protocol import Request as Request
    from ._protocol import Response as Response
    from ._server import RpcServer as RpcServer
    from ._server import ServerOptions as ServerOptions
    from ._server import ServerStatistics as ServerStatistics
    from ._stream import NotificationStream as NotificationStream
    from ._unix import open_unix_server as open_unix_server
    from ._unix import serve_unix as serve_unix
    from ._wire import NAME_MAX as NAME_MAX
    from ._wire import TEXT_MAX as TEXT_MAX
    from ._wire import Encoded as Encoded
    from ._wire import Limits as Limits

__all__ = [
    # serving
    "Dispatcher",
    "Handler",
    "Role",
    "Call",
    "Peer",
    "MethodInfo",
    "NotificationStream",
    "serve_unix",
    "open_unix_server",
    "RpcServer",
    "ServerOptions",
    "ServerStatistics",
    # params
    "Name",
    "Text",
    "Len",
    "Range",
    "Match",
    "ParamInfo",
    # calling
    "connect_unix",
    "connect_url",
    "connect_remote",
    "RpcClient",
    "Notifications",
    # the wire
    "Limits",
    "Encoded",
    "NAME_MAX",
    "TEXT_MAX",
    "Request",
    "Response",
    "Notification",
    "ErrorInfo",
    "Message",
    # errors
    "ErrorCode",
    "RpcError",
    "ProtocolError",
    "RemoteError",
    "InvalidRequest",
    "MethodNotFound",
    "InvalidParams",
    "Unauthenticated",
    "Forbidden",
    "NotFound",
    "Conflict",
    "Busy",
    "RemoteTimeout",
    "Unavailable",
    "InternalError",
    "DaemonNotRunning",
    "DaemonUnreachable",
    "ConnectionLost",
    "RpcTimeout",
    "SocketInUse",
    "InsecureSocketPath",
    "SocketPathTooLong",
]

_HOME = {
    "._client": ("Notifications", "RpcClient", "connect_unix"),
    "._connect": ("connect_remote", "connect_url"),
    "._dispatch": ("Call", "Dispatcher", "Handler", "MethodInfo", "Peer", "Role"),
    "._errors": (
        "Busy",
        "Conflict",
        "ConnectionLost",
        "DaemonNotRunning",
        "DaemonUnreachable",
        "ErrorCode",
        "Forbidden",
        "InsecureSocketPath",
        "InternalError",
        "InvalidParams",
        "InvalidRequest",
        "MethodNotFound",
        "NotFound",
        "ProtocolError",
        "RemoteError",
        "RemoteTimeout",
        "RpcError",
        "RpcTimeout",
        "SocketInUse",
        "SocketPathTooLong",
        "Unauthenticated",
        "Unavailable",
    ),
    "._params": ("Len", "Match", "Name", "ParamInfo", "Range", "Text"),
    "._protocol": ("ErrorInfo", "Message", "Notification", "Request", "Response"),
    "._server": ("RpcServer", "ServerOptions", "ServerStatistics"),
    "._stream": ("NotificationStream",),
    "._unix": ("open_unix_server", "serve_unix"),
    "._wire": ("NAME_MAX", "TEXT_MAX", "Encoded", "Limits"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
