"""The method registry: declared roles, default deny, strict params, wrapped handlers."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import attrs
import pytest
import trio

from omnitron._log import capture_logs
from omnitron.rpc import (
    Call,
    Conflict,
    Dispatcher,
    ErrorCode,
    Len,
    Name,
    NotFound,
    Peer,
    Range,
    RemoteError,
    Role,
    Text,
)
from omnitron.rpc._protocol import Request, Response

ADMIN = Peer(transport="unix", role=Role.ADMIN, uid=1000, pid=42)


def request(method: str, /, *, msgid: int = 1, params: dict[str, object] | None = None) -> Request:
    return Request(msgid=msgid, method=method, params=params or {})


async def dispatch(
    dispatcher: Dispatcher, method: str, *, peer: Peer = ADMIN, **params: object
) -> Response:
    return await dispatcher.dispatch(request(method, params=params), peer=peer)


def error_of(response: Response) -> tuple[str, str]:
    assert response.error is not None, response
    return response.error.code, response.error.message


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@attrs.frozen
class AppInfo:
    name: str
    status: Color
    restarts: int


def typed_dispatcher() -> Dispatcher:
    dispatcher = Dispatcher()

    @dispatcher.method("app.stop", role=Role.OPERATOR)
    async def stop(
        call: Call,
        *,
        name: Name,
        timeout: Annotated[float, Range(ge=0)] = 10.0,  # noqa: ASYNC109 - an RPC param
        count: Annotated[int, Range(ge=1, le=100)] = 1,
        force: bool = False,
        note: str | None = None,
        tags: Annotated[list[Name], Len(max=4)] = [],  # noqa: B006 - never mutated
        env: dict[str, str] | None = None,
        mode: Literal["graceful", "kill"] = "graceful",
        color: Color = Color.RED,
        payload: object = None,
        blob: bytes = b"",
    ) -> dict[str, Any]:
        """Stop an app."""
        await trio.lowlevel.checkpoint()
        return {
            "name": name,
            "timeout": timeout,
            "count": count,
            "force": force,
            "note": note,
            "tags": tags,
            "env": env,
            "mode": mode,
            "color": color,
            "payload": payload,
            "blob": blob,
        }

    return dispatcher


# --------------------------------------------------------------------------- registration


def test_registering_without_a_role_is_impossible() -> None:
    """AU-13: the role is a required keyword; strings or ints are not roles."""
    dispatcher = Dispatcher()

    async def handler(call: Call) -> None:
        pass

    with pytest.raises(TypeError):
        dispatcher.register("app.list", handler)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        dispatcher.method("app.list")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="role must be a Role"):
        dispatcher.register("app.list", handler, role="admin")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="role must be a Role"):
        dispatcher.register("app.list", handler, role=3)  # type: ignore[arg-type]
    assert dispatcher.lookup("app.list") is None


def test_every_registered_method_declares_a_role() -> None:
    """AU-13, over the registry every test here builds."""
    for dispatcher in (Dispatcher(), typed_dispatcher()):
        methods = dispatcher.methods()
        assert methods
        for info in methods:
            assert isinstance(info.role, Role), info.name


def test_daemon_ping_is_the_only_builtin_and_is_anonymous() -> None:
    assert [(m.name, m.role) for m in Dispatcher().methods()] == [("daemon.ping", Role.ANONYMOUS)]
    assert Dispatcher(ping=False).methods() == ()


@pytest.mark.parametrize(
    "name",
    [
        "_private",
        "a.b.c",
        "__class__",
        "status.__init__",
        "",
        "x" * 10_000,
        "App.Get",
        "app",
        "a-b.c",
    ],
)
def test_method_names_must_be_service_dot_method(name: str) -> None:
    async def handler(call: Call) -> None:
        pass

    with pytest.raises(ValueError, match=r"service\.method"):
        Dispatcher().register(name, handler, role=Role.ADMIN)


def test_duplicate_registration_is_an_error() -> None:
    dispatcher = Dispatcher()

    async def handler(call: Call) -> None:
        pass

    with pytest.raises(ValueError, match="already registered"):
        dispatcher.register("daemon.ping", handler, role=Role.ANONYMOUS)


def test_handler_signatures_are_checked_at_registration() -> None:
    dispatcher = Dispatcher()

    async def positional(call: Call, name: str) -> None:
        pass

    async def variadic(call: Call, **kwargs: object) -> None:
        pass

    async def unannotated(call, *, name):  # type: ignore[no-untyped-def]
        pass

    async def unsupported(call: Call, *, when: complex) -> None:
        pass

    async def no_call(*, name: str) -> None:
        pass

    async def bad_marker(call: Call, *, flag: Annotated[bool, Len(max=3)]) -> None:
        pass

    def not_async(call: Call) -> None:
        pass

    cases: list[tuple[Any, str]] = [
        (positional, "keyword-only"),
        (variadic, "keyword-only"),
        (unannotated, "no type annotation"),
        (unsupported, "unsupported annotation"),
        (no_call, "first positional"),
        (bad_marker, "Len/Match"),
        (not_async, "async function"),
    ]
    for handler, match in cases:
        with pytest.raises(TypeError, match=match):
            dispatcher.register("app.get", handler, role=Role.VIEWER)


def test_method_info_describes_params() -> None:
    info = typed_dispatcher().lookup("app.stop")
    assert info is not None
    assert info.summary == "Stop an app."
    params = {p.name: p for p in info.params}
    assert params["name"].required
    assert not params["timeout"].required
    assert params["timeout"].default == 10.0
    assert params["timeout"].expects == "a number >= 0"


@pytest.mark.parametrize("error_type_code", ["lower", "AB", "BUSY", "X" * 60, "NOT-FOUND"])
def test_domain_error_codes_are_validated(error_type_code: str) -> None:
    class Domain(RemoteError):
        code = error_type_code

    with pytest.raises(ValueError, match="code"):
        Dispatcher(error_types=[Domain])


# --------------------------------------------------------------------------- roles


def peer(role: Role) -> Peer:
    return Peer(transport="tcp", role=role)


async def test_role_matrix_is_exactly_the_declared_one() -> None:
    """AU-12, generated from the registry: every method x every role."""
    dispatcher = Dispatcher()
    for role in Role:

        async def handler(call: Call) -> str:
            await trio.lowlevel.checkpoint()
            return "ok"

        if role is not Role.ANONYMOUS:
            dispatcher.register(f"test.need_{role.label}", handler, role=role)
    for info in dispatcher.methods():
        for role in Role:
            response = await dispatch(dispatcher, info.name, peer=peer(role))
            if role >= info.role:
                assert response.error is None, (info.name, role)
            elif role is Role.ANONYMOUS:
                assert error_of(response)[0] == ErrorCode.UNAUTHENTICATED, (info.name, role)
            else:
                code, message = error_of(response)
                assert code == ErrorCode.FORBIDDEN, (info.name, role)
                assert f"requires role {info.role.label}" in message
                assert response.error is not None
                assert response.error.data == {"required_role": info.role.label}


async def test_unauthenticated_reply_is_the_same_for_missing_and_existing_methods() -> None:
    """AU-01 / RP-11: before auth, nothing reveals which methods exist."""
    dispatcher = typed_dispatcher()
    anonymous = peer(Role.ANONYMOUS)
    existing = await dispatch(dispatcher, "app.stop", peer=anonymous, name="x")
    missing = await dispatch(dispatcher, "app.nope", peer=anonymous)
    assert existing.error == missing.error
    assert error_of(existing) == (ErrorCode.UNAUTHENTICATED, "authentication required")
    assert (await dispatch(dispatcher, "daemon.ping", peer=anonymous)).result == {"pong": True}


@pytest.mark.parametrize(
    "name",
    ["_private", "a.b.c", "__class__", "status.__init__", "", "x" * 10_000, "daemon.__dict__"],
)
async def test_unknown_methods_are_not_found_without_traversal(name: str) -> None:
    """RP-11: an explicit registry, and the reply never echoes 10 KB of name."""
    code, message = error_of(await dispatch(typed_dispatcher(), name))
    assert code == ErrorCode.METHOD_NOT_FOUND
    assert len(message) < 100


# --------------------------------------------------------------------------- params


async def test_valid_params_are_converted_and_defaults_applied() -> None:
    response = await dispatch(
        typed_dispatcher(),
        "app.stop",
        name="api",
        timeout=3,
        tags=["a", "b"],
        env={"PORT": "80"},
        mode="kill",
        color="blue",
        payload=[1, {"x": None}],
        blob=b"\x00",
    )
    assert response.error is None
    assert response.result == {
        "name": "api",
        "timeout": 3.0,
        "count": 1,
        "force": False,
        "note": None,
        "tags": ["a", "b"],
        "env": {"PORT": "80"},
        "mode": "kill",
        "color": "blue",  # enums are unstructured to their value
        "payload": [1, {"x": None}],
        "blob": b"\x00",
    }


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"name": 5}, "params.name: expected a name"),
        ({"name": "api", "timeout": [1]}, "params.timeout: expected a number >= 0, got an array"),
        ({"name": "api", "timeout": -1}, "params.timeout: expected a number >= 0, got -1"),
        (
            {"name": "api", "timeout": float("nan")},
            "params.timeout: expected a number >= 0, got nan",
        ),
        (
            {"name": "api", "timeout": float("inf")},
            "params.timeout: expected a number >= 0, got inf",
        ),
        ({"name": "api", "timeout": "5"}, "params.timeout: expected a number >= 0, got '5'"),
        ({"name": "api", "timeout": True}, "params.timeout: expected a number >= 0, got true"),
        ({"name": "api", "count": True}, "params.count: expected an integer >= 1 and <= 100"),
        ({"name": "api", "count": 2**64 - 1}, "params.count: expected an integer"),
        ({"name": "api", "count": 1.0}, "params.count: expected an integer"),
        ({"name": "api", "force": 1}, "params.force: expected a boolean, got 1"),
        (
            {"name": "api", "note": 3},
            "params.note: expected a string of at most 4096 characters or nil",
        ),
        ({"name": "api", "tags": ["ok", "../x"]}, "params.tags[1]: expected a name"),
        ({"name": "api", "tags": ["a"] * 5}, "params.tags: expected an array of at most 4 items"),
        ({"name": "api", "env": {"A": 1}}, "params.env.A: expected a string"),
        ({"name": "api", "mode": "nuke"}, "params.mode: expected one of 'graceful', 'kill'"),
        ({"name": "api", "color": "green"}, "params.color: expected one of 'red', 'blue'"),
        ({"name": "api", "blob": "text"}, "params.blob: expected binary"),
        ({}, "params.name: missing"),
        ({"name": "api", "nmae": "x"}, "params.nmae: unknown parameter; did you mean 'name'?"),
        ({"name": "api", "zzz": 1}, "params.zzz: unknown parameter (app.stop takes: name, timeout"),
    ],
)
async def test_bad_params_are_invalid_params_with_a_path(
    params: dict[str, object], expected: str
) -> None:
    """RP-12: exact types, bounds, unknown params rejected; nothing executed."""
    stop = request("app.stop", params=params)
    code, message = error_of(await typed_dispatcher().dispatch(stop, peer=ADMIN))
    assert code == ErrorCode.INVALID_PARAMS
    assert expected in message


async def test_every_problem_is_reported_and_the_first_param_named() -> None:
    response = await dispatch(typed_dispatcher(), "app.stop", timeout=-1, bogus=1)
    code, message = error_of(response)
    assert code == ErrorCode.INVALID_PARAMS
    assert "params.bogus" in message
    assert "params.name: missing" in message
    assert "params.timeout" in message
    assert response.error is not None
    assert response.error.data == {"param": "bogus"}


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "x\0", "-rf", "a:b", "x" * 65, ".", "", "a..b", "\x1b[2J"]
)
async def test_names_follow_the_config_rule(name: str) -> None:
    """CF-04's name rule applies to names arriving over RPC too (and blocks RP-23)."""
    code, _ = error_of(await dispatch(typed_dispatcher(), "app.stop", name=name))
    assert code == ErrorCode.INVALID_PARAMS


