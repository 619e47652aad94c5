"""Hot reload: the ignore rules, the debounce (virtual time, around an injected
change stream), the watchers' bookkeeping, and the real ``watchfiles`` source on
real files (real time, generous caps)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from omnitron.config import DEFAULT_WATCH_IGNORE, AppConfig, WatchConfig
from omnitron.config._bootstrap import WorkerSlot
from omnitron.daemon._errors import AppNotFound
from omnitron.daemon._records import AppRecord, ProcessRecord
from omnitron.daemon._watch import IgnoreFilter, Watching, debounced, file_changes, importers
from omnitron.daemon._workers import WorkerCallError

# --------------------------------------------------------------------------- ignore rules


@pytest.mark.parametrize(
    "relative",
    [
        ".git/index",
        "pkg/__pycache__/mod.cpython-311.pyc",
        "mod.pyc",
        ".venv/lib/python3.11/site-packages/x.py",
        "venv/bin/python",
        "logs/app.log",
        "server.log",
        ".mod.py.swp",
        ".mod.py.swo",
        "4913",
        "mod.py~",
        ".#mod.py",
        "#mod.py#",
        "node_modules/a/index.js",
    ],
)
def test_the_default_patterns_ignore_tooling_files(tmp_path: Path, relative: str) -> None:
    keep = IgnoreFilter(tmp_path, DEFAULT_WATCH_IGNORE)
    assert not keep(str(tmp_path / relative))


@pytest.mark.parametrize("relative", ["app.py", "pkg/mod.py", "templates/index.html", "gitx"])
def test_source_files_count(tmp_path: Path, relative: str) -> None:
    assert IgnoreFilter(tmp_path, DEFAULT_WATCH_IGNORE)(str(tmp_path / relative))


def test_an_apps_own_patterns_and_path_patterns(tmp_path: Path) -> None:
    keep = IgnoreFilter(tmp_path, (*DEFAULT_WATCH_IGNORE, "*.tmp", "build/*", "data/cache"))
    assert not keep(str(tmp_path / "x.tmp"))
    assert not keep(str(tmp_path / "build" / "out.py"))
    assert not keep(str(tmp_path / "data" / "cache" / "deep" / "f.json"))
    assert keep(str(tmp_path / "data" / "real.json"))
    assert keep(str(tmp_path / "src" / "build" / "x.py"))  # "build/*" is anchored


def test_the_home_and_the_log_directory_are_never_watched(tmp_path: Path) -> None:
    home = tmp_path / "run" / ".omni"
    keep = IgnoreFilter(tmp_path, (), exclude=[home, tmp_path / "out"])
    assert not keep(str(home / "state.json"))
    assert not keep(str(tmp_path / "out" / "api.log.1"))
    assert keep(str(tmp_path / "run" / "app.py"))


# --------------------------------------------------------------------------- debounce


async def test_a_burst_is_one_change_after_the_quiet_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[set[str]](16)
    acted: list[tuple[float, set[str]]] = []

    async def act(paths: set[str]) -> None:
        acted.append((trio.current_time(), paths))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(debounced, receive, 0.3, act)
        for path, at in (("a.py", 0.0), ("b.py", 0.1), ("a.py", 0.35)):
            await trio.sleep_until(at)
            await send.send({path})
        await trio.sleep_until(2.0)
        await send.send({"c.py"})
        await trio.sleep_until(5.0)
        await send.aclose()
    # 0.3 s of quiet after the change at 0.35, then after the lone change at 2.0.
    assert acted == [(0.35 + 0.3, {"a.py", "b.py"}), (2.0 + 0.3, {"c.py"})]


async def test_changes_during_a_reload_make_one_more_reload(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, receive = trio.open_memory_channel[set[str]](16)
    acted: list[tuple[float, set[str]]] = []

    async def slow_reload(paths: set[str]) -> None:
        acted.append((trio.current_time(), paths))
        await trio.sleep(5.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(debounced, receive, 0.5, slow_reload)
        await send.send({"a.py"})
        for at, path in ((1.0, "b.py"), (2.0, "c.py"), (3.0, "b.py")):
            await trio.sleep_until(at)
            await send.send({path})
        await trio.sleep_until(20.0)
        await send.aclose()
    # The first at 0.5; b and c (sent while it ran) once it is done at 5.5, each
    # batch already queued: the quiet period starts from the last one read.
    assert [paths for _, paths in acted] == [{"a.py"}, {"b.py", "c.py"}]
    assert acted[0][0] == 0.5
    assert acted[1][0] == 0.5 + 5.0 + 0.5


async def test_a_closed_stream_acts_on_what_it_had(autojump_clock: trio.testing.MockClock) -> None:
    send, receive = trio.open_memory_channel[set[str]](16)
    acted: list[set[str]] = []

    async def act(paths: set[str]) -> None:
        acted.append(paths)

    await send.send({"a.py"})
    await send.aclose()
    await debounced(receive, 10.0, act)
    assert acted == [{"a.py"}]
    assert trio.current_time() == 0.0


# --------------------------------------------------------------------------- watchers


class FakeSource:
    """An injected change stream: the test pushes batches per watched directory."""

    def __init__(self) -> None:
        self.sends: dict[Path, trio.MemorySendChannel[set[str]]] = {}
        self.keeps: dict[Path, Callable[[str], bool]] = {}
        self.fail: dict[Path, Exception] = {}

    async def __call__(
        self,
        directory: Path,
        keep: Callable[[str], bool],
        send: trio.MemorySendChannel[set[str]],
    ) -> None:
        if directory in self.fail:
            raise self.fail[directory]
        self.sends[directory] = send
        self.keeps[directory] = keep
        try:
            await trio.sleep_forever()
        finally:
            del self.sends[directory]

    async def change(self, directory: Path, *paths: str) -> None:
        kept = {str(directory / p) for p in paths if self.keeps[directory](str(directory / p))}
        if kept:
            await self.sends[directory].send(kept)


def _apps(tmp_path: Path, **watch: WatchConfig | None) -> dict[str, AppConfig]:
    apps = {}
    for name in ("api", "worker"):
        cwd = tmp_path / name
        cwd.mkdir(exist_ok=True)
        apps[name] = AppConfig(name=name, command=("x",), cwd=cwd, watch=watch.get(name))
    return apps


class Harness:
    """A running :class:`Watching` over an injected source, recording what it does."""

    def __init__(self, watching: Watching, source: FakeSource) -> None:
        self.watching = watching
        self.source = source
        self.reloads: list[tuple[str, set[str], float]] = []
        self.notes: list[tuple[str, str]] = []
        self.failures: list[Exception | None] = []
        """Outcomes of the next reloads: an exception to raise, ``None`` to succeed."""

    async def reload(self, app: str, paths: set[str]) -> None:
        await trio.lowlevel.checkpoint()
        self.reloads.append((app, paths, trio.current_time()))
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise ExceptionGroup("in a nursery", [failure])


@contextlib.asynccontextmanager
async def open_watching(
    apps: dict[str, AppConfig], *, fail: dict[Path, Exception] | None = None, **options: Any
) -> AsyncIterator[Harness]:
    """Run a :class:`Watching` of ``apps`` until the block ends (virtual time);
    ``fail``: the directories whose source raises at once."""
    source = FakeSource()
    source.fail.update(fail or {})
    harness: Harness
    watching = Watching(
        lambda: apps,
        lambda app, paths: harness.reload(app, paths),
        source=source,
        note=lambda app, text: harness.notes.append((app, text)),
        **options,
    )
    harness = Harness(watching, source)
    async with trio.open_nursery() as nursery:
        await nursery.start(watching.run)
        await trio.sleep(0.1)  # the watchers started
        yield harness
        nursery.cancel_scope.cancel()


async def test_a_change_reloads_the_app_and_is_recorded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    api = WatchConfig(directory=tmp_path / "api", ignore=DEFAULT_WATCH_IGNORE, debounce=0.2)
    async with open_watching(_apps(tmp_path, api=api)) as harness:
        assert list(harness.watching.watched()) == ["api"]
        start = trio.current_time()
        await harness.source.change(tmp_path / "api", "app.py", "__pycache__/app.cpython-311.pyc")
        await trio.sleep(1.0)
        [api_status, worker_status] = harness.watching.status()
    assert harness.reloads == [("api", {str(tmp_path / "api" / "app.py")}, start + 0.2)]
    assert api_status["watching"] is True
    assert api_status["directory"] == str(tmp_path / "api")
    assert (api_status["changes"], api_status["reloads"], api_status["failures"]) == (1, 1, 0)
    assert api_status["last_result"] == "reloaded"
    assert api_status["last_paths"] == [str(tmp_path / "api" / "app.py")]
    assert worker_status["watching"] is False
    assert harness.notes == [("api", "watch: app.py changed; reloading")]
    assert [s["watching"] for s in harness.watching.status()] == [False, False]  # run() ended


async def test_a_failed_reload_is_reported_and_watching_goes_on(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    apps = _apps(tmp_path, api=WatchConfig(directory=tmp_path / "api", debounce=0.1))
    async with open_watching(apps) as harness:
        error = "api: the new process exited with code 1 before it was ready"
        harness.failures = [RuntimeError(error), None]
        await harness.source.change(tmp_path / "api", "app.py")
        await trio.sleep(1.0)
        [status] = harness.watching.status("api")
        assert (status["failures"], status["last_result"], status["last_error"]) == (
            1,
            "failed",
            error,
        )
        assert status["watching"] is True
        await harness.source.change(tmp_path / "api", "app.py")
        await trio.sleep(1.0)
    [status] = harness.watching.status("api")
    assert (status["reloads"], status["failures"], status["last_result"]) == (1, 1, "reloaded")
    assert status["last_error"] is None
    assert harness.notes[1] == (
        "api",
        f"watch: reload failed, the running processes were kept: {error}",
    )


async def test_an_app_that_should_not_run_is_not_reloaded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    apps = _apps(tmp_path, api=WatchConfig(directory=tmp_path / "api", debounce=0.1))
    async with open_watching(apps, running=lambda app: False) as harness:
        await harness.source.change(tmp_path / "api", "app.py")
        await trio.sleep(1.0)
    assert harness.reloads == []
    assert harness.watching.status("api")[0]["last_result"] == "skipped"


async def test_on_and_off_switch_watchers_at_run_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_watching(_apps(tmp_path, api=WatchConfig(directory=tmp_path / "api"))) as h:
        watching, sends = h.watching, h.source.sends
        assert set(sends) == {tmp_path / "api"}
        # An app without a watch config is watched in its cwd, with the defaults.
        assert watching.turn_on("worker") == ["worker"]
        assert watching.turn_on("worker") == []
        await trio.sleep(0.1)
        assert set(sends) == {tmp_path / "api", tmp_path / "worker"}
        assert watching.status("worker")[0]["debounce"] == 0.3
        assert watching.turn_off() == ["api", "worker"]
        await trio.sleep(0.1)
        assert sends == {}
        assert [s["watching"] for s in watching.status()] == [False, False]
        assert watching.turn_on() == ["api", "worker"]
        await trio.sleep(0.1)
        assert set(sends) == {tmp_path / "api", tmp_path / "worker"}
        assert watching.turn_off("api") == ["api"]
        await trio.sleep(0.1)
        assert set(sends) == {tmp_path / "worker"}
        with pytest.raises(AppNotFound):
            watching.turn_on("nope")
        with pytest.raises(AppNotFound):
            watching.status("nope")


@pytest.mark.parametrize(
    ("enabled", "expected"), [(True, ["api", "worker"]), (False, []), (None, ["api"])]
)
async def test_the_up_flag_decides_for_every_app(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    enabled: bool | None,
    expected: list[str],
) -> None:
    apps = _apps(tmp_path, api=WatchConfig(directory=tmp_path / "api"))
    async with open_watching(apps, enabled=enabled) as harness:
        assert list(harness.watching.watched()) == expected


async def test_a_config_change_restarts_or_stops_a_watcher(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    apps = _apps(tmp_path, api=WatchConfig(directory=tmp_path / "api"))
    async with open_watching(apps) as harness:
        other = tmp_path / "api" / "src"
        other.mkdir()
        apps["api"] = AppConfig(
            name="api", command=("x",), cwd=tmp_path / "api", watch=WatchConfig(directory=other)
        )
        harness.watching.refresh()
        await trio.sleep(0.1)
        assert set(harness.source.sends) == {other}
        del apps["api"]
        harness.watching.refresh()
        await trio.sleep(0.1)
        assert harness.source.sends == {}
        assert [s["app"] for s in harness.watching.status()] == ["worker"]


async def test_a_directory_that_cannot_be_watched_stops_only_its_watcher(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    apps = _apps(
        tmp_path,
        api=WatchConfig(directory=tmp_path / "api"),
        worker=WatchConfig(directory=tmp_path / "worker"),
    )
    limit = OSError(28, "inotify watch limit reached")
    async with open_watching(apps, fail={tmp_path / "api": limit}) as harness:
        # The api watcher failed as it started (the harness waits for that).
        assert list(harness.watching.watched()) == ["worker"]
        [status] = harness.watching.status("api")
        assert status["watching"] is False
        assert status["watch_error"] == "[Errno 28] inotify watch limit reached"
        assert harness.notes == [
            (
                "api",
                f"watch: stopped watching {tmp_path / 'api'}: "
                "[Errno 28] inotify watch limit reached",
            )
        ]
        del harness.source.fail[tmp_path / "api"]
        assert harness.watching.turn_on("api") == ["api"]  # tried again on request
        await trio.sleep(0.1)
        assert harness.watching.status("api")[0]["watch_error"] is None
        assert set(harness.source.sends) == {tmp_path / "api", tmp_path / "worker"}


# --------------------------------------------------------------------------- real files


@pytest.mark.slow
async def test_the_real_source_reports_changes_and_skips_ignored_files(tmp_path: Path) -> None:
    send, receive = trio.open_memory_channel[set[str]](16)
    keep = IgnoreFilter(tmp_path, DEFAULT_WATCH_IGNORE)
    (tmp_path / "__pycache__").mkdir()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(file_changes, tmp_path, keep, send)
            # The watch is set up in the thread: write until the first batch comes.
            seen: set[str] = set()
            while str(tmp_path / "app.py") not in seen:
                (tmp_path / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"x")
                (tmp_path / "app.py").write_text("print('v2')\n")
                with trio.move_on_after(0.5):
                    seen |= await receive.receive()
            assert seen == {str(tmp_path / "app.py")}
            nursery.cancel_scope.cancel()


def _in_watchfiles() -> list[int]:
    """The threads running ``watchfiles`` code now."""
    found = []
    for ident, frame in sys._current_frames().items():
        stack = []
        while frame is not None:
            stack.append(frame.f_code.co_filename)
            frame = frame.f_back  # type: ignore[assignment]
        if any(f"{os.sep}watchfiles{os.sep}" in name for name in stack):
            found.append(ident)
    return found


@pytest.mark.slow
async def test_the_real_source_stops_at_once_when_cancelled(tmp_path: Path) -> None:
    """``watchfiles.awatch`` would take its Rust timeout (5 s) to notice; this takes
    one step (50 ms), and its thread has left ``watchfiles`` when the cancel returns."""
    send, _receive = trio.open_memory_channel[set[str]](16)
    keep = IgnoreFilter(tmp_path, ())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(file_changes, tmp_path, keep, send)
        with trio.fail_after(20):
            # A thread's state, not a task's: nothing to wait on but a look.
            while not _in_watchfiles():  # noqa: ASYNC110
                await trio.sleep(0.01)
        start = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - start < 2.0
    assert _in_watchfiles() == []


@pytest.mark.slow
async def test_the_real_source_fails_on_a_missing_directory(tmp_path: Path) -> None:
    send, _receive = trio.open_memory_channel[set[str]](16)
    with trio.fail_after(20), pytest.raises(FileNotFoundError):
        await file_changes(tmp_path / "gone", IgnoreFilter(tmp_path, ()), send)


# --------------------------------------------------------------------------- rendering


def test_the_status_table_and_its_details() -> None:
    from omnitron.cli._watch import render_switch, render_watch_status

    result = {
        "apps": [
            {
                "app": "api",
                "watching": True,
                "directory": "/srv/shop",
                "debounce": 0.3,
                "changes": 3,
                "reloads": 2,
                "failures": 1,
                "last_change": 1000.0,
                "last_paths": ["/srv/shop/api.py"],
                "last_result": "failed",
                "last_error": "api: instance 0 failed to start (exited with code 1)",
                "watch_error": None,
            },
            {
                "app": "cache",
                "watching": False,
                "directory": None,
                "debounce": None,
                "changes": 0,
                "reloads": 0,
                "failures": 0,
                "last_change": None,
                "last_paths": [],
                "last_result": None,
                "last_error": None,
                "watch_error": "[Errno 2] No such file or directory: '/srv/cache'",
            },
        ]
    }
    assert render_watch_status(result, now=1090.0).splitlines() == [
        "APP    WATCHING  DIRECTORY  DEBOUNCE  CHANGES  RELOADS  FAILED  LAST",
        "api    yes       /srv/shop  0.3s      3        2        1       failed 1m ago",
        "cache  no        -          -         0        0        0       -",
        "api: changed: /srv/shop/api.py",
        "api: error: api: instance 0 failed to start (exited with code 1)",
        "cache: watching stopped: [Errno 2] No such file or directory: '/srv/cache'",
    ]
    switched = render_switch({"changed": ["api"], **result}, on=True).splitlines()
    assert switched[0] == "watching: api"
    assert render_switch({"changed": [], **result}, on=False).startswith(
        "nothing changed: not watched\nAPP"
    )
    assert render_watch_status({"apps": []}) == "no apps"


def test_watchfiles_stays_off_the_cli_and_an_idle_daemon() -> None:
    """Only a watcher that starts imports ``watchfiles`` (and ``anyio`` with it)."""
    import subprocess

    code = (
        "import sys, omnitron.cli._main, omnitron.cli._watch, omnitron.daemon._main; "
        "print(sorted(m for m in ('watchfiles', 'anyio') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- module workers


class FakeWorkers:
    """``connect`` for :func:`importers`: each socket's imported files, or a failure."""

    def __init__(self, imported: dict[str, list[str] | Exception]) -> None:
        self.imported = imported
        self.asked: list[str] = []

    @contextlib.asynccontextmanager
    async def connect(self, path: str) -> AsyncIterator[Any]:
        self.asked.append(path)
        answer = self.imported[path]
        if isinstance(answer, Exception):
            raise answer

        class Client:
            async def builtin(self, name: str) -> list[str]:
                assert name == "imported_files"
                await trio.lowlevel.checkpoint()
                assert not isinstance(answer, Exception)
                return answer

        yield Client()


