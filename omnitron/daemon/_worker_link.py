"""The router's connection to one worker: pipelined calls, results passed through raw.

A :class:`WorkerLink` carries any number of calls at once on one Unix-socket
connection, matched to their replies by msgid. It is built for the ``exec`` hop,
where the daemon only forwards:

- the request is put together from bytes (the envelope, the method name, the
  arguments packed once), checked against the worker's limits only when there
  are arguments to check;
- a reply is found in the stream with msgpack's ``skip`` (nothing is built), and
  a successful one hands its result to the caller as the **msgpack bytes the
  worker encoded**; only error replies and the built-ins' answers are decoded
  (with the control plane's limits);
- a waiting call costs no task, no event and no cancel scope: it parks until the
  reader reschedules it, and one watchdog task per link fails the calls whose
  worker let their deadline pass (a blocked synchronous method);
- a call may also be *started* without any task waiting (:meth:`WorkerLink.start_raw`):
  its outcome goes to a callback, run by the link's reader (or watchdog) as soon
  as the reply is found, so the control plane can answer ``daemon.exec`` from
  there without a task per call;
- the connection closing (the worker died) fails every call waiting on it at once
  with ``WORKER_EXITED``.

Errors are :class:`~omnitron.daemon._workers.WorkerCallError`, with the codes of
:class:`~omnitron.daemon._workers.WorkerClient`.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgpack
import outcome
import trio

from .._log import get_logger
from ..rpc import ProtocolError
from ..rpc._errors import ErrorCode
from ..rpc._server import (
    READS_BEFORE_YIELD,
    defer_write,
    flush_writes,
    hold_writes,
    receive_nowait,
    receive_when_ready,
    send_nowait,
    writes_held,
)
from ..rpc._unix import check_socket_path
from ..rpc._wire import (
    DEFAULT_LIMITS,
    MAX_MSGID,
    NOTIFICATION,
    FrameDecoder,
    Limits,
    limit_violation,
    parse_error_map,
    split_server_message,
)
from ._workers import WorkerCallError

__all__ = ["WorkerLink", "decode_value", "open_link"]

log = get_logger("omnitron.exec")

_Task = trio.lowlevel.Task
Callback = Callable[[outcome.Outcome[bytes]], None]
"""Gets the outcome of a call started with :meth:`WorkerLink.start_raw`."""

REQUEST_HEAD: Final = b"\x94\x00"
"""``fixarray(4)``, type 0 (request): then msgid, method, params."""
RESPONSE_HEAD: Final = b"\x94\x01"
NIL: Final = 0xC0
_FLOAT64 = struct.Struct(">Bd")  # msgpack float 64: 0xcb, then the double
_SCALARS: Final = frozenset({int, float, str, bytes, bool, type(None)})
FLAT_CHECK_MAX: Final = 64
"""Arguments up to this many, all scalars, need no structural check (only the size)."""


def _msgid_bytes(msgid: int) -> bytes:
    """A msgid as msgpack uint32 (any uint32 may be sent in that form)."""
    return b"\xce" + msgid.to_bytes(4, "big")


@functools.lru_cache(maxsize=1024)
def _call_head(name: str) -> bytes:
    """The method name and the start of the params of a call with arguments."""
    return _pack(name) + b"\x91\x83\xa4args"


@functools.lru_cache(maxsize=1024)
def _no_args_head(name: str) -> bytes:
    """The method name and the params of a call without arguments, up to the timeout."""
    return _pack(name) + b"\x91\x83\xa4args\x90\xa6kwargs\x80\xa7timeout"


def _flat(args: list[Any], kwargs: Mapping[str, Any]) -> bool:
    """Few arguments, all scalars: nothing in them can break a structural limit."""
    if len(args) + len(kwargs) > FLAT_CHECK_MAX:
        return False
    scalars = _SCALARS
    return all(type(v) in scalars for v in args) and all(
        type(k) is str and type(v) in scalars for k, v in kwargs.items()
    )


def _pack(value: object) -> bytes:
    data: bytes = msgpack.packb(value, use_bin_type=True, datetime=False)
    return data


def decode_value(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The value of one msgpack object, decoded under ``limits``.

    Raises:
        ProtocolError: It breaks the limits or is not valid msgpack.
    """
    decoder = FrameDecoder(limits)
    frame = b"\x91" + data  # a one-item array: the decoder's frames are arrays
    step = limits.read_size
    for start in range(0, len(frame), step):
        decoder.feed(frame[start : start + step])
    value = decoder.next_frame()
    if not isinstance(value, list) or decoder.buffered:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "not one complete msgpack value")
    return value[0]


