"""Secrets: the encrypted store, ``secret:NAME`` references, and where values never go.

The store is tested on real files in a temporary home; the references end to end
with the real CLI in a subprocess against a real daemon, an app that writes the
value it received to a file the test reads, and a final search of every file of
the home and every captured CLI output for the values (the harness is the one of
``test_cli_e2e.py``).
"""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
from test_cli_e2e import (
    CLI_TIMEOUT,
    SLEEP,
    Omnitron,
    app_pids,
    app_toml,
    home,
    wait_for,
)
from test_daemon_entry import run_python

from omnitron.config import ConfigError, load_config
from omnitron.daemon._secrets import (
    KEY_FILE,
    PASSPHRASE_ENV,
    SECRETS_FILE,
    SecretNotSet,
    SecretRefused,
    SecretStore,
    SecretStoreUnavailable,
)

__all__ = ["home"]  # the fixture used here

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- the store


async def test_a_value_round_trips_encrypted_in_private_files(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    assert store.read() == {}
    assert not (tmp_path / KEY_FILE).exists()  # nothing is created by reading

    assert await store.set("db", "pa55-word") is True
    assert await store.set("api.key", "k-1") is True
    assert await store.set("db", "pa55-word-2") is False  # replaced

    assert await store.get("db") == "pa55-word-2"
    assert await store.names() == ["api.key", "db"]
    assert SecretStore(tmp_path).read() == {"db": "pa55-word-2", "api.key": "k-1"}
    assert mode(tmp_path / SECRETS_FILE) == 0o600
    assert mode(tmp_path / KEY_FILE) == 0o600
    raw = (tmp_path / SECRETS_FILE).read_bytes()
    assert b"pa55" not in raw
    assert b"k-1" not in raw
    assert json.loads(raw)["key"] == "file"
    assert [p.name for p in os.scandir(tmp_path) if p.name.endswith(".tmp")] == []

    await store.remove("db")
    assert await store.names() == ["api.key"]
    with pytest.raises(SecretNotSet, match=r"secret 'db' is not set \(omnitron secret set db\)"):
        await store.get("db")
    with pytest.raises(SecretNotSet):
        await store.remove("db")


async def test_values_a_process_environment_cannot_hold_are_refused_without_echo(
    tmp_path: Path,
) -> None:
    store = SecretStore(tmp_path)
    for value, why in (("", "empty"), ("a\0b-hidden", "NUL"), ("x" * 70_000, "at most")):
        with pytest.raises(SecretRefused, match=why) as info:
            await store.set("db", value)
        assert "hidden" not in info.value.message
    assert not (tmp_path / SECRETS_FILE).exists()


async def test_a_passphrase_store_needs_the_same_passphrase(tmp_path: Path) -> None:
    await SecretStore(tmp_path, passphrase="correct horse").set("db", "v4lue")
    assert not (tmp_path / KEY_FILE).exists()
    document = json.loads((tmp_path / SECRETS_FILE).read_bytes())
    assert document["key"] == "passphrase"
    assert document["kdf"]["name"] == "scrypt"
    assert document["kdf"]["salt"]

    assert SecretStore(tmp_path, passphrase="correct horse").read() == {"db": "v4lue"}
    with pytest.raises(SecretStoreUnavailable, match="wrong passphrase") as info:
        SecretStore(tmp_path, passphrase="wrong horse").read()
    assert PASSPHRASE_ENV in info.value.message
    with pytest.raises(SecretStoreUnavailable, match="protected by a passphrase"):
        SecretStore(tmp_path).read()
    before = (tmp_path / SECRETS_FILE).read_bytes()
    with pytest.raises(SecretStoreUnavailable, match="wrong passphrase"):
        await SecretStore(tmp_path, passphrase="wrong horse").set("other", "x")
    assert (tmp_path / SECRETS_FILE).read_bytes() == before


def test_the_passphrase_is_taken_out_of_the_environment(tmp_path: Path) -> None:
    environ = {PASSPHRASE_ENV: "pw", "OTHER": "1"}
    store = SecretStore.from_environ(tmp_path, environ)
    assert environ == {"OTHER": "1"}
    assert store._passphrase == "pw"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(lambda raw: b"\x00\xff garbage", id="garbage"),
        pytest.param(lambda raw: raw.replace(b'"key": "file"', b'"key": "nope"'), id="header"),
    ],
)
async def test_a_corrupt_store_is_a_clear_error_and_is_never_overwritten(
    tmp_path: Path, damage: Any
) -> None:
    store = SecretStore(tmp_path)
    await store.set("db", "v")
    key = (tmp_path / KEY_FILE).read_bytes()
    damaged = damage((tmp_path / SECRETS_FILE).read_bytes())
    (tmp_path / SECRETS_FILE).write_bytes(damaged)

    with pytest.raises(SecretStoreUnavailable, match="is corrupt") as info:
        store.read()
    assert "remove it to start a new store" in info.value.message
    with pytest.raises(SecretStoreUnavailable, match="is corrupt"):
        await store.set("other", "x")
    assert (tmp_path / SECRETS_FILE).read_bytes() == damaged
    assert (tmp_path / KEY_FILE).read_bytes() == key


