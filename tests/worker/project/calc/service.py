"""The calc service: sync and async methods, failures, hangs, big values."""

import os
import time

import trio

from calc.hooks import record
from omnitron.worker import health_check, on_start, on_stop, public, service


@on_start
def module_started() -> None:
    """A module-level step: runs before the services' own."""
    record("module.on_start")


@service("calc")
class Calc:
    def __init__(self) -> None:
        self.healthy = True
        self.arrived = 0
        self.all_here = trio.Event()

    @on_start
    async def start(self) -> None:
        await trio.lowlevel.checkpoint()
        record("calc.on_start")

    @on_stop
    async def stop(self) -> None:
        await trio.lowlevel.checkpoint()
        record("calc.on_stop")

    @public
    async def add(self, a: int, b: int = 0, *, scale: int = 1) -> int:
        await trio.lowlevel.checkpoint()
        return (a + b) * scale

    @public
    def echo(self, value: object) -> object:
        return value

    @public
    def greeting(self) -> str:
        return os.environ["CALC_GREETING"]

    @public
    async def fail(self, message: str) -> None:
        await trio.lowlevel.checkpoint()
        raise ValueError(message)

    @public
    async def hang(self) -> None:
        await trio.sleep_forever()

    @public
    async def slow(self, seconds: float) -> str:
        await trio.sleep(seconds)
        record("calc.slow done")
        return "done"

    @public
    async def rendezvous(self, count: int) -> int:
        """Returns only once ``count`` calls are in it at the same time."""
        self.arrived += 1
        if self.arrived >= count:
            self.all_here.set()
        await self.all_here.wait()
        return self.arrived

    @public
    def block(self, seconds: float) -> str:
        """A sync method that blocks the worker's loop (what not to do)."""
        time.sleep(seconds)
        return "unblocked"

    @public
    def big(self, size: int) -> str:
        return "x" * size

    @public
    def nest(self, depth: int) -> object:
        """Lists nested ``depth`` deep: ``[[...[]...]]``."""
        value: list[object] = []
        for _ in range(depth - 1):
            value = [value]
        return value

    @public
    def unencodable(self) -> object:
        return object()

    @public
    def set_healthy(self, healthy: bool) -> None:
        self.healthy = healthy

    @health_check
    def check(self) -> tuple[bool, str]:
        return self.healthy, "calc is " + ("fine" if self.healthy else "sick")

    def _internal(self) -> str:
        return "secret"
