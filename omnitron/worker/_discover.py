"""Finding a worker module's services, public methods and lifecycle steps.

The result is an explicit allowlist: the worker serves exactly the
``service.method`` names found here, looked up in a dict, never by attribute
access on the request's text.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

import attrs

from ._api import LIFECYCLE_MARK, METHOD_NAME, PUBLIC_MARK, SERVICE_MARK

__all__ = ["DiscoveryError", "Discovered", "PublicMethod", "discover", "service_names"]


class DiscoveryError(Exception):
    """The module's services cannot be served as declared (names, kinds)."""


@attrs.frozen(kw_only=True)
class PublicMethod:
    """One reachable method: ``service.name``, bound to the service's instance."""

    service: str
    name: str
    function: Callable[..., Any] = attrs.field(eq=False, repr=False)
    signature: inspect.Signature = attrs.field(eq=False, repr=False)
    is_async: bool

    @property
    def full_name(self) -> str:
        return f"{self.service}.{self.name}"

    def text(self) -> str:
        """``name(signature)`` as shown by ``worker.services``."""
        prefix = "async " if self.is_async else ""
        return f"{prefix}{self.name}{self.signature}"


@attrs.frozen(kw_only=True)
class Step:
    """A lifecycle step (``on_start``, ``on_stop``, ``health_check``) and its label."""

    label: str
    function: Callable[[], Any] = attrs.field(eq=False, repr=False)


@attrs.frozen(kw_only=True)
class Discovered:
    """What a worker module offers."""

    services: dict[str, object]
    methods: dict[str, PublicMethod]
    on_start: list[Step]
    on_stop: list[Step]
    health_check: list[Step]


def _unwrap(attribute: object) -> object:
    if isinstance(attribute, staticmethod | classmethod):
        return attribute.__func__
    return attribute


def _signature(function: Callable[..., Any]) -> inspect.Signature:
    """The signature with string annotations evaluated where they resolve (for display)."""
    try:
        return inspect.signature(function, eval_str=True)
    except Exception:
        return inspect.signature(function)


def _mark(raw: object, function: object, mark: str) -> object:
    """A decorator's mark, whether it was put on the function or on its
    ``staticmethod``/``classmethod`` wrapper (decorators applied in either order)."""
    value = getattr(raw, mark, None)
    return value if value is not None else getattr(function, mark, None)


def _class_members(cls: type) -> dict[str, object]:
    """The class's own and inherited attributes, the most derived definition winning."""
    members: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        members.update(vars(klass))
    return members


def service_names(module: ModuleType) -> list[str]:
    """The names of the ``@service`` classes defined or imported in ``module``, as
    :func:`discover` finds them, without making their instances."""
    names: list[str] = []
    for attribute in list(vars(module).values()):
        if isinstance(attribute, type):
            name = attribute.__dict__.get(SERVICE_MARK)
            if isinstance(name, str) and name not in names:
                names.append(name)
    return names


def discover(module: ModuleType) -> Discovered:
    """Instantiate the module's ``@service`` classes and list what they offer.

    Module-level functions marked ``@on_start``, ``@on_stop`` or ``@health_check``
    are steps too (run before the services' own, in definition order).

    Raises:
        DiscoveryError: Two services share a name, a ``@public`` attribute has a
            name that cannot be called, or is a generator.
        Exception: Whatever a service class's constructor raised.
    """
    steps: dict[str, list[Step]] = {"on_start": [], "on_stop": [], "health_check": []}
    classes: dict[str, type] = {}
    for attribute in list(vars(module).values()):
        if isinstance(attribute, type):
            name = attribute.__dict__.get(SERVICE_MARK)
            if isinstance(name, str):
                other = classes.get(name)
                if other is not None and other is not attribute:
                    raise DiscoveryError(
                        f"two classes are @service({name!r}): "
                        f"{other.__module__}.{other.__qualname__} and "
                        f"{attribute.__module__}.{attribute.__qualname__}"
                    )
                classes[name] = attribute
        elif callable(attribute) and getattr(attribute, "__module__", None) == module.__name__:
            kind = getattr(attribute, LIFECYCLE_MARK, None)
            if kind in steps:
                label = f"{module.__name__}.{getattr(attribute, '__qualname__', '?')}"
                steps[kind].append(Step(label=label, function=attribute))
    services: dict[str, object] = {}
    methods: dict[str, PublicMethod] = {}
    for service_name, cls in classes.items():
        instance = cls()
        services[service_name] = instance
        for attr_name, raw in _class_members(cls).items():
            function = _unwrap(raw)
            bound = None
            if _mark(raw, function, PUBLIC_MARK) is True:
                if not METHOD_NAME.fullmatch(attr_name):
                    raise DiscoveryError(
                        f"{cls.__qualname__}.{attr_name}: a @public method name is a "
                        "lower-case identifier not starting with '_'"
                    )
                bound = getattr(instance, attr_name)
                if inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function):
                    raise DiscoveryError(
                        f"{cls.__qualname__}.{attr_name}: a @public method cannot be a "
                        "generator; return a list instead"
                    )
                method = PublicMethod(
                    service=service_name,
                    name=attr_name,
                    function=bound,
                    signature=_signature(bound),
                    is_async=inspect.iscoroutinefunction(bound),
                )
                methods[method.full_name] = method
            kind = _mark(raw, function, LIFECYCLE_MARK)
            if kind in steps:
                bound = bound or getattr(instance, attr_name)
                label = f"{service_name}.{attr_name}"
                steps[kind].append(Step(label=label, function=bound))
    return Discovered(
        services=services,
        methods=dict(sorted(methods.items())),
        on_start=steps["on_start"],
        on_stop=steps["on_stop"],
        health_check=steps["health_check"],
    )
