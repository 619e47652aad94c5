"""The method registry: roles, params, and turning a request into a response.

Every method is registered with a declared :class:`Role` (a required argument, so a
method without one cannot exist) and its params are compiled from the handler's
signature (:mod:`._params`). Lookup is by exact name in a dict, never by attribute
traversal. :meth:`Dispatcher.dispatch` never raises an ``Exception``: unexpected
handler errors become ``INTERNAL_ERROR`` replies with a correlation id, and the
traceback goes to the daemon's log only.

A method may also have an *inline* handler (:meth:`Dispatcher.set_inline`): a plain
function the connection runs in its reading task, without a task of its own, for
calls that answer at once (``daemon.ping``) or that only hand the request on and
are answered by a callback (``daemon.exec``, answered by the worker link's
reader). :meth:`Dispatcher.start` runs it with the same checks as
:meth:`Dispatcher.dispatch`; whenever the inline handler cannot do the work
without waiting it declines, and the connection runs the method's ``async``
handler in a task as usual.
"""

from __future__ import annotations

import enum
import inspect
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Protocol, TypeVar

import attrs
import trio

from .._log import get_logger
from ._errors import (
    Forbidden,
    InternalError,
    MethodNotFound,
    RemoteError,
    Unauthenticated,
    check_domain_error_types,
    is_known_code,
)
from ._params import ParamInfo, ParamSchema, schema_for
from ._protocol import ErrorInfo, Request, Response
from ._stream import NotificationStream
from ._unstructure import unstructure
from ._wire import NAME_MAX, Encoded, describe

__all__ = [
    "Role",
    "Peer",
    "Call",
    "CallHost",
    "MethodInfo",
    "Dispatcher",
    "Handler",
    "InlineHandler",
    "DEFER",
    "DECLINE",
    "METHOD_PATTERN",
]

METHOD_PATTERN: Final = re.compile(r"[a-z][a-z0-9_]{0,30}\.[a-z][a-z0-9_]{0,31}")
"""``service.method``: lower-case identifiers, one dot, at most 64 characters."""

log = get_logger()

Handler = Callable[..., Awaitable[Any]]
"""``async def handler(call: Call, *, param: T = default, ...) -> result``."""
_H = TypeVar("_H", bound=Handler)


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DEFER: Final = _Sentinel("DEFER")
"""Returned by an inline handler: it calls ``done`` later, exactly once."""
DECLINE: Final = _Sentinel("DECLINE")
"""Returned by (or given to ``done`` by) an inline handler: run the ``async`` handler."""

Done = Callable[[object], None]
"""What an inline handler that returned :data:`DEFER` calls once with its outcome:
the result, an exception (as the ``async`` handler would raise it), or
:data:`DECLINE`."""

InlineHandler = Callable[..., object]
"""``def inline(call: Call, done: Done, **params) -> result | DEFER | DECLINE``: never
waits; raising is like the ``async`` handler raising."""


class Role(enum.IntEnum):
    """Who may call a method; each role includes the ones below it."""

    ANONYMOUS = 0
    """Anyone who can reach the socket, before authenticating (``daemon.ping``)."""
    VIEWER = 1
    """Read-only: list, status, logs, metrics, inspect, env (redacted), graph."""
    OPERATOR = 2
    """Viewer plus start/stop/restart/reload/scale/exec/watch."""
    ADMIN = 3
    """Operator plus shutdown, reload_config, secrets, tokens."""

    @property
    def label(self) -> str:
        return self.name.lower()


@attrs.frozen(kw_only=True)
class Peer:
    """The authenticated identity of a connection.

    Attributes:
        transport: ``"unix"`` today; ``"tcp"`` and ``"ws"`` later.
        role: What the peer may call; :attr:`Role.ANONYMOUS` until authenticated.
        uid: The peer's uid (Unix socket, from ``SO_PEERCRED``).
        pid: The peer's pid at connect time (Unix socket).
        subject: The token subject (TCP/WebSocket).
        address: The peer's network address (TCP/WebSocket).
        token_id: The token's ``jti`` (TCP/WebSocket).
        recheck: Called before every call of a token-authenticated peer; raises
            :class:`Unauthenticated` once the token expired or was revoked.
    """

    transport: str
    role: Role
    uid: int | None = None
    pid: int | None = None
    subject: str | None = None
    address: str | None = None
    token_id: str | None = None
    recheck: Callable[[], None] | None = attrs.field(default=None, eq=False, repr=False)


