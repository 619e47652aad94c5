"""The async client's import cost: the fleet fan-out loads no server-side modules.

``omnitron -r a,b status`` runs on the Trio client (:mod:`omnitron.rpc._connect`);
it needs Trio, msgpack, ssl and its own framing, not the RPC server, the event
log (:mod:`omnitron._log`), ``rich`` or the ``supervision`` package. Checked in a
real interpreter, through the real CLI, by what ends up in ``sys.modules``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from omnitron.remotes import Remote, save_remotes

TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"

HEAVY = ("omnitron._log", "rich", "supervision", "omnitron.rpc._server", "omnitron.rpc._tls")


def _loaded(probe: str, *args: str) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """Run ``probe`` in a fresh interpreter; the :data:`HEAVY` modules it loaded."""
    report = f"\nprint('LOADED', *[m for m in {HEAVY!r} if m in sys.modules])\n"
    result = subprocess.run(
        [sys.executable, "-c", probe + report, *args], capture_output=True, text=True, timeout=60
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("LOADED")]
    assert lines, result.stderr
    return lines[-1].split()[1:], result


def test_importing_the_async_client_loads_no_server_modules() -> None:
    probe = (
        "import sys\n"
        "import trio\n"
        "from omnitron.rpc import RpcClient, connect_remote, connect_unix, connect_url\n"
        "from omnitron.rpc._errors import RemoteError, RpcError\n"
        "from omnitron.rpc._address import fingerprint_of_der, parse_url\n"
        "from omnitron.rpc.sync_client import check_pin, client_context\n"
        "from omnitron.remotes import default_home, lookup_remote\n"
        "client_context()\n"
        "assert 'omnitron.rpc._connect' in sys.modules\n"
    )
    loaded, result = _loaded(probe)
    assert loaded == [], result.stderr


def test_the_fleet_fan_out_loads_no_server_modules(tmp_path: Path) -> None:
    """The real ``-r a,b status`` (two unreachable hosts): Trio and ssl yes, the server no."""
    home = tmp_path / "home"
    save_remotes(
        str(home),
        [
            Remote("one", "tls://127.0.0.1:1", token=TOKEN),
            Remote("two", "tls://127.0.0.1:2", token=TOKEN),
        ],
    )
    probe = (
        "import sys\n"
        "from omnitron.cli._main import main\n"
        "try:\n"
        "    main(['--home', sys.argv[1], '-r', 'one,two', 'status'])\n"
        "except SystemExit as exit:\n"
        "    print('EXIT', exit.code, 'trio' in sys.modules, 'ssl' in sys.modules)\n"
    )
    loaded, result = _loaded(probe, str(home))
    assert "EXIT 1 True True" in result.stdout, result.stderr
    assert "failed on 2 of 2 hosts: one, two" in result.stderr
    assert loaded == [], result.stderr
