"""The daemon's side of module workers: calling a worker, and ``describe``.

:func:`open_worker_client` connects to a worker's socket and gives a
:class:`WorkerClient`: any number of tasks may call through it at once (calls
are pipelined on one connection, replies matched by id). Every failure of a call
is a :class:`WorkerCallError` with a ``code``:

============== =============================================================
APP_ERROR      the method raised; ``type`` and ``traceback`` say what
INVALID_ARGS   the arguments do not fit the method's signature
METHOD_NOT_FOUND no such public method (``_private``, ``__class__``, ``os.system``)
BAD_RESULT     the method returned something that cannot be sent
TIMEOUT        no reply within ``timeout``; the worker cancels an ``async``
               method at that point, and the connection stays usable
PAYLOAD_TOO_LARGE the arguments exceed the frame limit (nothing was sent)
WORKER_EXITED  the connection closed before the reply (the worker died)
UNAVAILABLE    the worker is stopping
WORKER_UNREACHABLE nothing answers on the worker's socket
PROTOCOL_MISMATCH the worker speaks another worker protocol (on connecting)
============== =============================================================

:func:`describe_bootstrap` runs ``python -m omnitron.worker describe`` with an
app's interpreter and returns its JSON answer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from ..rpc import ConnectionLost, ProtocolError, RemoteError, RpcClient
from ..rpc._client import open_client
from ..rpc._unix import check_socket_path
from ._errors import DescribeError, WorkerCallError

__all__ = [
    "TIMEOUT_GRACE",
    "DescribeError",
    "WorkerCallError",
    "WorkerClient",
    "describe_bootstrap",
    "open_worker_client",
]

TIMEOUT_GRACE: Final = 1.0
"""Seconds the client waits past ``timeout`` for the worker's own TIMEOUT reply
before giving up on its own (a blocking sync method cannot be cancelled)."""
HELLO_TIMEOUT: Final = 10.0
"""Seconds the worker has to answer ``worker.hello`` when a client connects."""
DESCRIBE_OUTPUT_MAX: Final = 1 << 20
"""Bytes of ``describe`` output read; more is an error."""
STDERR_TAIL: Final = 4096
"""Bytes of a failed ``describe``'s stderr quoted in the error."""


def _from_remote(exc: RemoteError) -> WorkerCallError:
    kind = exc.data.get("type")
    trace = exc.data.get("traceback")
    return WorkerCallError(
        exc.code,
        exc.message,
        type=kind if isinstance(kind, str) else None,
        traceback=trace if isinstance(trace, str) else None,
    )


