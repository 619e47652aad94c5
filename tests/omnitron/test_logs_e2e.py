"""Logs through a real daemon and the real CLI: no line lost, tail, grep, follow, flush."""

from __future__ import annotations

from pathlib import Path

from test_cli_e2e import Omnitron, app_toml, home, omnitron, wait_for

__all__ = ["home", "omnitron"]  # fixtures used by name

BURST_LINES = 60_000
# 60,000 lines of ~92 bytes (5.5 MB) in one burst at start-up, then idle.
BURST = (
    "import sys, time\n"
    f"for i in range({BURST_LINES}):\n"
    "    sys.stdout.write(f'line {i:08d} ' + 'x' * 78 + '\\n')\n"
    "sys.stdout.flush()\n"
    "time.sleep(3600)\n"
)


def app_lines(path: Path, marker: str) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text().splitlines() if marker in line]


def test_a_burst_of_60000_lines_at_start_up_loses_none(omnitron: Omnitron) -> None:
    omnitron.write_config('project = "logs"\n\n' + app_toml("burst", BURST))
    omnitron.up()
    log_file = Path(omnitron.home) / "logs" / "burst.log"
    lines = wait_for(
        lambda: (
            (found := app_lines(log_file, "burst[0] out | line "))
            and len(found) >= BURST_LINES
            and found
        ),
        "every line in the file",
        timeout=60,
    )
    numbers = [int(line.split("| line ")[1][:8]) for line in lines]
    assert numbers == list(range(BURST_LINES))
    text = log_file.read_text()
    assert "dropped" not in text
    assert "suppressed" not in text
    inspect = omnitron.json("inspect", "burst")
    assert inspect["logs"]["suppressed_lines"] == 0
    assert inspect["logs"]["dropped_lines"] == 0
