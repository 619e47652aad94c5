"""What changed between two ecosystems: the plan ``reload-config`` applies."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from ._model import AppConfig, Ecosystem, ReadyConfig

__all__ = ["AppChange", "EcosystemDiff", "FieldChange", "diff_ecosystems"]


@attrs.frozen
class FieldChange:
    """One field that differs: ``path`` is dotted (``restart_policy.max_restarts``,
    ``env.PORT``); ``old``/``new`` are ``None`` when a table entry was added/removed.
    """

    path: str
    old: Any
    new: Any

    @property
    def is_env(self) -> bool:
        return self.path.startswith("env.") or ".env." in self.path

    def __str__(self) -> str:
        if self.is_env:  # values may be secrets expanded from the environment
            verb = "added" if self.old is None else "removed" if self.new is None else "changed"
            return f"{self.path}: {verb}"
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"


@attrs.frozen
class AppChange:
    """An app present in both ecosystems whose configuration differs."""

    name: str
    changes: tuple[FieldChange, ...]

    def only(self, key: str) -> bool:
        """Whether every change is of the app's ``key`` (``watch``, ``watch.debounce``)."""
        return all(c.path == key or c.path.startswith(key + ".") for c in self.changes)


@attrs.frozen
class EcosystemDiff:
    """Apps added, removed and changed (by name), and changed top-level settings.

    ``bool(diff)`` is false when nothing differs.
    """

    added: tuple[AppConfig, ...] = ()
    removed: tuple[AppConfig, ...] = ()
    changed: tuple[AppChange, ...] = ()
    settings: tuple[FieldChange, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.settings)

    def __str__(self) -> str:
        lines = [f"+ {app.name}" for app in self.added]
        lines += [f"- {app.name}" for app in self.removed]
        for change in self.changed:
            lines.append(f"~ {change.name}")
            lines += [f"    {field}" for field in change.changes]
        lines += [f"~ {field}" for field in self.settings]
        return "\n".join(lines) if lines else "no changes"


def _show(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, enum.Enum):
        return str(value.name if isinstance(value.value, int) else value.value)
    return repr(value) if isinstance(value, str) else str(value)


def _compare(path: str, old: Any, new: Any, out: list[FieldChange]) -> None:
    if old == new:
        return
    same_record = (
        type(old) is type(new) and attrs.has(type(old)) and not isinstance(old, ReadyConfig)
    )
    if same_record:
        for field in attrs.fields(type(old)):
            if field.eq:
                name = f"{path}.{field.name}" if path else field.name
                _compare(name, getattr(old, field.name), getattr(new, field.name), out)
    elif isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in [*old, *(key for key in new if key not in old)]:
            _compare(f"{path}.{key}", old.get(key), new.get(key), out)
    else:
        out.append(FieldChange(path, old, new))


def diff_ecosystems(old: Ecosystem, new: Ecosystem) -> EcosystemDiff:
    """Compare two ecosystems field by field; apps are matched by name.

    Args:
        old: The ecosystem in force.
        new: The one about to replace it.
    """
    old_apps = {app.name: app for app in old.apps}
    new_apps = {app.name: app for app in new.apps}
    changed = []
    for app in new.apps:
        before = old_apps.get(app.name)
        if before is not None and before != app:
            fields: list[FieldChange] = []
            _compare("", before, app, fields)
            changed.append(AppChange(app.name, tuple(fields)))
    settings: list[FieldChange] = []
    for field in attrs.fields(Ecosystem):
        if field.eq and field.name != "apps":
            _compare(field.name, getattr(old, field.name), getattr(new, field.name), settings)
    return EcosystemDiff(
        added=tuple(app for app in new.apps if app.name not in old_apps),
        removed=tuple(app for app in old.apps if app.name not in new_apps),
        changed=tuple(changed),
        settings=tuple(settings),
    )
