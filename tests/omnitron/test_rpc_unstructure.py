"""Replies are unstructured without cattrs, into what cattrs' msgpack converter makes.

The reference is cattrs itself (``cattrs.preconf.msgpack``, still a dependency of
the CLI): every comparison checks the Python values, their types, and their
msgpack bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import json
import math
import shutil
import signal
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import msgpack
import pytest
import trio
from cattrs.preconf.msgpack import make_converter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from orchestrator_harness import open_orchestrator

from omnitron._log import capture_logs
from omnitron.config import define_ecosystem
from omnitron.config._bootstrap import WorkerSlot
from omnitron.daemon._health import ProcessHealth
from omnitron.daemon._logs import LogLine
from omnitron.daemon._records import AppEvent, AppRecord, EventKind, ProcessRecord
from omnitron.daemon._service import build_dispatcher
from omnitron.daemon._watch import Outcome, WatchRecord
from omnitron.rpc import Call, Dispatcher, ErrorCode, Role, _dispatch, open_unix_server
from omnitron.rpc._auth import IssuedToken
from omnitron.rpc._dispatch import Peer
from omnitron.rpc._unstructure import unstructure
from omnitron.state import (
    AppMode,
    AppState,
    AppStatus,
    DaemonState,
    DesiredStatus,
    ProcessIdentity,
    ProcessState,
)

CATTRS: Callable[[object], object] = make_converter().unstructure
"""The reference: what the daemon used before."""

WAIT = 30.0
"""Generous bound for real processes and a client in a subprocess."""


def shape(value: object) -> object:
    """``value`` with the type of every part made explicit (``1 == 1.0 == True``)."""
    if isinstance(value, dict):
        return ("dict", [(shape(k), shape(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__qualname__, [shape(v) for v in value])
    return (type(value).__qualname__, repr(value))


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def assert_as_cattrs(value: object) -> object:
    ours, theirs = unstructure(value), CATTRS(value)
    assert shape(ours) == shape(theirs)
    assert pack(ours) == pack(theirs)
    return ours


# --------------------------------------------------------------------------- the records


def ecosystem(base: Path) -> Any:
    return define_ecosystem(
        project="records",
        apps=[
            {
                "name": "api",
                "command": ["sleep", "3600"],
                "env": {"PORT": "8000", "API_TOKEN": "secret:api"},
                "instances": 2,
                "depends_on": ["db"],
                "health": {"tcp": 8000, "interval": "5s"},
                "restart_policy": {"max_restarts": 3, "window": "60s"},
                "max_memory": "50MB",
                "watch": {"directory": "."},
                "stop_signal": "HUP",
            },
            {"name": "db", "command": ["sleep", "3600"], "critical": True},
        ],
        base_dir=base,
    )


def test_the_daemons_records_unstructure_as_with_cattrs(tmp_path: Path) -> None:
    config = ecosystem(tmp_path)
    events = tuple(
        AppEvent(
            time=1_700_000_000.5 + n,
            kind=kind,
            instance=n % 2,
            pid=4000 + n,
            reason="exited with code 3",
            delay=0.5,
            killed=n % 2 == 0,
            escaped=(n, n + 1),
            previous=1,
            instances=2,
        )
        for n, kind in enumerate(EventKind)
    )
    processes = {
        0: ProcessRecord(
            instance=0,
            pid=4242,
            status=AppStatus.ONLINE,
            restarts=1,
            ready_at=12.5,
            last_exit="killed by SIGKILL",
            identity=ProcessIdentity(pid=4242, start_time=99.5, boot_id="b00t"),
            worker=WorkerSlot(process="users", index=0, socket="/run/w.sock"),
        ),
        1: ProcessRecord(instance=1),
    }
    record = AppRecord(
        config=config.apps[0],
        instances=2,
        desired=DesiredStatus.RUNNING,
        processes=processes,
        events=events,
    )
    state = DaemonState(
        apps=(
            AppState(
                name="api",
                mode=AppMode.CLASSIC,
                status=AppStatus.ONLINE,
                instances=2,
                processes=(ProcessState(name="api", pid=4242, start_time=99.5, boot_id="b"),),
            ),
            AppState(name="db", desired=DesiredStatus.STOPPED, status=AppStatus.STOPPED),
        ),
        stop_reason="shutdown requested over RPC",
    )
    values = [
        config,
        record,
        state,
        *events,
        WatchRecord(app="api", watching=True, last_paths=("a.py",), last_result=Outcome.FAILED),
        ProcessHealth(app="api", instance=0, pid=4242, kind="tcp", status="healthy"),
        IssuedToken(
            token_id="t1", subject="ci", role="viewer", issued_at=1, expires_at=2, revoked=True
        ),
        LogLine(1.5, "api", 0, "out", "hello"),
        Peer(transport="unix", role=Role.ADMIN, uid=1000, pid=42),
        signal.Signals.SIGHUP,
    ]
    for value in values:
        assert_as_cattrs(value)
    # What they give, spelled out once.
    event = assert_as_cattrs(events[0])
    assert event == {
        "time": 1_700_000_000.5,
        "kind": "online",
        "instance": 0,
        "pid": 4000,
        "reason": "exited with code 3",
        "delay": 0.5,
        "killed": True,
        "escaped": [0, 1],
        "previous": 1,
        "instances": 2,
    }
    app = assert_as_cattrs(config.apps[0])
    assert isinstance(app, dict)
    assert app["env"] == {"PORT": "8000", "API_TOKEN": "secret:api"}  # a MappingProxyType
    assert app["cwd"] == str(tmp_path)  # a Path
    assert app["stop_signal"] is signal.Signals.SIGHUP  # an IntEnum, packed as 1
    assert app["command"] == ["sleep", "3600"]
    assert assert_as_cattrs(LogLine(1.5, "api", None, "sys", "x")) == (1.5, "api", None, "sys", "x")


# --------------------------------------------------------------------------- every kind


class Color(enum.Enum):
    RED = "red"
    PAIR = (1, "x")


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Word(enum.StrEnum):
    YES = "yes"


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


class Typed(enum.Enum):
    _value_: tuple[Color, int]
    FIRST = (Color.RED, 1)


@attrs.frozen
class Leaf:
    name: str
    color: Color
    _hidden: Any = 0
    derived: int = attrs.field(init=False, default=7)  # not in cattrs' dict either


@attrs.define
class Node:
    children: list[Any]
    meta: dict[str, Any]
    when: datetime.datetime | None = None


@dataclasses.dataclass
class Box:
    item: Any
    count: int = dataclasses.field(init=False, default=1)


class Cell:
    """A class neither knows: passed through as it is."""


def test_each_kind_of_value_unstructures_as_with_cattrs() -> None:
    utc = datetime.UTC
    values: list[object] = [
        *(None, True, 0, -(2**63), 2**64 - 1, 1.5, math.inf, "text", b"\x00bytes"),
        *(Color.RED, Color.PAIR, Level.HIGH, Word.YES, Perm.READ | Perm.WRITE, Typed.FIRST),
        (1, (2, Color.RED)),
        [Level.LOW, [Word.YES]],
        {3, 1, 2},
        frozenset({"a"}),
        collections.deque([Color.RED]),
        {Color.RED: {Level.LOW: [Color.RED]}, 1: None},
        collections.OrderedDict(a=Color.RED),
        collections.Counter("aab"),
        collections.defaultdict(list, a=[Color.RED]),
        types.MappingProxyType({"k": frozenset({Color.RED})}),
        datetime.datetime(2026, 12, 2, 18, 0, 0, 250_000, tzinfo=utc),
        datetime.datetime(
            2026, 12, 2, 18, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=5))
        ),
        datetime.datetime(2026, 12, 2, 18, 0, 0),  # naive: local time, as .timestamp() says
        datetime.date(2026, 12, 2),
        Path("/srv/app"),
        Leaf("a", Color.PAIR, hidden=(Color.RED,)),
        Node(children=[Leaf("b", Color.RED), Box(Level.LOW)], meta={"m": {1, 2}}),
        Node(children=[], meta={}, when=datetime.datetime(2026, 1, 1, tzinfo=utc)),
        LogLine(1.5, "api", None, "sys", "daemon line"),
    ]
    for value in values:
        assert_as_cattrs(value)
    # Passed through as they are, by both (what msgpack cannot pack then fails
    # when the reply is encoded: see the server test below).
    passed = [
        collections.namedtuple("Plain", "a b")(1, Color.RED),
        type("Items", (list,), {})([Color.RED]),
        bytearray(b"ba"),
        PurePosixPath("/pure"),
        range(3),
        1j,
        datetime.timedelta(seconds=1),
        Cell(),
    ]
    for value in passed:
        assert unstructure(value) is value
        assert CATTRS(value) is value
    assert unstructure({"c": passed[-1]})["c"] is passed[-1]  # type: ignore[index]


def test_a_key_that_becomes_a_list_fails_as_with_cattrs() -> None:
    with pytest.raises(TypeError, match="unhashable"):
        CATTRS({frozenset({1}): 1})
    with pytest.raises(TypeError, match="unhashable"):
        unstructure({frozenset({1}): 1})


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.sampled_from([*Color, *Level, *Word, Perm.READ, Perm.READ | Perm.WRITE, Typed.FIRST]),
    st.datetimes(timezones=st.just(datetime.UTC)),
    st.datetimes(min_value=datetime.datetime(1971, 1, 1), max_value=datetime.datetime(2100, 1, 1)),
    st.dates(),
    st.builds(Path, st.sampled_from(["/", "/srv", "rel/a"])),
)
KEYS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=8),
    st.sampled_from([*Color, *Level, *Word]),
)


def containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.lists(inner, max_size=4).map(collections.deque),
        st.frozensets(KEYS, max_size=4),
        st.sets(KEYS, max_size=4),
        st.dictionaries(KEYS, inner, max_size=4),
        st.dictionaries(st.text(max_size=4), inner, max_size=4).map(types.MappingProxyType),
        st.builds(Leaf, st.text(max_size=4), st.sampled_from(list(Color)), inner),
        st.builds(
            Node,
            st.lists(inner, max_size=3),
            st.dictionaries(st.text(max_size=4), inner, max_size=3),
            st.none() | st.datetimes(timezones=st.just(datetime.UTC)),
        ),
        st.builds(Box, inner),
        st.builds(
            LogLine,
            st.floats(),
            st.text(max_size=4),
            st.none() | st.integers(0, 9),
            st.sampled_from(["out", "err", "sys"]),
            st.text(max_size=8),
        ),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(SCALARS, containers, max_leaves=30))
def test_generated_nested_values_unstructure_as_with_cattrs(value: object) -> None:
    assert_as_cattrs(value)


# --------------------------------------------------------------------------- the dispatcher


def test_the_default_dispatcher_unstructures_without_cattrs() -> None:
    assert Dispatcher()._unstructure is unstructure


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    directory = tempfile.mkdtemp(prefix="omu-", dir="/tmp")  # AF_UNIX paths are short
    try:
        yield Path(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def raw_call(sock: trio.SocketStream, unpacker: Any, msgid: int, method: str) -> Any:
    await sock.send_all(msgpack.packb([0, msgid, method, [{}]]))
    while True:
        for message in unpacker:
            return message
        data = await sock.receive_some()
        assert data, "the server closed the connection"
        unpacker.feed(data)


async def test_a_reply_that_cannot_be_packed_is_an_internal_error(sock_dir: Path) -> None:
    """A record holding a value msgpack cannot pack: this call's INTERNAL_ERROR,
    naming the type in the log; the connection goes on."""
    dispatcher = Dispatcher()

    @dispatcher.method("test.odd", role=Role.VIEWER)
    async def odd(call: Call) -> Leaf:
        await trio.lowlevel.checkpoint()
        return Leaf("a", Color.RED, hidden=Cell())

    @dispatcher.method("test.bad_key", role=Role.VIEWER)
    async def bad_key(call: Call) -> dict[object, int]:
        await trio.lowlevel.checkpoint()
        return {(1, 2): 3}  # a key that unstructures to a list

    path = sock_dir / "d.sock"
    async with open_unix_server(path, dispatcher):
        with trio.fail_after(WAIT):
            sock = await trio.open_unix_socket(str(path))
            unpacker = msgpack.Unpacker(raw=False)
            with capture_logs() as logs:
                _, _, odd_error, _ = await raw_call(sock, unpacker, 1, "test.odd")
                _, _, key_error, _ = await raw_call(sock, unpacker, 2, "test.bad_key")
            assert await raw_call(sock, unpacker, 3, "daemon.ping") == [1, 3, None, {"pong": True}]
            await sock.aclose()
    assert odd_error["code"] == key_error["code"] == ErrorCode.INTERNAL_ERROR
    [unencodable] = [e for e in logs if e["event"] == "rpc_result_unencodable"]
    assert "Cell" in unencodable["error"]
    assert unencodable["correlation_id"] == odd_error["correlation_id"]
    [failed] = [e for e in logs if e["event"] == "rpc_handler_failed"]
    assert failed["correlation_id"] == key_error["correlation_id"]


# --------------------------------------------------------------------------- the daemon's replies

CALLS: list[tuple[str, dict[str, object]]] = [
    ("daemon.list", {}),
    ("daemon.get_app", {"name": "api"}),
    ("daemon.inspect", {"name": "api"}),
    ("daemon.health", {}),
    ("daemon.events", {}),
    ("daemon.graph", {}),
    ("daemon.env", {"name": "api"}),
    ("daemon.metrics", {"history": 3}),
    ("daemon.logs", {"apps": ["api"]}),
    ("daemon.watch_status", {}),
    ("secret.list", {}),
    ("daemon.reset", {"name": "all"}),
    ("daemon.signal", {"name": "db", "signal": "CONT"}),
    ("daemon.stop_app", {"name": "db"}),
    ("daemon.start_app", {"name": "db"}),
    ("daemon.status", {}),
]

CLIENT = r"""
import asyncio, json, sys
from aio_msgpack_rpc import Client

