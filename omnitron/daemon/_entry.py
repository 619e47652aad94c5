"""The daemon process's own entry point: ``python -m omnitron.daemon``.

``omnitron up`` starts the daemon through this module instead of running the CLI
again, so the daemon process never imports click or the CLI's modules, and
``omnitron up --foreground`` replaces itself with it (``exec``: same pid, same
environment, so systemd's ``NOTIFY_SOCKET`` still reaches it).

Before anything imports Trio, standard modules the daemon never uses are
replaced by stand-ins that import the real module on first use: ``ssl`` (Trio's
TLS streams and the library's HTTPS readiness check import it at import time),
``idna`` (Trio, for host names of TCP connections), ``bz2`` and ``lzma``
(``shutil``, imported by Trio), ``gzip`` (compressed log rotation), ``difflib``
("did you mean" hints of bad requests), ``locale`` (``subprocess``, for its text
mode; 0.5 MiB of tables), ``tokenize`` (``linecache``, to format a traceback),
``glob``, ``unicodedata`` and ``tempfile`` (``ctypes.util``, imported by Trio
to name its threads; an app that notifies its readiness loads it). A stand-in may
load another while it loads (a re-entrant lock).
And ``hashlib`` uses CPython's own hash functions instead of OpenSSL's
(``_hashlib``), as a Python built without OpenSSL does: the daemon hashes one
small state file per write, and mapping OpenSSL's ``libcrypto`` for that costs
3.5 MiB of resident memory. TLS, when a plane needs it, still works (``ssl``
loads ``libssl`` and ``libcrypto`` itself).

attrs keeps the source of every method it generates (``__init__``, ``__eq__``,
``__repr__``... of each of the ~330 attrs classes of Trio, the supervision
library and omnitron) in :data:`linecache.cache`, under ``<attrs generated ...>``
names, for debuggers to step through: 0.6 MiB that the daemon never reads.
:func:`defer_unused_modules` makes ``linecache.cache`` a mapping that does not
store those entries (everything else is cached as before). A traceback through
a generated method still names it (``File "<attrs generated init ...>", line N,
in __init__``), without its source line; the line that called it is shown as
usual.

Detached start-up (``--ready-fd N``): the daemon's stdout and stderr start on a
pipe read by ``omnitron up``. When fd ``N`` is a socket (``omnitron up`` passes one
end of a socket pair), the daemon imports and loads the config while ``up``
validates it, and waits for a ``go`` line on fd ``N`` before it touches its home;
anything else withdraws the launch (exit code 4, nothing created). Once the home
is usable the daemon appends its output to ``logs/daemon.out`` instead and reports
its progress on fd ``N``, one line per step, each starting with ``@``:

``@output OFFSET``
    Output now goes to ``logs/daemon.out``, from byte ``OFFSET`` on.
``@listening PID``
    The control socket answers.
``@started``
    The apps' tree has started (each app up or given up on), or a minute has
    passed; then fd ``N`` is closed.

Anything else on the pipe is what the daemon printed before its output moved
(an early failure). End of file without ``@started`` means the daemon exited.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
import threading
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BLOCKED_MODULES",
    "DEFERRED_MODULES",
    "defer_unused_modules",
    "forget_generated_source",
    "main",
    "quiet_signal_races",
]

DEFERRED_MODULES = (
    "ssl",
    "idna",
    "bz2",
    "lzma",
    "gzip",
    "difflib",
    "locale",
    "tokenize",
    "glob",
    "unicodedata",
    "tempfile",
)
"""Modules imported by the daemon's dependencies but used on no common daemon path."""
BLOCKED_MODULES = ("_hashlib",)
"""Optional modules whose absence the standard library handles (see above)."""

_load_lock = threading.RLock()


_GENERATED_SOURCE = "<attrs generated"
"""The start of the names attrs gives the source it generates (see above)."""