async def test_field_length_caps() -> None:
    """RP-13: a 5 MB name or note is refused by the per-field caps; messages stay short."""
    dispatcher = typed_dispatcher()
    oversized: list[dict[str, object]] = [
        {"name": "a" * 5_000_000},
        {"name": "api", "note": "n" * 5_000_000},
    ]
    for params in oversized:
        big = request("app.stop", params=params)
        code, message = error_of(await dispatcher.dispatch(big, peer=ADMIN))
        assert code == ErrorCode.INVALID_PARAMS
        assert "a string of 5000000 characters" in message
        assert len(message) < 300
    ok = await dispatch(dispatcher, "app.stop", name="a" * 64, note="n" * 4096)
    assert ok.error is None


async def test_text_alias_and_unknown_keys_of_other_types() -> None:
    dispatcher = Dispatcher()

    @dispatcher.method("app.note", role=Role.OPERATOR)
    async def note(call: Call, *, text: Text) -> int:
        await trio.lowlevel.checkpoint()
        return len(text)

    assert (await dispatch(dispatcher, "app.note", text="hi")).result == 2
    response = await dispatcher.dispatch(
        Request(msgid=1, method="app.note", params={b"text": "x"}),  # type: ignore[dict-item]
        peer=ADMIN,
    )
    assert "keys must be strings" in error_of(response)[1]