async def test_an_altered_ciphertext_or_another_key_fails_authentication(tmp_path: Path) -> None:
    await SecretStore(tmp_path).set("db", "v")
    path = tmp_path / SECRETS_FILE
    document = json.loads(path.read_bytes())
    original = dict(document)
    document["data"] = document["data"][:-4] + (
        "AAA=" if document["data"][-4:] != "AAA=" else "BBB="
    )
    path.write_text(json.dumps(document))
    with pytest.raises(
        SecretStoreUnavailable, match="the key does not match, or the file was altered"
    ):
        SecretStore(tmp_path).read()

    path.write_text(json.dumps(original))
    key_file = tmp_path / KEY_FILE
    key_file.write_text("A" * 43 + "=\n")  # 32 zero bytes: a well-formed, wrong key
    with pytest.raises(SecretStoreUnavailable, match="the key does not match"):
        SecretStore(tmp_path).read()


async def test_a_missing_or_exposed_key_file_is_refused(tmp_path: Path) -> None:
    await SecretStore(tmp_path).set("db", "v")
    key_file = tmp_path / KEY_FILE
    key_file.chmod(0o644)
    with pytest.raises(SecretStoreUnavailable, match=r"readable by other users .*chmod 600"):
        SecretStore(tmp_path).read()
    key_file.unlink()
    with pytest.raises(SecretStoreUnavailable, match="is missing"):
        await SecretStore(tmp_path).set("db", "w")
    assert not key_file.exists()  # never replaced by a new key that cannot decrypt the store


def test_a_malformed_reference_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "omnitron.toml"
    config.write_text(
        textwrap.dedent(
            """\
            [[apps]]
            name = "api"
            command = ["x"]
            env = { GOOD = "secret:db.main", BAD = "secret:no such name", EMPTY = "secret:" }
            """
        )
    )
    with pytest.raises(ConfigError) as info:
        load_config(config, environ={})
    issues = [(issue.line, issue.path, issue.message) for issue in info.value.issues]
    assert [(line, path) for line, path, _ in issues] == [
        (4, "apps[0].env.BAD"),
        (4, "apps[0].env.EMPTY"),
    ]
    assert all("invalid secret reference" in message for _, _, message in issues)
    assert all("no such name" not in message for _, _, message in issues)


# --------------------------------------------------------------------------- imports