def _shop(tmp_path: Path) -> AppRecord:
    (tmp_path / "shop").mkdir()
    for name in ("bootstrap.py", "shop/users.py", "shop/billing.py", "shop/common.py"):
        (tmp_path / name).write_text("")
    config = AppConfig(name="shop", bootstrap=tmp_path / "bootstrap.py", cwd=tmp_path)
    slots = [
        WorkerSlot("users", 0, "u0"),
        WorkerSlot("users", 1, "u1"),
        WorkerSlot("billing", 0, "b0"),
    ]
    processes = {
        i: ProcessRecord(instance=i, pid=100 + i, worker=slot) for i, slot in enumerate(slots)
    }
    return AppRecord(config=config, instances=3, processes=processes)


async def test_only_the_workers_importing_a_module_are_reloaded(tmp_path: Path) -> None:
    record = _shop(tmp_path)
    users, billing, common = (
        str(tmp_path / "shop" / f"{m}.py") for m in ("users", "billing", "common")
    )
    workers = FakeWorkers({"u0": [users, common], "u1": [users, common], "b0": [billing, common]})
    assert await importers(record, {billing}, connect=workers.connect) == {2}
    assert await importers(record, {users}, connect=workers.connect) == {0, 1}
    assert await importers(record, {common, billing}, connect=workers.connect) == {0, 1, 2}
    # Through a symbolic link to the project: the workers report resolved paths.
    link = tmp_path.parent / f"{tmp_path.name}-link"
    link.symlink_to(tmp_path)
    assert await importers(
        record, {str(link / "shop" / "billing.py")}, connect=workers.connect
    ) == {2}


