"""One line of text for an app event, from its plain (wire) form.

The daemon writes these lines into app logs, and the CLI shows them in
``omnitron inspect``: both render the same ``{"kind": ..., fields}`` maps here.
Standard library only (the CLI's fast path imports it); the caller escapes the
result for its terminal.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # no typing import at run time (start-up cost)
    from collections.abc import Mapping
    from typing import Any

__all__ = ["describe"]


def _process(event: Mapping[str, Any], what: str) -> str:
    return f"instance {event.get('instance', '?')} {what}"


def _stopped(event: Mapping[str, Any]) -> str:
    if event.get("instance") is None:
        return "stopped"
    text = _process(event, "stopped")
    if event.get("killed"):
        text += " (killed after stop timeout)"
    if event.get("escaped"):
        text += f"; escaped: {list(event['escaped'])}"
    return text


def _delay(event: Mapping[str, Any]) -> str:
    delay = event.get("delay")
    return f"{delay:g}s" if isinstance(delay, int | float) else "?"


def describe(event: Mapping[str, Any]) -> str:
    """``instance 0 online (pid 887)``, ``app crashed: ...``, ``scaled 2 -> 3``...

    An unknown kind (from a newer daemon) is shown as its kind and its fields.
    """
    kind = event.get("kind")
    reason = event.get("reason")
    if kind == "online":
        return _process(event, f"online (pid {event.get('pid')})")
    if kind == "exited":
        return _process(event, str(reason))
    if kind == "restarting":
        return _process(event, f"restarting in {_delay(event)}")
    if kind == "stopped":
        return _stopped(event)
    if kind in ("started", "restarted", "reloaded"):
        return str(kind)
    if kind == "restart_failed":
        return f"restart failed: instance {event.get('instance', '?')}: {reason}"
    if kind == "reload_failed":
        return f"reload failed: instance {event.get('instance', '?')}: {reason}; old kept"
    if kind == "scaled":
        return f"scaled {event.get('previous')} -> {event.get('instances')}"
    if kind == "failed":
        return f"app failed: {reason}"
    if kind == "crashed":
        return f"app crashed: {reason}"
    if kind == "errored":
        return f"app cannot start as configured: {reason}"
    if kind == "health_failed":
        return _process(event, f"health check failed (pid {event.get('pid')}): {reason}")
    if kind == "memory_restart":
        return _process(event, f"restarted: {reason}")
    fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("kind", "time"))
    return f"{kind} {fields}".rstrip()
