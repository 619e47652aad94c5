"""The daemon's entry point imports what the daemon uses, and no more.

Each check runs in a fresh interpreter (a subprocess): ``sys.modules`` of this
test process has everything the test suite imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

NOT_IN_THE_DAEMON = (
    "click",
    "omnitron.cli",
    "asyncio",
    "asyncio.events",
    "ssl",
    "_ssl",
    "idna",
    "_hashlib",
    "rich",
    "greenlet",
    "gzip",
    "difflib",
    "psutil",
    "locale",
    "tempfile",
    "secrets",
    "base64",
    "omnitron._system",
    "omnitron.worker",
    "omnitron.daemon._workers",
    "omnitron.daemon._worker_link",
    "omnitron.rpc._client",
    "cattrs",
    "omnitron.config._serialize",
    "logging.handlers",
    "pickle",
    "dataclasses",
)
"""Modules the daemon process must not load: the CLI, the ones it defers or blocks,
what only worker apps need (``omnitron._system``, ``omnitron.worker``, the worker
client and links), ``logging.handlers`` and ``pickle`` (which it imports), and cattrs
(replies are unstructured by ``omnitron.rpc._unstructure``; the CLI's TOML output
alone uses cattrs); ``secrets`` and ``base64`` load with their first use (a token
issued, a TLS fingerprint, a secret stored)."""

THIRD_PARTY = frozenset(
    {
        *("trio", "outcome", "sniffio", "sortedcontainers", "attr", "attrs"),
        *("typing_extensions", "msgpack"),
        *("omnitron", "supervision"),
    }
)
"""The packages outside the standard library the daemon may import (``site``'s own
hooks aside)."""

NOT_WITHOUT_A_PLANE = (
    *NOT_IN_THE_DAEMON,  # tempfile too: the state file's writes do without it
    "cryptography",
    "jwt",
    "prometheus_client",
    "bz2",
    "lzma",
    "uuid",
    "omnitron.rpc._tls",
    "omnitron.rpc._ws",
    "trio_websocket",
)
"""Nor, once running with no TCP or WebSocket plane, what only planes, tokens and
exposition need."""


LOADED = """\
import json, sys


def loaded(name):
    module = sys.modules.get(name)
    return module is not None and type(module).__name__ != "_Deferred"
"""


def run_python(code: str) -> dict[str, object]:
    """Run ``code`` after :data:`LOADED` in a fresh interpreter; its last line as JSON."""
    result = subprocess.run(
        [sys.executable, "-c", LOADED + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_the_daemon_entry_point_imports_neither_the_cli_nor_deferred_modules() -> None:
    found = run_python(
        f"""
        from omnitron.daemon import _entry
        _entry.defer_unused_modules()
        import omnitron.daemon._main
        print(json.dumps({{name: loaded(name) for name in {NOT_IN_THE_DAEMON!r} + ("trio",)}}))
        """
    )
    assert found == {**dict.fromkeys(NOT_IN_THE_DAEMON, False), "trio": True}


def test_the_daemon_imports_no_package_beyond_its_dependencies() -> None:
    found = run_python(
        """
        before = {name.partition(".")[0] for name in sys.modules}  # the interpreter and site
        from omnitron.daemon import _entry
        _entry.defer_unused_modules()
        import omnitron.daemon._main
        top = {name.partition(".")[0] for name in list(sys.modules) if loaded(name)}
        cython = {name for name in top if "cython" in name}  # msgpack's compiled runtime
        print(json.dumps(sorted(top - before - cython - set(sys.stdlib_module_names))))
        """
    )
    assert set(found) <= THIRD_PARTY, sorted(set(found) - THIRD_PARTY)
    assert {"trio", "omnitron", "supervision"} <= set(found)


POINT = """\
import attrs


@attrs.frozen
class Point:
    x: int = attrs.field(validator=attrs.validators.instance_of(int))


def make():
    return Point("one")  # the calling line