class _SourceCache(dict[str, Any]):
    """``linecache.cache`` without the source attrs generates (it is never read)."""

    __slots__ = ()

    def setdefault(self, key: str, default: Any = None) -> Any:
        if isinstance(key, str) and key.startswith(_GENERATED_SOURCE):
            return default  # as if stored: attrs then keeps the name it chose
        return super().setdefault(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(key, str) and key.startswith(_GENERATED_SOURCE):
            return
        super().__setitem__(key, value)


def forget_generated_source() -> None:
    """Make ``linecache.cache`` drop attrs' generated source (see the module docs).

    Entries already stored are dropped too. Idempotent.
    """
    import linecache

    if isinstance(linecache.cache, _SourceCache):
        return
    linecache.cache = _SourceCache(
        (key, value)
        for key, value in linecache.cache.items()
        if not (isinstance(key, str) and key.startswith(_GENERATED_SOURCE))
    )


class _Deferred(types.ModuleType):
    """Stands in for a module in ``sys.modules`` until an attribute is first read.

    The first read imports the real module, puts it in ``sys.modules`` and copies
    its namespace here, so references taken meanwhile (``import ssl as x``) see
    the real thing.
    """

    def __getattr__(self, name: str) -> object:
        name_of_module = self.__name__
        with _load_lock:
            if sys.modules.get(name_of_module) is self:
                del sys.modules[name_of_module]
            real = importlib.import_module(name_of_module)
            self.__dict__.update(real.__dict__)
        return getattr(real, name)


def defer_unused_modules(names: Sequence[str] = DEFERRED_MODULES) -> list[str]:
    """Put stand-ins for ``names`` in ``sys.modules``; returns those deferred.

    Also blocks :data:`BLOCKED_MODULES` and makes ``linecache`` forget attrs'
    generated source (:func:`forget_generated_source`). A module already imported
    is left as it is. Call before importing Trio.
    """
    for name in BLOCKED_MODULES:
        if name not in sys.modules:
            sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    deferred = []
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        stand_in = _Deferred(name)
        stand_in.__spec__ = spec
        stand_in.__file__ = spec.origin
        sys.modules[name] = stand_in
        deferred.append(name)
    forget_generated_source()  # after the stand-ins: linecache imports tokenize
    return deferred


_SIGNAL_RACE = f"Signal {int(signal.SIGCHLD)} ignored due to race condition"
"""CPython's report of a ``SIGCHLD`` that arrived as a handler was being replaced."""


def quiet_signal_races() -> None:
    """Drop CPython's "Signal 17 ignored due to race condition" reports.

    When a ``SIGCHLD`` arrives in the instant ``signal.signal`` replaces its
    handler (a Trio signal receiver restoring the default disposition as it
    closes, at shutdown), CPython drops the signal and prints that ``OSError``
    with a traceback through :data:`sys.unraisablehook`. Nothing is lost (the
    process host reaps by pid and waits on pidfds, not on the signal), but an
    operator reading ``daemon.out`` would see a traceback. Every other
    unraisable exception is reported as before. Idempotent.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_quiets_signal_races", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, OSError) and str(exc) == _SIGNAL_RACE:
            return
        previous(unraisable)

    hook._quiets_signal_races = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _usage(message: str) -> int:
    print(f"omnitron: {message}", file=sys.stderr)
    print(
        "usage: python -m omnitron.daemon --home PATH --config PATH [--stack NAME] "
        "[--reset-state] [--echo] [--ready-fd N] [--tcp HOST:PORT] [--http HOST:PORT] "
        "[--tls-cert FILE --tls-key FILE] [--max-connections N] [--watch|--no-watch]",
        file=sys.stderr,
    )
    return 2


def _parse(argv: Sequence[str]) -> dict[str, object] | str:
    """The options, or the reason ``argv`` is not valid (argparse costs memory here)."""
    values: dict[str, object] = {
        "stack": None,
        "reset_state": False,
        "echo": False,
        "watch": None,
    }
    valued = {
        "--home": "home",
        "--config": "config",
        "--stack": "stack",
        "--ready-fd": "ready_fd",
        "--tcp": "tcp",
        "--http": "http",
        "--tls-cert": "tls_cert",
        "--tls-key": "tls_key",
        "--max-connections": "max_connections",
    }
    flags = {"--reset-state": "reset_state", "--echo": "echo"}
    args = list(argv)
    while args:
        arg = args.pop(0)
        key, sep, inline = arg.partition("=")
        if key in valued:
            if sep:
                value = inline
            elif args:
                value = args.pop(0)
            else:
                return f"{key} needs a value"
            values[valued[key]] = value
        elif arg in flags:
            values[flags[arg]] = True
        elif arg in ("--watch", "--no-watch"):
            values["watch"] = arg == "--watch"
        else:
            return f"unexpected argument {arg!r}"
    for required in ("home", "config"):
        if required not in values:
            return f"--{required} is required"
    if "ready_fd" in values:
        text = str(values["ready_fd"])
        if not text.isdigit():
            return f"--ready-fd must be a file descriptor number, got {text!r}"
        values["ready_fd"] = int(text)
    if "max_connections" in values:
        text = str(values["max_connections"])
        if not text.isdigit() or int(text) < 1:
            return f"--max-connections must be a positive number, got {text!r}"
        values["max_connections"] = int(text)
    return values


def _fail(error: BaseException) -> int:
    """Print why the daemon could not run, as the CLI does: ``omnitron: <reason>``."""
    from omnitron.config import ConfigError
    from omnitron.errors import OmnitronError

    if isinstance(error, ConfigError):
        issues = error.issues
        if len(issues) == 1:
            print(f"omnitron: {issues[0]}", file=sys.stderr)
        else:
            print(f"omnitron: {len(issues)} configuration problems:", file=sys.stderr)
            for issue in issues:
                print(f"  {issue}", file=sys.stderr)
        return 2
    if isinstance(error, OmnitronError | OSError):
        print(f"omnitron: {error}", file=sys.stderr)
        return 1
    raise error


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _path(value: object) -> Path | None:
    return None if value is None else Path(os.path.abspath(str(value)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon in this process; returns its exit code."""
    parsed = _parse(sys.argv[1:] if argv is None else argv)
    if isinstance(parsed, str):
        return _usage(parsed)
    defer_unused_modules()
    quiet_signal_races()

    import trio

    from omnitron.rpc._planes import DEFAULT_MAX_CONNECTIONS, PlaneConfig
    from supervision._groups import collapse

    from ._main import DaemonOptions, Progress, run_daemon

    ready_fd = parsed.get("ready_fd")
    progress = Progress(ready_fd if isinstance(ready_fd, int) else None)
    options = DaemonOptions(
        home=Path(os.path.abspath(str(parsed["home"]))),
        config=Path(os.path.abspath(str(parsed["config"]))),
        stack=None if parsed["stack"] is None else str(parsed["stack"]),
        echo=bool(parsed["echo"]),
        reset_state=bool(parsed["reset_state"]),
        planes=PlaneConfig(
            tcp=_text(parsed.get("tcp")),
            http=_text(parsed.get("http")),
            tls_cert=_path(parsed.get("tls_cert")),
            tls_key=_path(parsed.get("tls_key")),
            max_connections=int(str(parsed.get("max_connections", DEFAULT_MAX_CONNECTIONS))),
        ),
        watch=parsed["watch"] if isinstance(parsed["watch"], bool) else None,
        progress=progress,
    )
    try:
        return trio.run(run_daemon, options)
    except KeyboardInterrupt:
        # The daemon handles SIGINT itself once running; this is a Ctrl-C before
        # its handler was installed or after it was removed: nothing to stop.
        print("omnitron: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return _fail(collapse(exc) if isinstance(exc, BaseExceptionGroup) else exc)
    finally:
        progress.close()