async def main():
    reader, writer = await asyncio.open_unix_connection(sys.argv[1])
    client = Client(reader, writer, response_timeout=30)
    replies = []
    for method, params in json.loads(sys.argv[2]):
        replies.append(await client.call(method, params))
    client.close()
    print(json.dumps(replies))

asyncio.run(main())
"""
"""A msgpack-rpc client this project did not write, in its own process."""


async def test_the_daemons_replies_are_what_cattrs_made_of_them(
    tmp_path: Path, sock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real service and its real registry, served on a real socket, called by
    # a third-party client: every reply that goes through the unstructure step is
    # compared with cattrs' result for the same value as the call is answered.
    compared: list[object] = []

    def compare(value: object) -> object:
        compared.append(assert_as_cattrs(value))
        return unstructure(value)

    monkeypatch.setattr(_dispatch, "unstructure", compare)
    apps = [
        {"name": "db", "command": ["sleep", "3600"]},
        {
            "name": "api",
            "command": ["sleep", "3600"],
            "instances": 2,
            "depends_on": ["db"],
            "env": {"PORT": "8000", "API_TOKEN": "t0ken"},
            "health": {"command": ["true"], "interval": "1s"},
        },
    ]
    async with open_orchestrator(tmp_path, apps) as (orchestrator, service):
        dispatcher = build_dispatcher(service)
        with trio.fail_after(WAIT):
            await orchestrator.wait_launched()
        path = sock_dir / "d.sock"
        async with open_unix_server(path, dispatcher):
            with trio.fail_after(WAIT):
                result = await trio.run_process(
                    [sys.executable, "-c", CLIENT, str(path), json.dumps(CALLS)],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
    assert result.returncode == 0, result.stderr.decode()
    replies = json.loads(result.stdout)
    # daemon.status is encoded once per tick by the service (an Encoded result):
    # it skips the unstructure step.
    assert json.loads(json.dumps(compared)) == replies[:-1]
    by_method = dict(zip((method for method, _ in CALLS), replies, strict=True))
    assert [app["name"] for app in by_method["daemon.list"]] == ["db", "api"]
    assert by_method["daemon.inspect"]["spec"]["command"] == ["sleep", "3600"]
    assert by_method["daemon.env"] == {"API_TOKEN": "<redacted>", "PORT": "8000"}
    assert by_method["daemon.stop_app"] == {"stopped": ["db"]}
    assert by_method["daemon.status"]["apps"][0]["name"] == "db"
