"""A process whose start-up fails."""

from omnitron.worker import on_start, public, service


@service("broken")
class Broken:
    @on_start
    def start(self) -> None:
        raise RuntimeError("cannot reach the database")

    @public
    def ping(self) -> str:
        return "pong"