"""


def test_attrs_generated_source_is_not_kept(tmp_path: Path) -> None:
    # attrs stores the source of every method it generates in linecache.cache
    # (0.6 MiB for the daemon's classes); the daemon never reads it. Tracebacks
    # still name the generated method and show the lines of real files.
    (tmp_path / "point.py").write_text(POINT)
    found = run_python(
        f"""
        from omnitron.daemon import _entry
        _entry.defer_unused_modules()
        import linecache, traceback
        import omnitron.daemon._main
        sys.path.insert(0, {str(tmp_path)!r})
        from point import Point, make

        try:
            make()
        except TypeError:
            text = traceback.format_exc()
        print(json.dumps({{
            "generated": [key for key in linecache.cache if key.startswith("<attrs generated")],
            "works": Point(1) == Point(1) and repr(Point(2)) == "Point(x=2)",
            "caller": "# the calling line" in text,
            "frame": 'File "<attrs generated' in text and "in __init__" in text,
            "error": text.strip().splitlines()[-1],
            "own_source": "import attrs" in linecache.getline(sys.modules["point"].__file__, 1),
        }}))
        """
    )
    assert found == {
        "generated": [],
        "works": True,
        "caller": True,
        "frame": True,
        "error": found["error"],
        "own_source": True,
    }
    assert "'x' must be <class 'int'>" in str(found["error"])


def test_without_the_entry_attrs_keeps_its_generated_source() -> None:
    # What the filter is for: if attrs stops keeping it, this fails and the filter can go.
    found = run_python(
        """
        import linecache
        import trio
        print(json.dumps({"kept": sum(k.startswith("<attrs generated") for k in linecache.cache)}))
        """
    )
    assert found["kept"] > 20  # type: ignore[operator]


def test_without_the_stand_ins_trio_imports_ssl() -> None:
    # What the deferral is for: if Trio stops importing ssl, this fails and the
    # stand-ins can go.
    found = run_python(
        """
        import trio
        print(json.dumps({"ssl": loaded("ssl")}))
        """
    )
    assert found == {"ssl": True}


def test_a_deferred_module_loads_on_first_use() -> None:
    found = run_python(
        """
        from omnitron.daemon import _entry
        already = [name for name in _entry.DEFERRED_MODULES if name in sys.modules]
        deferred = _entry.defer_unused_modules()
        import trio, trio._ssl
        before = loaded("ssl")
        stand_in = trio._ssl._stdlib_ssl
        bio = stand_in.MemoryBIO()  # first use: the real module is imported
        import ssl
        print(json.dumps({
            "deferred": deferred,
            "already": already,
            "before": before,
            "after": loaded("ssl"),
            "same_class": stand_in.MemoryBIO is ssl.MemoryBIO,
            "works": isinstance(bio, ssl.MemoryBIO),
            "context": type(ssl.create_default_context()).__name__,
        }))
        """
    )
    # Python 3.13 imports glob at start-up (pathlib): a module already loaded is
    # left as it is.
    already = found.pop("already")
    assert set(already) <= {"glob"}
    expected = [
        *("ssl", "idna", "bz2", "lzma", "gzip", "difflib"),
        *("locale", "tokenize", "glob", "unicodedata", "tempfile"),
    ]
    assert found == {
        "deferred": [name for name in expected if name not in already],
        "before": False,
        "after": True,
        "same_class": True,
        "works": True,
        "context": "SSLContext",
    }


def test_a_stand_in_that_loads_another_while_loading_does_not_deadlock() -> None:
    # tokenize does ``from token import ...``: with both deferred, loading the real
    # tokenize reads an attribute of token's stand-in under the loading lock.
    found = run_python(
        """
        import threading
        from omnitron.daemon import _entry
        deferred = _entry.defer_unused_modules(("token", "tokenize"))
        result = {}

        def load():
            import tokenize
            result["exact"] = tokenize.EXACT_TOKEN_TYPES["("] == tokenize.LPAR

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        thread.join(20)
        print(json.dumps({
            "deferred": deferred,
            "finished": not thread.is_alive(),
            **result,
            "real": loaded("token") and loaded("tokenize"),
        }))
        """
    )
    assert found == {
        "deferred": ["token", "tokenize"],
        "finished": True,
        "exact": True,
        "real": True,
    }


def test_hashing_works_without_openssls_hash_functions() -> None:
    found = run_python(
        """
        from omnitron.daemon import _entry
        _entry.defer_unused_modules()
        import hashlib, hmac
        from omnitron.state._codec import decode_state, encode_state
        from omnitron.state import DaemonState
        data = encode_state(DaemonState(apps=()), 3)
        print(json.dumps({
            "sha256": hashlib.sha256(b"abc").hexdigest()[:16],
            "hmac": hmac.new(b"k", b"m", "sha256").hexdigest()[:16],
            "generation": decode_state(data).generation,
            "openssl": loaded("_hashlib"),
        }))
        """
    )
    assert found == {
        "sha256": "ba7816bf8f01cfea",
        "hmac": "b60090e3052297ae",
        "generation": 3,
        "openssl": False,
    }


def test_importing_the_daemon_package_is_cheap() -> None:
    found = run_python(
        """
        import omnitron.daemon
        print(json.dumps({"trio": "trio" in sys.modules}))
        """
    )
    assert found == {"trio": False}


def test_bad_arguments_are_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "omnitron.daemon", "--home", "/tmp/x", "--bogus"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "omnitron: unexpected argument '--bogus'"


CONTROL_CALLS = (
    ("daemon.status", {}),
    ("daemon.list", {}),
    ("daemon.get_app", {"name": "a"}),
    ("daemon.inspect", {"name": "a"}),
    ("daemon.logs", {"apps": ["a"]}),
    ("daemon.events", {}),
    ("daemon.health", {}),
    ("daemon.graph", {}),
    ("daemon.metrics", {}),
    ("daemon.watch_status", {}),
    ("daemon.stop_app", {"name": "a"}),
    ("daemon.start_app", {"name": "a"}),
)
"""What a daemon is asked once its apps are started, over its control socket (a
plain msgpack-rpc exchange: ``socket`` and ``msgpack`` are loaded in it already)."""

RUN_DAEMON = """\
import os, threading
from omnitron.daemon import _entry

