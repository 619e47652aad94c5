"""The `billing` process: charges users, after checking them with `users`.

`billing` lists `users` in its topology `access`, so it may call the `users`
service through the daemon (`router.call` on $OMNITRON_ROUTER_SOCKET); the
daemon picks an online `users` worker, as for `omnitron exec`.
"""

from __future__ import annotations

import os
from typing import Any

from omnitron.rpc import RemoteError, connect_unix
from omnitron.worker import public, service


async def call(service: str, method: str, *args: Any) -> Any:
    """``service.method(*args)`` in another process of this app, through the daemon."""
    async with connect_unix(os.environ["OMNITRON_ROUTER_SOCKET"]) as daemon:
        reply = await daemon.call("router.call", service=service, method=method, args=list(args))
    return reply["result"]


class NotCharged(Exception):
    """The charge was refused."""


@service("billing")
class Billing:
    def __init__(self) -> None:
        self.charges: list[dict[str, Any]] = []

    @public
    async def charge(self, uid: str, cents: int, currency: str = "EUR") -> dict[str, Any]:
        """Charge ``cents`` to user ``uid`` (who must exist; the amount must be positive)."""
        if cents <= 0:
            raise ValueError(f"amount must be positive, got {cents}")
        try:
            user = await call("users", "find_by_id", uid)
        except RemoteError as exc:
            raise NotCharged(f"cannot charge {uid!r}: {exc.message}") from None
        charge = {"uid": uid, "name": user["name"], "cents": cents, "currency": currency}
        self.charges.append(charge)
        return charge

    @public
    async def total(self, uid: str) -> int:
        """What ``uid`` was charged so far, in cents."""
        return sum(c["cents"] for c in self.charges if c["uid"] == uid)