# --------------------------------------------------------------------------- handlers


async def test_remote_errors_from_handlers_travel_as_data() -> None:
    dispatcher = Dispatcher()

    @dispatcher.method("app.get", role=Role.VIEWER)
    async def get(call: Call, *, name: Name) -> None:
        await trio.lowlevel.checkpoint()
        if name == "busy":
            raise Conflict("app 'busy' is already starting", data={"app": name})
        raise NotFound(f"no app named {name!r}")

    response = await dispatch(dispatcher, "app.get", name="api")
    assert error_of(response) == (ErrorCode.NOT_FOUND, "no app named 'api'")
    response = await dispatch(dispatcher, "app.get", name="busy")
    assert response.error is not None
    assert response.error.code == ErrorCode.CONFLICT
    assert response.error.data == {"app": "busy"}


async def test_a_handler_that_raises_becomes_internal_error_with_a_correlation_id() -> None:
    """RP-15: the traceback goes to the log, the client gets only an id."""
    dispatcher = Dispatcher()

    @dispatcher.method("app.crash", role=Role.OPERATOR)
    async def crash(call: Call) -> None:
        await trio.lowlevel.checkpoint()
        raise KeyError("secret-value-in-exception")

    with capture_logs() as logs:
        response = await dispatch(dispatcher, "app.crash")
    assert response.error is not None
    assert response.error.code == ErrorCode.INTERNAL_ERROR
    assert "secret-value" not in response.error.message
    assert "KeyError" not in response.error.message
    correlation_id = response.error.correlation_id
    assert correlation_id is not None
    assert len(correlation_id) == 12
    [entry] = [e for e in logs if e["event"] == "rpc_handler_failed"]
    assert entry["correlation_id"] == correlation_id
    assert entry["method"] == "app.crash"
    assert entry["log_level"] == "error"
    assert isinstance(entry["exc_info"], KeyError)


