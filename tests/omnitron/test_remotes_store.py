"""``$OMNITRON_HOME/remotes.toml``: aliases, validation, private file handling.

Real files in a temporary home; the CLI's remote fast path checked in a real
interpreter (what it imports).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from omnitron.remotes import (
    Remote,
    RemotesError,
    check_fingerprint,
    check_name,
    check_url,
    load_remotes,
    lookup_remote,
    remotes_path,
    save_remotes,
)

FINGERPRINT = "SHA256:" + "Ab1+/" * 8 + "xyz"
TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


@pytest.mark.parametrize("name", ["prod", "prod-a", "eu.web_1", "7", "A" * 63])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "a,b", "-a", ".a", "a b", "a/b", "é", "A" * 64, "a\n"])
def test_bad_names_are_refused_by_name(name: str) -> None:
    with pytest.raises(RemotesError, match="bad remote name"):
        check_name(name)


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("tls://10.0.0.5:9700", "tls://10.0.0.5:9700"),
        ("tls://db.example", "tls://db.example:9700"),
        ("tls://[::1]:19700/", "tls://[::1]:19700"),
    ],
)
def test_urls_are_normalised(url: str, normal: str) -> None:
    assert check_url(url) == normal


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("10.0.0.5:9700", "must start with tls://"),
        ("https://h:1", "must start with tls://"),
        ("ws://h:1", "remotes are tls://HOST:PORT"),
        ("tls://h:70000", "port must be a number"),
        ("tls://h:0", "port 0"),
        ("tls://:9700", "needs a host"),
    ],
)
def test_bad_urls_say_why(url: str, reason: str) -> None:
    with pytest.raises(RemotesError, match=reason):
        check_url(url)


def test_fingerprints() -> None:
    assert check_fingerprint(FINGERPRINT) == FINGERPRINT
    for bad in ("SHA256:abc", "sha256:" + FINGERPRINT[7:], FINGERPRINT + "A", "MD5:x"):
        with pytest.raises(RemotesError, match="bad fingerprint"):
            check_fingerprint(bad)


def test_round_trip_is_private_and_atomic(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    remotes = [
        Remote("prod", "tls://10.0.0.5:9700", token=TOKEN, fingerprint=FINGERPRINT),
        Remote("ci", "tls://[::1]:9701", token_env="CI_TOKEN"),
        Remote("we.ird", "tls://h:1"),
    ]
    save_remotes(home, remotes)
    path = Path(remotes_path(home))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(home).stat().st_mode) == 0o700
    assert list(load_remotes(home).values()) == remotes
    assert [p.name for p in Path(home).iterdir()] == ["remotes.toml"]  # no temporary left
    assert TOKEN not in repr(remotes[0])
    assert remotes[0].to_json() == {
        "name": "prod",
        "url": "tls://10.0.0.5:9700",
        "fingerprint": FINGERPRINT,
        "token": True,
        "token_env": None,
    }
    save_remotes(home, remotes[1:])
    assert list(load_remotes(home)) == ["ci", "we.ird"]


def test_missing_file_is_no_remotes_and_unknown_alias_names_the_known(tmp_path: Path) -> None:
    assert load_remotes(str(tmp_path)) == {}
    save_remotes(str(tmp_path), [Remote("a", "tls://h:1"), Remote("b", "tls://h:2")])
    assert lookup_remote(str(tmp_path), "b").url == "tls://h:2"
    with pytest.raises(RemotesError, match=r"no remote named 'c' .*\(known: a, b\)"):
        lookup_remote(str(tmp_path), "c")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    save_remotes(str(tmp_path), [Remote("a", "tls://h:1", token=TOKEN)])
    os.chmod(remotes_path(str(tmp_path)), mode)
    with pytest.raises(RemotesError, match=f"readable by others \\(mode {mode:04o}\\)"):
        load_remotes(str(tmp_path))


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.toml"
    real.write_text("")
    real.chmod(0o600)
    (tmp_path / "remotes.toml").symlink_to(real)
    with pytest.raises(RemotesError, match="cannot read"):
        load_remotes(str(tmp_path))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[remotes.a\n", "not valid TOML"),
        ('[other]\nx = "1"\n', "only \\[remotes.NAME\\] tables"),
        ('[remotes.a]\nurl = "tls://h:1"\nport = "2"\n', "unknown key 'port'"),
        ('[remotes.a]\nfingerprint = "' + FINGERPRINT + '"\n', "has no url"),
        ("[remotes.a]\nurl = 1\n", "must be a string"),
        ('[remotes."a,b"]\nurl = "tls://h:1"\n', "bad remote name"),
        ('[remotes.a]\nurl = "tls://h:1"\ntoken = "two words"\n', "not a token"),
        ('[remotes.a]\nurl = "tls://h:1"\ntoken = "x"\ntoken_env = "Y"\n', "not both"),
    ],
)
def test_bad_entries_name_the_problem(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "remotes.toml"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(RemotesError, match=reason):
        load_remotes(str(tmp_path))


def test_token_from_the_environment(tmp_path: Path) -> None:
    remote = Remote("ci", "tls://h:1", token_env="OMT_CI_TOKEN")
    assert remote.resolve_token({"OMT_CI_TOKEN": f" {TOKEN}\n"}) == TOKEN
    with pytest.raises(
        RemotesError, match=r"reads its token from \$OMT_CI_TOKEN, which is not set"
    ):
        remote.resolve_token({})
    assert Remote("none", "tls://h:1").resolve_token({}) is None


def test_the_remote_path_imports_no_trio(tmp_path: Path) -> None:
    """``-r ALIAS status`` stays on the blocking client: ``ssl`` yes, Trio no."""
    home = tmp_path / "home"
    save_remotes(str(home), [Remote("gone", "tls://127.0.0.1:1", token=TOKEN)])
    probe = (
        "import sys\n"
        "from omnitron.cli._main import main\n"
        "try:\n"
        "    main(['--home', sys.argv[1], '-r', 'gone', 'status'])\n"
        "except SystemExit as exit:\n"
        "    print(exit.code, 'trio' in sys.modules, 'ssl' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(home)], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["1", "False", "True"], result.stderr
    assert "cannot reach the daemon at tls://127.0.0.1:1" in result.stderr
