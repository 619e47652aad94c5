"""``python -m omnitron.worker describe``: one JSON object, exit 0 or 2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omnitron import __version__
from omnitron._system import PROTOCOL_VERSION


def describe(path: Path) -> tuple[int, dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, "-m", "omnitron.worker", "describe", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    return done.returncode, json.loads(lines[0]), done.stderr


def write(tmp_path: Path, text: str, name: str = "bootstrap.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_describe_prints_the_system(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        from omnitron import define_system, Process
        print("chatty bootstrap")
        system = define_system(name="shop", version="1.0", processes=[
            Process(name="billing", module="shop.billing", topology={"access": ["http"]}),
            Process(name="http", module="shop.http", instances=2, topology={"expose": True},
                    env={"PORT": "8000"}),
        ], env={"MODE": "dev"})
        """,
    )
    code, answer, stderr = describe(path)
    assert code == 0, answer
    assert answer["protocol"] == PROTOCOL_VERSION
    assert answer["omnitron"] == __version__
    assert answer["python"] == sys.executable
    system = answer["system"]
    assert isinstance(system, dict)
    assert system["name"] == "shop"
    assert system["start_order"] == ["http", "billing"]
    assert system["processes"][1]["instances"] == 2
    assert system["processes"][1]["env"] == {"PORT": "8000"}
    assert system["processes"][0]["topology"] == {"expose": False, "access": ["http"]}
    assert "chatty bootstrap" in stderr


def test_describe_reports_definition_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        from omnitron import define_system, Process
        system = define_system(name="shop", version="1.0", processes=[
            Process(name="http"), Process(name="http", module="m"),
        ])
        """,
    )
    code, answer, _ = describe(path)
    assert code == 2
    assert "system" not in answer
    assert answer["protocol"] == PROTOCOL_VERSION
    assert answer["errors"] == [
        {"path": "processes[0].module", "message": "is required"},
        {
            "path": "processes[1].name",
            "message": "duplicate process name 'http' (also processes[0])",
        },
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "import shop_missing_module\n",
            "ModuleNotFoundError: No module named 'shop_missing_module'",
        ),
        ("x = 1\nraise RuntimeError('boom')\n", "RuntimeError: boom"),
        ("def broken(:\n", "SyntaxError"),
    ],
)
def test_describe_reports_import_errors_with_file_and_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    code, answer, _ = describe(path)
    assert code == 2
    (error,) = answer["errors"]  # type: ignore[misc]
    assert error["path"] == "bootstrap"
    assert expected in error["message"]
    line = text.count("\n") if "boom" in text else 1
    assert f"{path}:{line}" in error["message"]


def test_describe_reports_an_error_in_a_module_the_bootstrap_imports(tmp_path: Path) -> None:
    (tmp_path / "settings.py").write_text("a = 1\nb = undefined_name\n")
    path = write(tmp_path, "import settings\n")
    code, answer, _ = describe(path)
    assert code == 2
    (error,) = answer["errors"]  # type: ignore[misc]
    assert "NameError" in error["message"]
    assert f"{tmp_path / 'settings.py'}:2" in error["message"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x = 1\n", "defines no module-level `system`"),
        ("system = {'name': 'shop'}\n", "`system` in"),
    ],
)
def test_describe_requires_a_system(tmp_path: Path, text: str, expected: str) -> None:
    code, answer, _ = describe(write(tmp_path, text))
    assert code == 2
    (error,) = answer["errors"]  # type: ignore[misc]
    assert error["path"] == "bootstrap"
    assert expected in error["message"]


def test_describe_of_a_missing_file(tmp_path: Path) -> None:
    code, answer, _ = describe(tmp_path / "nope.py")
    assert code == 2
    assert answer["errors"] == [
        {"path": "bootstrap", "message": f"file not found: {tmp_path / 'nope.py'}"}
    ]


def test_usage_error_exits_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "omnitron.worker", "describe"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "usage: python -m omnitron.worker describe BOOTSTRAP_FILE" in done.stderr


SPEC_BOOTSTRAP = """
    from omnitron import define_system, Process
    system = define_system(name="shop", version="1.0", processes=[
        Process(name="billing", module="shop.billing", topology={"access": ["users"]}),
        Process(name="http", module="shop.http", instances=2, topology={"expose": True}),
    ])
    """


def spec_project(tmp_path: Path, http: str) -> Path:
    """SPEC's layout: ``billing`` accesses the ``users`` service of process ``http``."""
    (tmp_path / "shop").mkdir()
    write(tmp_path, "", "shop/__init__.py")
    write(tmp_path, http, "shop/http.py")
    write(
        tmp_path,
        """
        from omnitron.worker import public, service
        print("billing imported")
        @service("billing")
        class Billing:
            @public
            async def total(self) -> int:
                return 0
        """,
        "shop/billing.py",
    )
    return write(tmp_path, SPEC_BOOTSTRAP)


USERS = """
    from omnitron.worker import public, service
    @service("users")
    class Users:
        def __init__(self) -> None:
            raise AssertionError("describing never makes a service's instance")
        @public
        async def find_by_id(self, uid: str) -> dict:
            return {"id": uid}
    """


def test_describe_resolves_a_service_named_in_access_to_its_process(tmp_path: Path) -> None:
    code, answer, stderr = describe(spec_project(tmp_path, USERS))
    assert code == 0, answer
    system = answer["system"]
    assert isinstance(system, dict)
    assert system["start_order"] == ["http", "billing"]
    assert system["processes"][0]["topology"] == {"expose": False, "access": ["http"]}
    assert "billing imported" in stderr  # the modules' output stays off stdout


def test_describe_reports_a_service_name_no_process_serves(tmp_path: Path) -> None:
    http = USERS.replace('@service("users")', '@service("accounts")')
    code, answer, _ = describe(spec_project(tmp_path, http))
    assert code == 2
    assert answer["errors"] == [
        {
            "path": "processes[0].topology.access[0]",
            "message": "no process or service named 'users' in this system "
            "(processes: billing, http; services: accounts, billing)",
        }
    ]


def test_describe_reports_a_module_imported_for_its_services_that_fails(
    tmp_path: Path,
) -> None:
    code, answer, _ = describe(spec_project(tmp_path, "import no_such_module\n"))
    assert code == 2
    [error] = answer["errors"]  # type: ignore[misc]
    assert error["path"] == "processes[1].module"
    assert error["message"].startswith(
        "imported to find the services named in topology access, and it failed: "
        f"ModuleNotFoundError: No module named 'no_such_module' ({tmp_path}/shop/http.py:1)"
    )