async def test_unregistered_domain_codes_are_internal_errors() -> None:
    class AppCrashed(RemoteError):
        code = "APP_CRASHED"

    async def handler(call: Call) -> None:
        await trio.lowlevel.checkpoint()
        raise AppCrashed("api crashed")

    undeclared = Dispatcher()
    undeclared.register("app.run", handler, role=Role.OPERATOR)
    with capture_logs():
        code, _ = error_of(await dispatch(undeclared, "app.run"))
    assert code == ErrorCode.INTERNAL_ERROR

    declared = Dispatcher(error_types=[AppCrashed])
    declared.register("app.run", handler, role=Role.OPERATOR)
    assert error_of(await dispatch(declared, "app.run")) == ("APP_CRASHED", "api crashed")
    assert declared.error_types == {"APP_CRASHED": AppCrashed}


async def test_records_and_enums_are_unstructured() -> None:
    dispatcher = Dispatcher()

    @dispatcher.method("app.info", role=Role.VIEWER)
    async def info(call: Call) -> list[AppInfo]:
        await trio.lowlevel.checkpoint()
        return [AppInfo(name="api", status=Color.BLUE, restarts=2)]

    response = await dispatch(dispatcher, "app.info")
    assert response.result == [{"name": "api", "status": "blue", "restarts": 2}]


async def test_the_call_carries_the_peer_and_needs_a_connection_for_streams() -> None:
    dispatcher = Dispatcher()
    seen: list[Call] = []

    @dispatcher.method("app.whoami", role=Role.VIEWER)
    async def whoami(call: Call) -> int | None:
        await trio.lowlevel.checkpoint()
        seen.append(call)
        with pytest.raises(RuntimeError, match="not attached"):
            call.open_stream("logs.line")
        with pytest.raises(RuntimeError, match="not attached"):
            call.start_soon(trio.sleep, 0)
        return call.peer.uid

    response = await dispatcher.dispatch(request("app.whoami", msgid=9), peer=ADMIN)
    assert response == Response(msgid=9, result=1000)
    assert seen[0].method == "app.whoami"
    assert seen[0].msgid == 9


async def test_cancellation_is_not_turned_into_an_error_reply() -> None:
    dispatcher = Dispatcher()

    @dispatcher.method("app.hang", role=Role.VIEWER)
    async def hang(call: Call) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(0.01) as scope:
        await dispatch(dispatcher, "app.hang")
    assert scope.cancelled_caught