class CallHost(Protocol):
    """What a connection offers to the handlers it runs (see :class:`Call`)."""

    def open_stream(self, method: str, *, capacity: int | None) -> NotificationStream: ...

    def start_soon(self, async_fn: Callable[..., Awaitable[object]], *args: object) -> None: ...

    def set_peer(self, peer: Peer) -> None: ...


@attrs.frozen(kw_only=True)
class Call:
    """The first argument of every handler: who called what, and connection services.

    Attributes:
        method: The method name.
        msgid: The request id.
        peer: The caller's identity and role.
    """

    method: str
    msgid: int
    peer: Peer
    _host: CallHost | None = attrs.field(default=None, alias="host", repr=False)

    def open_stream(self, method: str, *, capacity: int | None = None) -> NotificationStream:
        """Open a notification stream to the caller (for ``logs --follow``, events).

        The stream lives until the connection closes or :meth:`NotificationStream.close`.

        Raises:
            Busy: The connection already has its maximum number of streams.
            RuntimeError: The call is not attached to a connection (unit tests).
        """
        if self._host is None:
            raise RuntimeError("this call is not attached to a connection")
        return self._host.open_stream(method, capacity=capacity)

    def start_soon(self, async_fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``async_fn(*args)`` for as long as the connection lives (e.g. a stream producer).

        The task is cancelled when the connection closes; its exceptions are logged,
        never raised. On a connection that is already closing, nothing is started.

        Raises:
            RuntimeError: The call is not attached to a connection (unit tests).
        """
        if self._host is None:
            raise RuntimeError("this call is not attached to a connection")
        self._host.start_soon(async_fn, *args)

    def set_peer(self, peer: Peer) -> None:
        """Give the connection a new identity for its later calls (``auth.login``).

        Raises:
            RuntimeError: The call is not attached to a connection (unit tests).
        """
        if self._host is None:
            raise RuntimeError("this call is not attached to a connection")
        self._host.set_peer(peer)


@attrs.frozen(kw_only=True)
class MethodInfo:
    """A registered method: name, declared role, params, and first doc line (empty
    under ``python -OO``, which the daemon may run with: no docstrings)."""

    name: str
    role: Role
    params: tuple[ParamInfo, ...]
    summary: str
    handler: Handler = attrs.field(repr=False, eq=False)
    schema: ParamSchema = attrs.field(repr=False, eq=False)
    inline: InlineHandler | None = attrs.field(default=None, repr=False, eq=False)


def new_correlation_id() -> str:
    """A short random id tying an ``INTERNAL_ERROR`` reply to its log entry."""
    return os.urandom(6).hex()


class Dispatcher:
    """Registry of methods, and the request → response step of every transport.

    Args:
        error_types: Domain error classes (``RemoteError`` subclasses with their own
            ``code``) handlers may raise; others become ``INTERNAL_ERROR``.
        converter: Turns handler results (attrs records, enums) into msgpack-ready
            values; defaults to :func:`~omnitron.rpc._unstructure.unstructure`, which
            gives what cattrs' msgpack converter gives, without importing cattrs.
        ping: Register the anonymous ``daemon.ping`` (``{"pong": True}``). Pass
            ``False`` to register your own.

    Raises:
        TypeError, ValueError: ``error_types`` is malformed.
    """

    def __init__(
        self,
        *,
        error_types: Iterable[type[RemoteError]] = (),
        converter: Callable[[object], object] | None = None,
        ping: bool = True,
    ) -> None:
        self._methods: dict[str, MethodInfo] = {}
        self._domain = check_domain_error_types(error_types)
        self._unstructure = converter if converter is not None else unstructure
        self.calls = 0
        """Requests dispatched (each counted once, whichever path answers it)."""
        if ping:
            self.register("daemon.ping", _ping, role=Role.ANONYMOUS)
            self.set_inline("daemon.ping", _ping_inline)

    @property
    def error_types(self) -> Mapping[str, type[RemoteError]]:
        """Domain error codes and their classes (give them to clients)."""
        return dict(self._domain)

    def register(self, name: str, handler: Handler, *, role: Role) -> MethodInfo:
        """Register ``handler`` as method ``name``, callable by ``role`` and above.

        Args:
            name: ``service.method`` (see :data:`METHOD_PATTERN`).
            handler: ``async def handler(call, *, param: T = default, ...)``.
            role: The least role allowed to call it. Required: there is no default.

        Raises:
            TypeError: ``role`` is not a :class:`Role`, or the handler's signature is
                not supported.
            ValueError: ``name`` is malformed or already registered.
        """
        if not isinstance(role, Role):
            raise TypeError(f"{name}: role must be a Role, got {role!r}")
        if type(name) is not str or not METHOD_PATTERN.fullmatch(name):
            raise ValueError(
                f"method name {name!r} must look like 'service.method' ({METHOD_PATTERN.pattern})"
            )
        if name in self._methods:
            raise ValueError(f"method {name!r} is already registered")
        if not (
            inspect.iscoroutinefunction(handler)
            or inspect.iscoroutinefunction(getattr(handler, "__call__", None))  # noqa: B004
        ):
            raise TypeError(f"{name}: the handler must be an async function (async def)")
        schema = schema_for(name, handler)
        doc = (getattr(handler, "__doc__", None) or "").strip()
        info = MethodInfo(
            name=name,
            role=role,
            params=schema.params,
            summary=doc.splitlines()[0] if doc else "",
            handler=handler,
            schema=schema,
        )
        self._methods[name] = info
        return info

    def set_inline(self, name: str, inline: InlineHandler) -> None:
        """Give the registered method ``name`` an inline handler (see the module doc).

        It takes the same params as the method's ``async`` handler (already
        validated), plus ``done`` after the call; it must never block.

        Raises:
            ValueError: ``name`` is not registered.
        """
        info = self._methods.get(name)
        if info is None:
            raise ValueError(f"method {name!r} is not registered")
        self._methods[name] = attrs.evolve(info, inline=inline)

    def method(self, name: str, *, role: Role) -> Callable[[_H], _H]:
        """Decorator form of :meth:`register`."""

        def decorate(handler: _H) -> _H:
            self.register(name, handler, role=role)
            return handler

        return decorate

    def methods(self) -> tuple[MethodInfo, ...]:
        """Every registered method, sorted by name (for the role matrix and docs)."""
        return tuple(self._methods[name] for name in sorted(self._methods))

    def lookup(self, name: str) -> MethodInfo | None:
        return self._methods.get(name)

    def _admit(self, info: MethodInfo | None, request: Request, peer: Peer) -> dict[str, Any]:
        """The validated params of ``request``, once ``peer`` may call it.

        Raises:
            RemoteError: ``UNAUTHENTICATED``, ``METHOD_NOT_FOUND``, ``FORBIDDEN``,
                ``INVALID_PARAMS``.
        """
        if peer.role is Role.ANONYMOUS and (info is None or info.role is not Role.ANONYMOUS):
            # Same reply whether or not the method exists (AU-01, RP-11).
            raise Unauthenticated("authentication required")
        if peer.recheck is not None and (info is None or info.role is not Role.ANONYMOUS):
            peer.recheck()  # the token may have expired or been revoked since login
        if info is None:
            raise MethodNotFound(f"unknown method {_method_text(request.method)}")
        if peer.role < info.role:
            raise Forbidden(
                f"method {info.name} requires role {info.role.label}; "
                f"this connection has role {peer.role.label}",
                data={"required_role": info.role.label},
            )
        return info.schema.validate(request.params)

    def _refused(
        self, info: MethodInfo | None, request: Request, peer: Peer, exc: RemoteError
    ) -> Response:
        if peer.token_id is not None and info is not None and info.role >= Role.OPERATOR:
            _audit(info.name, peer, request.params, exc.code)
        return Response(msgid=request.msgid, error=ErrorInfo.from_exception(exc))

    def _audited(self, info: MethodInfo, request: Request, peer: Peer, response: Response) -> None:
        if peer.token_id is not None and info.role >= Role.OPERATOR:
            # AU-25: every mutating call on a network plane leaves one record.
            outcome = "ok" if response.error is None else response.error.code
            _audit(info.name, peer, request.params, outcome)

    async def dispatch(
        self, request: Request, *, peer: Peer, host: CallHost | None = None
    ) -> Response:
        """Authorize, validate and run one request; always returns a response.

        Cancellation: a cancelled handler raises ``trio.Cancelled`` out of here, as
        does ``KeyboardInterrupt``; every other exception becomes an error reply.
        """
        self.calls += 1
        info = self._methods.get(request.method)
        try:
            kwargs = self._admit(info, request, peer)
        except RemoteError as exc:
            return self._refused(info, request, peer, exc)
        assert info is not None
        call = Call(method=info.name, msgid=request.msgid, peer=peer, host=host)
        response = await self._run(info, call, request, peer, kwargs)
        self._audited(info, request, peer, response)
        return response

    def start(
        self,
        request: Request,
        *,
        peer: Peer,
        host: CallHost | None,
        done: Callable[[Response | None], None],
    ) -> Response | _Sentinel | None:
        """Answer ``request`` without waiting, where its method allows it.

        Returns:
            The response, when decided at once (a refusal, or the inline handler's
            result); :data:`DEFER` when ``done`` will be called later, exactly once,
            with the response, or with ``None``: the call must be run with
            :meth:`dispatch` after all; ``None`` when :meth:`dispatch` must run it
            (the method has no inline handler, or it declined).
        """
        info = self._methods.get(request.method)
        if info is None or info.inline is None:
            return None
        try:
            kwargs = self._admit(info, request, peer)
        except RemoteError as exc:
            self.calls += 1
            return self._refused(info, request, peer, exc)
        call = Call(method=info.name, msgid=request.msgid, peer=peer, host=host)

        def finished(value: object) -> None:
            if value is DECLINE:
                self.calls -= 1  # counted again when dispatch() runs it
                done(None)
                return
            response = self._outcome(info, request, peer, value)
            self._audited(info, request, peer, response)
            done(response)

        try:
            value = info.inline(call, finished, **kwargs)
        except Exception as exc:
            value = exc
        if value is DECLINE:
            return None
        self.calls += 1
        if value is DEFER:
            return DEFER
        response = self._outcome(info, request, peer, value)
        self._audited(info, request, peer, response)
        return response

    async def _run(
        self, info: MethodInfo, call: Call, request: Request, peer: Peer, kwargs: dict[str, Any]
    ) -> Response:
        try:
            result = await info.handler(call, **kwargs)
        except Exception as exc:
            result = exc
        return self._outcome(info, request, peer, result)

    def _outcome(self, info: MethodInfo, request: Request, peer: Peer, result: object) -> Response:
        """The response for what a handler returned, or the exception it raised."""
        if isinstance(result, BaseException):
            if isinstance(result, RemoteError):
                if is_known_code(result.code, self._domain):
                    return Response(msgid=request.msgid, error=ErrorInfo.from_exception(result))
                return self._internal(request, peer, result, reason="unregistered_error_code")
            if isinstance(result, Exception):
                return self._internal(request, peer, result, reason="handler_raised")
            raise result
        try:
            if type(result) is not Encoded:
                result = self._unstructure(result)
        except Exception as exc:
            return self._internal(request, peer, exc, reason="handler_raised")
        return Response(msgid=request.msgid, result=result)

    def _internal(self, request: Request, peer: Peer, exc: Exception, *, reason: str) -> Response:
        correlation_id = new_correlation_id()
        log.error(
            "rpc_handler_failed",
            method=request.method,
            msgid=request.msgid,
            transport=peer.transport,
            peer_uid=peer.uid,
            reason=reason,
            correlation_id=correlation_id,
            exc_info=exc,
        )
        error = InternalError(
            f"internal error in {request.method}; the daemon log has the details",
            correlation_id=correlation_id,
        )
        return Response(msgid=request.msgid, error=ErrorInfo.from_exception(error))


def _audit(method: str, peer: Peer, params: object, outcome: str) -> None:
    """One structured audit line: who, what, which target, result; never other params."""
    # The app a call is about: ``name`` for most methods, ``app`` for ``daemon.exec``.
    target = params.get("name", params.get("app")) if isinstance(params, Mapping) else None
    log.info(
        "audit",
        method=method,
        transport=peer.transport,
        peer=peer.address,
        subject=peer.subject,
        token_id=peer.token_id,
        role=peer.role.label,
        target=target if isinstance(target, str) and len(target) <= NAME_MAX else None,
        result=outcome,
    )


async def _ping(call: Call) -> dict[str, object]:
    """Liveness check; answers before authentication."""
    await trio.lowlevel.checkpoint()
    return {"pong": True}


_PONG: Final = Encoded(b"\x81\xa4pong\xc3")  # {"pong": True}


def _ping_inline(call: Call, done: Done) -> Encoded:
    return _PONG


def _method_text(name: str) -> str:
    if len(name) <= NAME_MAX and name.isprintable():
        return repr(name)
    return f"({describe(name)})"