def test_cryptography_is_loaded_by_the_daemon_only_when_a_secret_is_used(tmp_path: Path) -> None:
    found = run_python(
        f"""
        from pathlib import Path
        from omnitron.daemon import _entry
        _entry.defer_unused_modules()
        import omnitron.daemon._main
        from omnitron.config import define_ecosystem
        from omnitron.daemon._secrets import SecretStore
        from omnitron.daemon._tree import TreeBuilder
        home = Path({str(tmp_path)!r})
        ecosystem = define_ecosystem(base_dir=home, environ={{}}, apps=[
            {{"name": "plain", "command": ["x"], "env": {{"A": "1"}}}},
            {{"name": "secret", "command": ["x"], "env": {{"A": "secret:db"}}}},
        ])
        store = SecretStore(home)
        builder = TreeBuilder(ecosystem, home=home, sink=lambda *a: print, secrets=store)
        builder.app(ecosystem.app("plain"), 2)
        before = "cryptography" in sys.modules
        import trio
        trio.run(store.set, "db", "v")
        spec = builder.app(ecosystem.app("secret"), 1)
        env = dict(spec.child.children[0].child.env)
        print(json.dumps({{"before": before, "after": "cryptography" in sys.modules,
                           "value": env["A"], "openssl_hashes": sys.modules.get("_hashlib")}}))
        """
    )
    assert found == {"before": False, "after": True, "value": "v", "openssl_hashes": None}


def test_the_cli_never_loads_cryptography() -> None:
    found = run_python(
        """
        import omnitron.cli._main, omnitron.cli._secret
        print(json.dumps("cryptography" in sys.modules))
        """
    )
    assert found is False


# --------------------------------------------------------------------------- end to end


def reader_config(project: Path) -> str:
    """``reader`` writes the DB_PASSWORD it got to ``project/seen`` (outside the home)."""
    tmp, seen = str(project / "seen.tmp"), str(project / "seen")
    code = (
        "import os, time; "
        f"open({tmp!r}, 'w').write(os.environ.get('DB_PASSWORD', '<unset>')); "
        f"os.replace({tmp!r}, {seen!r}); time.sleep(3600)"
    )
    fast = '{ max_restarts = 1, window = "60s", backoff = { initial = "50ms", max = "100ms" } }'
    return (
        'project = "secrets"\n\n'
        + app_toml("plain", SLEEP)
        + app_toml(
            "reader",
            code,
            env='{ DB_PASSWORD = "secret:db", MODE = "test" }',
            restart_policy=fast,
        )
    )


