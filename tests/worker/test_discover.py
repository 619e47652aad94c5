"""Discovery of services in a module, and the decorators' own checks."""

from __future__ import annotations

import types

import pytest

from omnitron.worker import health_check, on_start, on_stop, public, service
from omnitron.worker._discover import DiscoveryError, discover


def module_with(**names: object) -> types.ModuleType:
    module = types.ModuleType("fake_worker_module")
    for name, value in names.items():
        setattr(module, name, value)
    return module


def test_services_methods_and_steps_are_found() -> None:
    @service("users")
    class Users:
        @public
        async def find(self, uid: str) -> dict[str, str]:
            return {"uid": uid}

        @public
        def count(self) -> int:
            return 0

        @public
        @staticmethod
        def version() -> str:
            return "1"

        @on_start
        def open(self) -> None: ...

        @on_stop
        async def close(self) -> None: ...

        @health_check
        def healthy(self) -> bool:
            return True

        def helper(self) -> None: ...

    class Plain:
        @public
        def not_served(self) -> None: ...

    found = discover(module_with(Users=Users, Plain=Plain))
    assert list(found.services) == ["users"]
    assert isinstance(found.services["users"], Users)
    assert list(found.methods) == ["users.count", "users.find", "users.version"]
    assert found.methods["users.find"].is_async
    assert not found.methods["users.count"].is_async
    assert found.methods["users.find"].text() == "async find(uid: str) -> dict[str, str]"
    assert [s.label for s in found.on_start] == ["users.open"]
    assert [s.label for s in found.on_stop] == ["users.close"]
    assert [s.label for s in found.health_check] == ["users.healthy"]


def test_inherited_public_methods_are_served_and_overrides_win() -> None:
    class Base:
        @public
        def hello(self) -> str:
            return "base"

        @public
        def shared(self) -> str:
            return "base"

    @service("child")
    class Child(Base):
        def shared(self) -> str:  # overridden without @public: no longer reachable
            return "child"

    found = discover(module_with(Child=Child, Base=Base))
    assert list(found.methods) == ["child.hello"]


def test_two_classes_with_one_service_name_are_refused() -> None:
    @service("users")
    class A: ...

    @service("users")
    class B: ...

    with pytest.raises(DiscoveryError, match=r"two classes are @service\('users'\)"):
        discover(module_with(A=A, B=B))


def test_a_generator_cannot_be_public() -> None:
    @service("stream")
    class Stream:
        @public
        def items(self):  # type: ignore[no-untyped-def]
            yield 1

    with pytest.raises(DiscoveryError, match="cannot be a generator"):
        discover(module_with(Stream=Stream))


def test_a_public_attribute_under_a_private_name_is_refused() -> None:
    def visible(self: object) -> None: ...

    @service("svc")
    class Svc:
        _hidden = public(visible)

    with pytest.raises(DiscoveryError, match="not starting with '_'"):
        discover(module_with(Svc=Svc))


@pytest.mark.parametrize("name", ["Users", "my-service", "", "_x", "worker", "daemon", "a" * 40])
def test_bad_service_names(name: str) -> None:
    with pytest.raises(ValueError, match="@service"):
        service(name)


def test_bad_public_names() -> None:
    def _private(self: object) -> None: ...

    def camelCase(self: object) -> None: ...

    for function in (_private, camelCase):
        with pytest.raises(ValueError, match="lower-case identifier"):
            public(function)
    with pytest.raises(TypeError):
        service("ok")(lambda: None)  # type: ignore[type-var]