class WorkerClient:
    """Calls to one worker over one connection (see :func:`open_worker_client`)."""

    def __init__(self, rpc: RpcClient, path: str) -> None:
        self._rpc = rpc
        self.path = path
        self.identity: dict[str, Any] = {}
        """The worker's ``worker.hello`` answer, read when the connection opened."""

    @property
    def closed(self) -> bool:
        """True once the connection is gone (the worker exited, or it was closed)."""
        return self._rpc.closed

    async def call(
        self,
        service: str,
        method: str,
        args: Sequence[object] = (),
        kwargs: Mapping[str, object] | None = None,
        *,
        timeout: float | None = 30.0,  # noqa: ASYNC109 - also sent to the worker
    ) -> Any:
        """Call ``service.method(*args, **kwargs)`` in the worker; its result.

        Args:
            timeout: Seconds; the worker cancels the call then and replies
                ``TIMEOUT``. ``None`` waits as long as it takes.

        Raises:
            WorkerCallError: Any failure; ``code`` says which.
        """
        params: dict[str, object] = {"args": list(args), "kwargs": dict(kwargs or {})}
        if timeout is not None:
            if not (timeout > 0 and math.isfinite(timeout)):
                raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
            params["timeout"] = timeout
        name = f"{service}.{method}"
        return await self._call(name, params, timeout)

    async def _call(
        self,
        name: str,
        params: dict[str, object],
        timeout: float | None,  # noqa: ASYNC109
    ) -> Any:
        limit = math.inf if timeout is None else timeout + TIMEOUT_GRACE
        with trio.move_on_after(limit):
            try:
                return await self._rpc.call(name, **params)
            except RemoteError as exc:
                raise _from_remote(exc) from None
            except ConnectionLost:
                raise WorkerCallError(
                    "WORKER_EXITED",
                    f"the worker at {self.path} closed the connection before answering "
                    f"{name} (it exited or was killed)",
                ) from None
            except ProtocolError as exc:
                if not self._rpc.closed:
                    # Refused before sending: the connection is intact.
                    raise WorkerCallError(
                        "PAYLOAD_TOO_LARGE", f"the call to {name} cannot be sent: {exc.message}"
                    ) from None
                raise WorkerCallError(
                    "PROTOCOL_ERROR", f"the worker at {self.path} sent a bad reply: {exc.message}"
                ) from None
            except (TypeError, ValueError, OverflowError) as exc:
                raise WorkerCallError(
                    "INVALID_ARGS", f"the arguments of {name} cannot be encoded: {exc}"
                ) from None
        raise WorkerCallError(
            "TIMEOUT", f"{name} did not answer within {timeout:g}s (the worker is blocked)"
        )

    async def builtin(self, name: str, *, timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        """Call a built-in: ``hello``, ``services``, ``imported_files`` or ``health``."""
        return await self._call(f"worker.{name}", {}, timeout)

    async def hello(self, *, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
        """``{protocol, omnitron, python, pid, system, process, instance}``."""
        result: dict[str, Any] = await self.builtin("hello", timeout=timeout)
        return result

    async def aclose(self) -> None:
        await self._rpc.aclose()


@contextlib.asynccontextmanager
async def open_worker_client(path: str | os.PathLike[str]) -> AsyncIterator[WorkerClient]:
    """Connect to the worker listening on ``path``; closed when the block exits.

    Opening calls ``worker.hello`` (kept as :attr:`WorkerClient.identity`) and
    checks the worker's protocol with :func:`omnitron._system.check_identity`.

    Raises:
        WorkerCallError: ``WORKER_UNREACHABLE`` if nothing answers on ``path``;
            ``PROTOCOL_MISMATCH`` (the message names both versions and the
            worker's interpreter); or the hello call's own failure.
    """
    text = check_socket_path(path)
    try:
        stream = await trio.open_unix_socket(text)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise WorkerCallError(
            "WORKER_UNREACHABLE", f"cannot connect to the worker at {text}: {reason}"
        ) from None
    async with open_client(stream, address=text) as rpc:
        client = WorkerClient(rpc, text)
        # The first request also meets the worker's hello deadline, and a worker
        # speaking another protocol is refused before any call goes to it.
        client.identity = await client.hello(timeout=HELLO_TIMEOUT)
        from .._system import check_identity  # worker apps only: not at the daemon's start

        problem = check_identity(client.identity)
        if problem is not None:
            raise WorkerCallError("PROTOCOL_MISMATCH", problem)
        yield client


async def _read_bounded(stream: trio.abc.ReceiveStream, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of ``stream``; ``True`` if there was more."""
    chunks: list[bytes] = []
    size = 0
    async for data in stream:
        chunk = bytes(data)
        if size + len(chunk) > limit:
            chunks.append(chunk[: limit - size])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


async def describe_bootstrap(
    python: str | os.PathLike[str],
    bootstrap_file: str | os.PathLike[str],
    timeout: float,  # noqa: ASYNC109 - the subprocess's limit
    *,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python -m omnitron.worker describe bootstrap_file`` and parse its answer.

    Runs in the bootstrap file's directory. Returns the JSON object whether it
    holds ``system`` (exit 0) or ``errors`` (exit 2: an invalid definition or an
    import error; report those like config errors). Check the answer with
    :func:`omnitron._system.check_identity` before using it.

    Raises:
        DescribeError: The interpreter is missing or not executable (its path is
            named), omnitron is not installed for it, it timed out, printed more
            than 1 MiB, or exited otherwise (its stderr's tail is quoted).
    """
    interpreter = os.fspath(python)
    path = Path(os.path.abspath(bootstrap_file))  # noqa: ASYNC240 - no I/O, a getcwd
    command = [interpreter, "-m", "omnitron.worker", "describe", str(path)]
    try:
        process = await trio.lowlevel.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(path.parent),
            env=None if env is None else dict(env),
        )
    except FileNotFoundError as exc:
        if exc.filename == str(path.parent):
            raise DescribeError(
                f"the bootstrap's directory does not exist: {path.parent}"
            ) from None
        raise DescribeError(f"interpreter not found: {interpreter}") from None
    except PermissionError:
        raise DescribeError(f"interpreter is not executable: {interpreter}") from None
    except OSError as exc:
        raise DescribeError(f"cannot run the interpreter {interpreter}: {exc}") from None
    stdout = b""
    stderr = b""
    overflow = False
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        out_stream, err_stream = process.stdout, process.stderr
        with trio.move_on_after(timeout) as scope:
            async with trio.open_nursery() as nursery:

                async def read_out() -> None:
                    nonlocal stdout, overflow
                    stdout, more = await _read_bounded(out_stream, DESCRIBE_OUTPUT_MAX)
                    if more:
                        overflow = True
                        process.kill()

                async def read_err() -> None:
                    nonlocal stderr
                    stderr, _ = await _read_bounded(err_stream, 4 * DESCRIBE_OUTPUT_MAX)

                nursery.start_soon(read_out)
                nursery.start_soon(read_err)
            await process.wait()
        if scope.cancelled_caught:
            process.kill()
            await process.wait()
            raise DescribeError(f"describing {path} with {interpreter} took more than {timeout:g}s")
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                await trio.aclose_forcefully(pipe)
    if overflow:
        raise DescribeError(f"describing {path} printed more than {DESCRIBE_OUTPUT_MAX} bytes")
    tail = stderr[-STDERR_TAIL:].decode("utf-8", "replace").strip()
    if process.returncode in (0, 2):
        try:
            answer = json.loads(stdout.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            answer = None
        if isinstance(answer, dict):
            return answer
    if "No module named 'omnitron'" in tail or "No module named omnitron" in tail:
        raise DescribeError(
            f"omnitron is not installed for {interpreter}; install it in that environment"
        )
    raise DescribeError(
        f"describing {path} with {interpreter} failed (exit code {process.returncode})"
        + (f": {tail}" if tail else "")
    )
