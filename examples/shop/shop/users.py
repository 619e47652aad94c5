"""The `users` process: a small in-memory user directory."""

from __future__ import annotations

import os

import trio

from omnitron.worker import on_start, public, service

USERS = {
    "u_1": {"id": "u_1", "name": "Ada", "plan": "pro"},
    "u_2": {"id": "u_2", "name": "Grace", "plan": "free"},
}


class UnknownUser(LookupError):
    """No user with that id."""


@service("users")
class Users:
    @on_start
    async def load(self) -> None:
        self.users = dict(USERS)

    @public
    async def find_by_id(self, uid: str) -> dict[str, str]:
        """The user ``uid``; raises ``UnknownUser`` when there is none."""
        try:
            return self.users[uid]
        except KeyError:
            raise UnknownUser(f"no user {uid!r}") from None

    @public
    async def count(self) -> int:
        return len(self.users)

    @public
    def whoami(self) -> dict[str, int]:
        """Which worker answered (to see the round-robin)."""
        return {"pid": os.getpid()}

    @public
    async def sleep(self, seconds: float) -> float:
        """Wait ``seconds`` (to see timeouts and draining)."""
        print(f"sleeping {seconds}s in pid {os.getpid()}", flush=True)
        await trio.sleep(seconds)
        return seconds

    async def _internal(self) -> str:  # not @public: never reachable
        return "secret"