home, config = sys.argv[1], sys.argv[2]
progress, ready = os.pipe()


def call_the_daemon() -> list[object]:
    import msgpack
    import socket

    errors = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(60)
        sock.connect(os.path.join(home, "daemon.sock"))
        unpacker = msgpack.Unpacker()
        for msgid, (method, params) in enumerate(CONTROL_CALLS, start=1):
            sock.sendall(msgpack.packb([0, msgid, method, [params]]))
            reply = next(unpacker, None)
            while reply is None:
                data = sock.recv(65536)
                if not data:
                    raise EOFError(f"the daemon closed the connection after {method}")
                unpacker.feed(data)
                reply = next(unpacker, None)
            errors.append([method, reply[2]])
    return errors


def report() -> None:
    # "@started" on the progress pipe: the apps are started. Then call the
    # daemon, list what is loaded and stop the daemon as systemd would.
    with os.fdopen(progress, "rb") as lines:
        for line in lines:
            if line.startswith(b"@started"):
                break
    errors = call_the_daemon()
    names = sorted(name for name in list(sys.modules) if loaded(name))
    with open(os.path.join(home, "modules.json"), "w") as f:
        json.dump({"modules": names, "errors": errors}, f)
    os.kill(os.getpid(), 15)


threading.Thread(target=report, daemon=True).start()
code = _entry.main(["--home", home, "--config", config, "--ready-fd", str(ready)])
with open(os.path.join(home, "exit.json"), "w") as f:  # stdout went to logs/daemon.out
    json.dump({"code": code}, f)
"""


def test_a_running_daemon_without_planes_loads_no_crypto_tls_exposition_or_cattrs(
    tmp_path: Path,
) -> None:
    # The import closure of the daemon process itself, after start-up with an app,
    # the metrics sampler and the control socket running, and after the usual
    # calls (status, logs, stop, start, ...): planes, tokens and the Prometheus
    # exposition load only when configured or asked for, cattrs never.
    home = tmp_path / "h"
    config = tmp_path / "apps.toml"
    config.write_text('[[apps]]\nname = "a"\ncommand = ["sleep", "3600"]\n')
    script = f"{LOADED}CONTROL_CALLS = {CONTROL_CALLS!r}\n{RUN_DAEMON}"
    result = subprocess.run(
        [sys.executable, "-c", script, str(home), str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((home / "exit.json").read_text()) == {"code": 0}
    found = json.loads((home / "modules.json").read_text())
    assert found["errors"] == [[method, None] for method, _ in CONTROL_CALLS]
    modules = set(found["modules"])
    assert "trio" in modules  # it did run
    assert "omnitron.daemon._main" in modules
    assert sorted(modules & set(NOT_WITHOUT_A_PLANE)) == []


def test_the_daemon_does_not_print_cpythons_signal_race_reports() -> None:
    # A SIGCHLD that arrives as a signal receiver restores the default disposition
    # is reported by CPython through sys.unraisablehook, with a traceback, as an
    # exception raised in __del__ is; the daemon drops that report, and only that.
    code = textwrap.dedent(
        """
        from omnitron.daemon import _entry

        class Unraisable:
            def __init__(self, message):
                self.message = message

            def __del__(self):
                raise OSError(self.message)

        _entry.quiet_signal_races()
        _entry.quiet_signal_races()  # idempotent
        Unraisable("Signal 17 ignored due to race condition")
        Unraisable("another failure")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "race condition" not in result.stderr
    assert result.stderr.count("OSError: another failure") == 1, result.stderr
