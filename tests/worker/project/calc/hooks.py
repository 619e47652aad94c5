"""Lifecycle hooks that record their order in $LAB_MARKER."""

import os


def record(event: str) -> None:
    marker = os.environ.get("LAB_MARKER")
    if marker:
        with open(marker, "a") as file:
            file.write(event + "\n")


def system_before_start() -> None:
    record("system.before_start")


async def process_before_start() -> None:
    record("process.before_start")


def process_after_start() -> None:
    record("process.after_start")


def system_after_start() -> None:
    record("system.after_start")


def system_before_stop() -> None:
    record("system.before_stop")


def process_before_stop() -> None:
    record("process.before_stop")


def process_after_stop() -> None:
    record("process.after_stop")


def system_after_stop() -> None:
    record("system.after_stop")


def system_health() -> bool:
    return os.environ.get("LAB_SYSTEM_UNHEALTHY") is None