def _msgid_at(frame: bytes | bytearray, at: int) -> tuple[int | None, int]:
    """The msgid packed at ``frame[at]`` (a uint, or nil) and where the next item starts."""
    first = frame[at]
    if first < 0x80:
        return first, at + 1
    if first == 0xCC:
        return frame[at + 1], at + 2
    if first == 0xCD:
        return int.from_bytes(frame[at + 1 : at + 3], "big"), at + 3
    if first == 0xCE:
        return int.from_bytes(frame[at + 1 : at + 5], "big"), at + 5
    return None, -1


class WorkerLink:
    """Pipelined calls to one worker over one connection (see :func:`open_link`).

    Args:
        stream: The connected socket.
        path: The worker's socket, for messages.
        limits: The worker's decoder limits (a request past them is not sent) and
            the limits applied to what the worker sends.
    """

    def __init__(
        self, stream: trio.abc.Stream, path: str, *, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.path = path
        self.identity: dict[str, Any] = {}
        """The worker's ``worker.hello`` answer."""
        self.services: frozenset[str] = frozenset()
        """The services the worker serves (``worker.services``)."""
        self._stream = stream
        self._limits = limits
        # msgid -> (the parked caller or the callback, its deadline, the method and
        # the seconds it was given, for messages)
        self._pending: dict[int, tuple[_Task | Callback, float, str, float]] = {}
        self._next_msgid = 0
        self._outbox: list[bytes] = []
        self._writer: _Task | None = None  # set while the writer is parked
        self._flush_queued = False  # registered for the held writes' flush
        self._watch: trio.CancelScope | None = None
        self._failure: Callable[[], WorkerCallError] | None = None
        self._scope = trio.CancelScope()

    @property
    def closed(self) -> bool:
        """True once the connection can carry no more calls."""
        return self._failure is not None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ calling

    async def call_raw(
        self,
        service: str,
        method: str,
        args: list[Any],
        kwargs: Mapping[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109 - sent to the worker, which enforces it
        grace: float,
    ) -> bytes:
        """Call ``service.method(*args, **kwargs)``; the msgpack bytes of its result.

        The worker cancels the call after ``timeout`` seconds and answers
        ``TIMEOUT``; if it has not answered ``grace`` seconds later (a blocked
        synchronous method), the call fails here with ``TIMEOUT``.

        Raises:
            WorkerCallError: Any failure; ``code`` says which.
        """
        name = f"{service}.{method}"
        msgid = self._allocate_msgid()
        frame = self._request(msgid, name, args, kwargs, timeout)
        return await self._send(msgid, frame, name, timeout + grace)

    def start_raw(
        self,
        service: str,
        method: str,
        args: list[Any],
        kwargs: Mapping[str, Any],
        *,
        timeout: float,
        grace: float,
        done: Callback,
    ) -> None:
        """Start the call of :meth:`call_raw` and return at once; ``done`` gets its
        outcome (the result's bytes, or a :class:`WorkerCallError`) exactly once,
        later, from the link's reader or watchdog (never from here). ``done`` must
        not block, nor raise (what it raises is logged and dropped).

        Raises:
            WorkerCallError: The call cannot be sent (the link is closed, the
                arguments cannot be encoded or are too large); nothing was sent.
        """
        if self._failure is not None:
            raise self._failure()
        name = f"{service}.{method}"
        msgid = self._allocate_msgid()
        frame = self._request(msgid, name, args, kwargs, timeout)
        self._post(msgid, frame, name, timeout + grace, done)

    def _request(
        self, msgid: int, name: str, args: list[Any], kwargs: Mapping[str, Any], timeout: float
    ) -> bytes:
        if not args and not kwargs:
            return b"".join(
                (
                    REQUEST_HEAD,
                    _msgid_bytes(msgid),
                    _no_args_head(name),
                    _FLOAT64.pack(0xCB, timeout),
                )
            )
        if _flat(args, kwargs):
            return self._flat_request(msgid, name, args, kwargs, timeout)
        return self._checked_request(msgid, name, args, kwargs, timeout)

    def _flat_request(
        self, msgid: int, name: str, args: list[Any], kwargs: Mapping[str, Any], timeout: float
    ) -> bytes:
        try:
            packed_args = _pack(args)
            packed_kwargs = _pack(kwargs)
        except (TypeError, ValueError, OverflowError) as exc:
            raise WorkerCallError(
                "INVALID_ARGS", f"the arguments of {name} cannot be encoded: {exc}"
            ) from None
        frame = b"".join(
            (
                REQUEST_HEAD,
                _msgid_bytes(msgid),
                _call_head(name),
                packed_args,
                b"\xa6kwargs",
                packed_kwargs,
                b"\xa7timeout",
                _FLOAT64.pack(0xCB, timeout),
            )
        )
        if len(frame) > self._limits.max_frame:
            raise WorkerCallError(
                "PAYLOAD_TOO_LARGE",
                f"the call to {name} cannot be sent: message is {len(frame)} bytes, "
                f"more than max_frame={self._limits.max_frame}",
            )
        return frame

    def _checked_request(
        self, msgid: int, name: str, args: list[Any], kwargs: Mapping[str, Any], timeout: float
    ) -> bytes:
        params = {"args": args, "kwargs": kwargs, "timeout": float(timeout)}
        message = [0, msgid, name, [params]]
        problem = limit_violation(message, self._limits)
        if problem is None:
            try:
                frame = _pack(message)
            except (TypeError, ValueError, OverflowError) as exc:
                raise WorkerCallError(
                    "INVALID_ARGS", f"the arguments of {name} cannot be encoded: {exc}"
                ) from None
            if len(frame) <= self._limits.max_frame:
                return frame
            problem = f"message is {len(frame)} bytes, more than max_frame={self._limits.max_frame}"
        else:
            problem = f"message {problem}"
        raise WorkerCallError("PAYLOAD_TOO_LARGE", f"the call to {name} cannot be sent: {problem}")

    async def builtin(self, name: str, *, timeout: float) -> Any:  # noqa: ASYNC109
        """Call the built-in ``worker.NAME``; its decoded answer."""
        msgid = self._allocate_msgid()
        frame = b"".join((REQUEST_HEAD, _msgid_bytes(msgid), _pack(f"worker.{name}"), b"\x91\x80"))
        raw = await self._send(msgid, frame, f"worker.{name}", timeout)
        try:
            return decode_value(raw, self._limits)
        except ProtocolError as exc:
            raise WorkerCallError(
                "PROTOCOL_ERROR", f"the worker at {self.path} sent a bad reply: {exc.message}"
            ) from None

    def _allocate_msgid(self) -> int:
        while True:
            msgid = self._next_msgid
            self._next_msgid = msgid + 1 if msgid < MAX_MSGID else 0
            if msgid not in self._pending:
                return msgid

    async def _send(self, msgid: int, frame: bytes, name: str, within: float) -> bytes:
        if self._failure is not None:
            raise self._failure()
        self._post(msgid, frame, name, within, trio.lowlevel.current_task())

        def abort(_: object) -> trio.lowlevel.Abort:
            # The caller was cancelled: a late reply finds no one and is dropped.
            self._pending.pop(msgid, None)
            return trio.lowlevel.Abort.SUCCEEDED

        raw: bytes = await trio.lowlevel.wait_task_rescheduled(abort)
        return raw

    def _post(
        self, msgid: int, frame: bytes, name: str, within: float, waiter: _Task | Callback
    ) -> None:
        """Register the call's ``waiter`` and queue its request for the writer."""
        deadline = trio.current_time() + within
        self._pending[msgid] = (waiter, deadline, name, within)
        self._outbox.append(frame)
        if writes_held():
            # The task starting this call handles a burst of them: one write at its end.
            if not self._flush_queued:
                self._flush_queued = True
                defer_write(self)
        else:
            self._wake_writer()
        watch = self._watch
        if watch is not None and deadline < watch.deadline:
            watch.deadline = deadline

    # ------------------------------------------------------------------ the link's tasks

    @staticmethod
    def _resolve(waiter: _Task | Callback, result: outcome.Outcome[bytes]) -> None:
        """Hand a call its outcome: wake its task, or run its callback."""
        if type(waiter) is _Task:
            trio.lowlevel.reschedule(waiter, result)
            return
        try:
            waiter(result)  # type: ignore[operator]
        except Exception as exc:  # the link must keep serving the other calls
            log.error("worker_link_callback_failed", exc_info=exc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read, write and watch deadlines until the connection ends or is cancelled.

        When it ends, every call still waiting fails with ``WORKER_EXITED``.
        """
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop)
                    nursery.start_soon(self._watch_loop)
                    task_status.started()
                    await self._read_loop()
                    nursery.cancel_scope.cancel()
        finally:
            self._fail(
                "WORKER_EXITED",
                f"the worker at {self.path} closed the connection before answering "
                "{name} (it exited or was killed)",
            )
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)

    def close(self) -> None:
        """Stop the link's tasks (:meth:`run` returns); waiting calls fail."""
        self._fail("WORKER_EXITED", f"the connection to the worker at {self.path} was closed")
        self._scope.cancel()

    def _fail(self, code: str, template: str) -> None:
        """Fail every waiting call and every later one; ``{name}`` is the method."""
        if self._failure is None:
            message = template.replace("{name}", "the call")
            self._failure = lambda: WorkerCallError(code, message)
        pending, self._pending = self._pending, {}
        for waiter, _, name, _ in pending.values():
            error = WorkerCallError(code, template.replace("{name}", name))
            self._resolve(waiter, outcome.Error(error))
        self._scope.cancel()

    async def _write_loop(self) -> None:
        while True:
            if not self._outbox:
                self._writer = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort_parked)
                continue
            frames, self._outbox = self._outbox, []
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            try:
                sent = send_nowait(self._stream, data)
                if sent < len(data):
                    await self._stream.send_all(memoryview(data)[sent:])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._scope.cancel()  # run() fails the waiting calls
                return

    def _wake_writer(self) -> None:
        writer = self._writer
        if writer is not None:
            self._writer = None
            trio.lowlevel.reschedule(writer)

    def _flush_held(self) -> None:
        """Write the requests queued while writes were held, straight to the socket
        if the writer is parked; what the socket does not take is left to it."""
        self._flush_queued = False
        if not self._outbox or self._failure is not None:
            return
        if self._writer is None:
            return  # the writer is running or about to: it takes these next, in order
        frames, self._outbox = self._outbox, []
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        try:
            sent = send_nowait(self._stream, data)
        except trio.BrokenResourceError:
            self._scope.cancel()  # run() fails the waiting calls
            return
        if sent < len(data):
            self._outbox = [data[sent:]]
            self._wake_writer()

    def _abort_parked(self, _: object) -> trio.lowlevel.Abort:
        self._writer = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _watch_loop(self) -> None:
        """Fail the calls whose deadline passed (their worker is blocked)."""
        while True:
            deadline = min((entry[1] for entry in self._pending.values()), default=math.inf)
            with trio.CancelScope(deadline=deadline) as scope:
                self._watch = scope
                await trio.sleep_forever()
            self._watch = None
            now = trio.current_time()
            late = [msgid for msgid, entry in self._pending.items() if entry[1] <= now]
            for msgid in late:
                waiter, _, name, within = self._pending.pop(msgid)
                error = WorkerCallError(
                    "TIMEOUT",
                    f"{name} did not answer within {within:g}s, its timeout and a grace "
                    "(the worker is blocked)",
                )
                self._resolve(waiter, outcome.Error(error))

    async def _read_loop(self) -> None:
        limits = self._limits
        unpacker = msgpack.Unpacker(
            max_buffer_size=limits.max_frame + limits.read_size,
            read_size=4096,
        )
        buffer = bytearray()
        base = 0  # stream offset of buffer[0]
        consumed = 0  # stream offset just past the last complete message
        in_a_row = 0
        while True:
            # Replies already waiting are read at once, without a trip through the
            # scheduler; after a run of such reads, or when none wait, wait for more.
            try:
                data: bytes | bytearray | None = None
                if in_a_row < READS_BEFORE_YIELD:
                    data = receive_nowait(self._stream, limits.read_size)
                if data is not None:
                    in_a_row += 1 if len(data) < limits.read_size else READS_BEFORE_YIELD
                else:
                    in_a_row = 0
                    data = await receive_when_ready(self._stream, limits.read_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            try:
                unpacker.feed(data)
            except msgpack.BufferFull:
                self._bad_reply(f"a reply exceeds the {limits.max_frame}-byte frame limit")
                return
            buffer += data
            # The replies of one read answer their callers' clients in one write each.
            hold_writes()
            try:
                while True:
                    try:
                        unpacker.skip()
                    except msgpack.OutOfData:
                        break
                    except Exception as exc:  # the codec boundary: any decoder failure
                        self._bad_reply(f"invalid msgpack: {type(exc).__name__}")
                        return
                    end = unpacker.tell()
                    if not self._on_reply(buffer, consumed - base, end - base):
                        return
                    consumed = end
            finally:
                flush_writes()
            if consumed > base:
                del buffer[: consumed - base]
                base = consumed
            if len(buffer) > limits.max_frame:
                self._bad_reply(f"a reply exceeds the {limits.max_frame}-byte frame limit")
                return

    def _bad_reply(self, reason: str) -> None:
        self._fail("PROTOCOL_ERROR", f"the worker at {self.path} sent a bad reply: {reason}")

    def _on_reply(self, buffer: bytearray, start: int, end: int) -> bool:
        """Hand one reply (``buffer[start:end]``) to its caller; ``False``: a bad one."""
        if end - start > self._limits.max_frame:
            self._bad_reply(f"a reply exceeds the {self._limits.max_frame}-byte frame limit")
            return False
        if buffer[start : start + 2] == RESPONSE_HEAD:
            msgid, at = _msgid_at(buffer, start + 2)
            if msgid is not None and buffer[at] == NIL:
                # Success: the result is everything after the nil error, as sent.
                entry = self._pending.pop(msgid, None)
                if entry is not None:
                    self._resolve(entry[0], outcome.Value(bytes(buffer[at + 1 : end])))
                return True
        return self._on_other_reply(bytes(buffer[start:end]))

    def _on_other_reply(self, frame: bytes) -> bool:
        """An error reply (or anything unusual): decoded and checked in full."""
        try:
            kind, msgid, error, _ = split_server_message(decode_value(frame, self._limits))
            if kind == NOTIFICATION:
                return True  # workers send none; nothing to act on
            code, message, _, data = parse_error_map(error)
        except ProtocolError as exc:
            self._bad_reply(exc.message)
            return False
        kind_name = data.get("type")
        trace = data.get("traceback")
        failure = WorkerCallError(
            code,
            message,
            type=kind_name if isinstance(kind_name, str) else None,
            traceback=trace if isinstance(trace, str) else None,
        )
        if msgid is None:
            # A connection-level error (the worker closes the connection after it).
            self._fail(code, message)
            return False
        entry = self._pending.pop(msgid, None)
        if entry is not None:
            self._resolve(entry[0], outcome.Error(failure))
        return True


async def open_link(
    path: str | os.PathLike[str],
    nursery: trio.Nursery,
    *,
    timeout: float,  # noqa: ASYNC109 - for the connection and the two built-ins
) -> WorkerLink:
    """Connect to the worker at ``path`` and start the link's tasks in ``nursery``.

    Asks ``worker.hello`` (the protocol is checked) and ``worker.services``.

    Raises:
        WorkerCallError: ``WORKER_UNREACHABLE``: nothing answered in time;
            ``PROTOCOL_MISMATCH``: the worker speaks another worker protocol.
    """
    text = check_socket_path(path)
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_unix_socket(text)
    except (OSError, trio.TooSlowError) as exc:
        reason = "no answer" if isinstance(exc, trio.TooSlowError) else _reason(exc)
        raise WorkerCallError(
            "WORKER_UNREACHABLE", f"cannot connect to the worker at {text}: {reason}"
        ) from None
    link = WorkerLink(stream, text)
    await nursery.start(link.run)
    try:
        link.identity = await link.builtin("hello", timeout=timeout)
        if not isinstance(link.identity, dict):
            raise WorkerCallError("PROTOCOL_ERROR", f"the worker at {text} sent a bad hello")
        from .._system import check_identity  # worker apps only: not at the daemon's start

        problem = check_identity(link.identity)
        if problem is not None:
            raise WorkerCallError("PROTOCOL_MISMATCH", problem)
        services = await link.builtin("services", timeout=timeout)
        link.services = frozenset(services) if isinstance(services, dict) else frozenset()
    except WorkerCallError as exc:
        link.close()
        if exc.code == "TIMEOUT":
            raise WorkerCallError(
                "WORKER_UNREACHABLE", f"the worker at {text} did not answer in time"
            ) from None
        raise
    except BaseException:  # cancelled while asking: the link's tasks end too
        link.close()
        raise
    return link


def _reason(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)