class Recorder(Omnitron):
    """The CLI, keeping every output it printed (for the search at the end)."""

    def __init__(self, home: str, project: Path, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(home, project)
        self.outputs: list[str] = []
        self.extra_env = dict(extra_env or {})

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra_env}

    def run(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        result = super().run(*args, timeout=timeout)
        self.outputs += [result.stdout, result.stderr]
        return result

    def feed(self, value: str | None, *args: str) -> subprocess.CompletedProcess[str]:
        """Run with ``value`` on stdin (not recorded: it is the input)."""
        result = subprocess.run(
            self.argv(*args),
            cwd=self.project,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            input=value,
        )
        self.outputs += [result.stdout, result.stderr]
        return result

    def seen(self) -> str | None:
        path = self.project / "seen"
        return path.read_text() if path.exists() else None

    def app(self, name: str) -> dict[str, Any]:
        return {
            app["name"]: app for app in json.loads(self.run("--json", "status").stdout)["apps"]
        }[name]


def project_cli(home: str, tmp_path: Path, extra_env: dict[str, str] | None = None) -> Recorder:
    """The CLI on ``home`` from a project holding :func:`reader_config`."""
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    cli = Recorder(home, project, extra_env)
    cli.write_config(reader_config(project))
    return cli


@linux_only
@pytest.mark.slow
def test_a_secret_reaches_its_app_and_nothing_else(home: str, tmp_path: Path) -> None:
    cli = project_cli(home, tmp_path)
    project = cli.project
    first, second, on_argv = (f"s3cret-{uuid.uuid4().hex}" for _ in range(3))

    # Not set yet: the app fails to start, naming the secret; the others run.
    up = cli.run("up")
    assert up.returncode == 1
    reader = cli.app("reader")
    assert reader["status"] == "crashed"
    assert reader["last_error"] == (
        "app 'reader' cannot start: secret 'db' is not set (omnitron secret set db)"
    )
    assert cli.app("plain")["status"] == "online"
    assert cli.seen() is None

    # Never from argv; never an empty value.
    refused = cli.run("secret", "set", "db", on_argv)
    assert refused.returncode == 2
    assert "refusing to read a secret value from the command line" in refused.stderr
    empty = cli.feed("", "secret", "set", "db")
    assert empty.returncode == 2
    assert "stdin was empty" in empty.stderr
    assert cli.run("secret", "ls").stdout == "(no secrets)\n"

    stored = cli.feed(first + "\n", "secret", "set", "db")
    assert stored.returncode == 0, stored.stderr
    assert "secret 'db' stored" in stored.stdout
    assert mode(Path(home) / SECRETS_FILE) == 0o600
    assert mode(Path(home) / KEY_FILE) == 0o600
    assert cli.run("secret", "ls").stdout == "db\n"
    assert json.loads(cli.run("--json", "secret", "ls").stdout) == {"names": ["db"]}
    got = subprocess.run(
        cli.argv("secret", "get", "db"), cwd=project, env=cli.env(), capture_output=True, text=True
    )
    assert got.stdout == first + "\n"  # not recorded: the one place a value is printed

    # Resolved at start; a new value at the next restart.
    assert cli.run("start", "reader").returncode == 0
    wait_for(lambda: cli.seen() == first, "the app to see the first value")
    [pid] = app_pids(home)["reader"]
    assert psutil.Process(pid).environ()["DB_PASSWORD"] == first
    assert cli.feed(second, "secret", "set", "db").returncode == 0
    assert cli.run("restart", "reader").returncode == 0
    wait_for(lambda: cli.seen() == second, "the app to see the rotated value")

    # Shown as the reference, to everyone, in every view.
    env = json.loads(cli.run("--json", "env", "reader").stdout)
    assert env["DB_PASSWORD"] == "secret:db"
    assert json.loads(cli.run("--json", "env", "reader", "--reveal").stdout)["DB_PASSWORD"] == (
        "secret:db"
    )
    for args in (("inspect", "reader"), ("status",), ("graph",)):
        assert cli.run(*args).returncode == 0, args
    cli.write_config(reader_config(project).replace('MODE = "test"', 'MODE = "other"'))
    reload = cli.run("reload-config")
    assert reload.returncode == 0, reload.stderr
    wait_for(lambda: cli.app("reader")["status"] == "online", "reader online after reload")

    # Removed: a restart is refused naming the secret (the running process keeps
    # its value); a new start fails the same way, and no restart loop follows.
    assert cli.run("secret", "rm", "db").returncode == 0
    assert cli.run("secret", "rm", "db").stderr == (
        "omnitron: secret 'db' is not set (omnitron secret set db)\n"
    )
    restart = cli.run("restart", "reader")
    assert restart.returncode != 0
    assert "secret 'db' is not set" in restart.stderr
    assert cli.run("stop", "reader").returncode == 0
    start = cli.run("start", "reader")
    assert start.returncode != 0
    assert "app 'reader' cannot start: secret 'db' is not set" in start.stderr
    assert cli.app("reader")["status"] == "crashed"
    assert cli.run("down").returncode == 0

    values = (first.encode(), second.encode(), on_argv.encode())
    for path in Path(home).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(v in data for v in values), f"a secret value is in {path}"
    for output in cli.outputs:
        assert not any(v.decode() in output for v in values), output
    assert cli.outputs  # the search covered something


@linux_only
@pytest.mark.slow
def test_a_corrupt_store_fails_loudly_and_loses_nothing_else(home: str, tmp_path: Path) -> None:
    cli = project_cli(home, tmp_path)
    cli.run("up")
    assert cli.feed("v1", "secret", "set", "db").returncode == 0
    assert cli.run("start", "reader").returncode == 0
    store = Path(home) / SECRETS_FILE
    key = (Path(home) / KEY_FILE).read_bytes()
    truncated = store.read_bytes()[:40]
    store.write_bytes(truncated)

    listed = cli.run("secret", "ls")
    assert listed.returncode == 1
    assert listed.stderr.startswith(f"omnitron: {store} is corrupt")
    stored = cli.feed("v2", "secret", "set", "other")
    assert stored.returncode == 1
    assert "is corrupt" in stored.stderr
    assert store.read_bytes() == truncated
    assert (Path(home) / KEY_FILE).read_bytes() == key

    restart = cli.run("restart", "reader")  # refused; the running process is kept
    assert restart.returncode != 0
    assert "is corrupt" in restart.stderr
    apps = {name: cli.app(name)["status"] for name in ("plain", "reader")}
    assert apps == {"plain": "online", "reader": "online"}
    assert cli.run("down").returncode == 0


@linux_only
@pytest.mark.slow
def test_a_wrong_passphrase_is_a_clear_error(home: str, tmp_path: Path) -> None:
    right = project_cli(home, tmp_path, {PASSPHRASE_ENV: "right passphrase"})
    right.run("up")
    assert right.feed("v1", "secret", "set", "db").returncode == 0
    assert right.run("start", "reader").returncode == 0
    wait_for(lambda: right.seen() == "v1", "the app to see the value")
    assert not (Path(home) / KEY_FILE).exists()
    for pid in app_pids(home)["plain"] | app_pids(home)["reader"]:
        assert PASSPHRASE_ENV not in psutil.Process(pid).environ()  # AU-15
    assert right.run("down").returncode == 0

    wrong = project_cli(home, tmp_path, {PASSPHRASE_ENV: "wrong passphrase"})
    assert wrong.run("up").returncode == 1
    reader = wrong.app("reader")
    assert reader["status"] == "crashed"
    assert "wrong passphrase (OMNITRON_SECRETS_PASSPHRASE)" in reader["last_error"]
    listed = wrong.run("secret", "ls")
    assert listed.returncode == 1
    assert "wrong passphrase" in listed.stderr
    assert wrong.app("plain")["status"] == "online"
    assert wrong.run("down").returncode == 0

    none = project_cli(home, tmp_path)
    none.run("up")
    assert "protected by a passphrase" in none.run("secret", "ls").stderr
    assert none.run("down").returncode == 0


def on_a_terminal(cli: Recorder, answers: list[bytes], *args: str) -> bytes:
    """Run the CLI on a new pseudo-terminal, typing each answer after a prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.chdir(cli.project)
        os.execve(sys.executable, cli.argv(*args), cli.env())
    output = b""
    try:
        pending, answered = list(answers), 0
        deadline = time.monotonic() + CLI_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            if pending and len(output) > answered and output.endswith(b": "):  # a new prompt
                os.write(fd, pending.pop(0) + b"\n")
                answered = len(output)
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    return output


@linux_only
@pytest.mark.slow
def test_on_a_terminal_the_value_is_typed_twice_at_a_hidden_prompt(
    home: str, tmp_path: Path
) -> None:
    cli = project_cli(home, tmp_path)
    cli.run("up")
    typed = f"typed-{uuid.uuid4().hex}"
    output = on_a_terminal(cli, [typed.encode(), typed.encode()], "secret", "set", "db")
    assert b"value of secret 'db':" in output
    assert b"Repeat for confirmation:" in output
    assert b"secret 'db' stored" in output
    assert typed.encode() not in output  # not echoed
    got = subprocess.run(
        cli.argv("secret", "get", "db"),
        cwd=cli.project,
        env=cli.env(),
        capture_output=True,
        text=True,
    )
    assert got.stdout == typed + "\n"
    assert cli.run("down").returncode == 0