async def test_the_whole_app_when_the_imports_do_not_tell(tmp_path: Path) -> None:
    record = _shop(tmp_path)
    users = str(tmp_path / "shop" / "users.py")
    workers = FakeWorkers({"u0": [users], "u1": [users], "b0": []})
    # The bootstrap, and a file nobody imported (data, a module not imported yet).
    assert (
        await importers(record, {str(tmp_path / "bootstrap.py")}, connect=workers.connect) is None
    )
    assert workers.asked == []
    assert (
        await importers(record, {str(tmp_path / "shop" / "new.py")}, connect=workers.connect)
        is None
    )
    # A worker that cannot say.
    gone = WorkerCallError("WORKER_UNREACHABLE", "cannot connect")
    workers = FakeWorkers({"u0": [users], "u1": gone, "b0": []})
    assert await importers(record, {users}, connect=workers.connect) is None
    # A classic app: always the whole app.
    classic = AppRecord(config=AppConfig(name="api", command=("x",), cwd=tmp_path), instances=1)
    assert await importers(classic, {users}, connect=workers.connect) is None


@pytest.mark.parametrize(
    ("flags", "expected"), [([], None), (["--watch"], True), (["--no-watch"], False)]
)
def test_the_daemon_entry_takes_the_up_flag(flags: list[str], expected: bool | None) -> None:
    from omnitron.daemon._entry import _parse

    parsed = _parse(["--home", "/h", "--config", "/c.toml", *flags])
    assert isinstance(parsed, dict)
    assert parsed["watch"] is expected
