"""Finding and reading configuration files; ``define_ecosystem`` for Python configs."""

from __future__ import annotations

import builtins
import os
import stat
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs

from ._build import build_ecosystem
from ._errors import ConfigError, ConfigIssue, ConfigNotFound
from ._fields import BuildContext, Invalid, check_name
from ._locate import TomlLocator
from ._model import Ecosystem

__all__ = ["CONFIG_FILENAMES", "MAX_CONFIG_SIZE", "define_ecosystem", "find_config", "load_config"]

CONFIG_FILENAMES = ("omnitron.config.py", "omnitron.toml", "pyproject.toml")
"""Looked for in this order in each directory, from the start directory upward."""

MAX_CONFIG_SIZE = 1024 * 1024
"""Larger files are rejected before they are parsed."""


@attrs.frozen
class _Loading:
    file: Path
    base_dir: Path
    environ: Mapping[str, str]


# Set while a Python config file runs, so that its define_ecosystem(...) call resolves
# paths against that file and expands ${VAR} from the environment load_config was given.
_LOADING: ContextVar[_Loading | None] = ContextVar("omnitron_config_loading", default=None)


def _fail(
    path: Path | None, message: str, *, line: int | None = None, column: int | None = None
) -> ConfigError:
    return ConfigError([ConfigIssue(file=path, path="", message=message, line=line, column=column)])


# --------------------------------------------------------------------------- discovery


def find_config(start: Path | str | None = None) -> Path:
    """The configuration file for the project containing ``start``.

    Each directory from ``start`` (default: the current directory) up to the
    filesystem root is searched for, in this order, ``omnitron.config.py``,
    ``omnitron.toml``, and a ``pyproject.toml`` with a ``[tool.omnitron]`` table (a
    ``pyproject.toml`` without one is skipped). The first hit wins.

    Returns:
        The absolute path of the file found.

    Raises:
        ConfigNotFound: Nothing found; the message says where it searched.
    """
    here = Path(os.path.abspath(Path.cwd() if start is None else start))
    if os.path.isfile(here):
        here = here.parent
    searched = []
    for directory in (here, *here.parents):
        searched.append(directory)
        for name in CONFIG_FILENAMES:
            candidate = directory / name
            if not os.path.lexists(candidate):
                continue
            if name == "pyproject.toml" and not _declares_omnitron(candidate):
                continue
            return candidate
    message = (
        f"no configuration found: looked for {', '.join(CONFIG_FILENAMES[:2])} and pyproject.toml "
        f"with [tool.omnitron] in {here} and its parent directories up to {here.anchor}; "
        "create one or pass --config PATH"
    )
    raise ConfigNotFound(ConfigIssue(file=None, path="", message=message), searched)


def _declares_omnitron(pyproject: Path) -> bool:
    try:
        data = _read(pyproject)
    except ConfigError:
        return False
    import tomllib

    try:
        document = tomllib.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        # Broken, but meant for us: load_config will say what is wrong with it.
        return b"tool.omnitron" in data
    tool = document.get("tool")
    return isinstance(tool, dict) and isinstance(tool.get("omnitron"), dict)


# --------------------------------------------------------------------------- reading


def _read(path: Path) -> bytes:
    """The file's bytes, capped at :data:`MAX_CONFIG_SIZE`, with a distinct error per failure."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigNotFound(ConfigIssue(file=path, path="", message="not found")) from None
    except PermissionError:
        raise _fail(path, "permission denied") from None
    except IsADirectoryError:
        raise _fail(path, "is a directory") from None
    except OSError as exc:
        raise _fail(path, f"cannot open: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise _fail(path, "is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise _fail(path, "not a regular file")
        too_large = _fail(path, f"too large: more than {MAX_CONFIG_SIZE // 1024} KiB")
        if info.st_size > MAX_CONFIG_SIZE:
            raise too_large
        chunks = []
        remaining = MAX_CONFIG_SIZE + 1  # the file may grow after fstat
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_CONFIG_SIZE:
        raise too_large
    return data


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _fail(path, f"not valid UTF-8 (byte {data[exc.start]:#04x})", line=line) from None


def _parse_toml(path: Path, text: str) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11 puts the position only in the message: "... (at line 3, column 7)".
        message, found, position = str(exc).rpartition(" (at line ")
        line = column = None
        if found:
            line_text, _, column_text = position.rstrip(")").partition(", column ")
            if line_text.isdigit() and column_text.isdigit():
                line, column = int(line_text), int(column_text)
        else:
            message = str(exc).removesuffix(" (at end of document)")
            line = text.count("\n") + 1
        raise _fail(
            path, f"syntax error: {message[:1].lower()}{message[1:]}", line=line, column=column
        ) from None
    except RecursionError:
        raise _fail(path, "syntax error: arrays or tables nested too deeply") from None


def _default_project(name: str | None) -> str | None:
    try:
        return check_name(name, "project")
    except Invalid:
        return None


def load_config(path: Path | str, *, environ: Mapping[str, str] | None = None) -> Ecosystem:
    """Read and validate one configuration file.

    ``.py`` files run as a module that must define ``ecosystem =
    define_ecosystem(...)``; ``.toml`` files are the same data as TOML
    (``pyproject.toml``: its ``[tool.omnitron]`` table). Relative paths resolve
    against the file's directory, not the current directory.

    Args:
        path: The file (see :func:`find_config`).
        environ: Where ``${VAR}`` in ``env`` values expand from; default
            ``os.environ``.

    Returns:
        The validated ecosystem; ``.warnings`` lists what does not prevent a start
        (e.g. ``empty: no apps defined``).

    Raises:
        ConfigNotFound: The file does not exist.
        ConfigError: Anything else: unreadable, too large, a syntax error (with
            line and column), or every validation problem found.
    """
    path = Path(path)
    data = _read(path)
    environ = os.environ if environ is None else environ
    base_dir = Path(os.path.abspath(path)).parent
    if path.suffix == ".py":
        return _load_python(path, data, base_dir, environ)
    if path.suffix != ".toml":
        raise _fail(
            path, "unsupported file type; use omnitron.config.py, omnitron.toml or pyproject.toml"
        )
    text = _decode(path, data)
    document = _parse_toml(path, text)
    prefix: tuple[str, ...] = ()
    project_default = _default_project(base_dir.name)
    if path.name == "pyproject.toml":
        tool = document.get("tool")
        raw = tool.get("omnitron") if isinstance(tool, dict) else None
        if not isinstance(raw, dict):
            raise _fail(path, "has no [tool.omnitron] table")
        project = document.get("project")
        if isinstance(project, dict):
            project_default = _default_project(project.get("name")) or project_default
        document, prefix = raw, ("tool", "omnitron")
    ctx = BuildContext(
        file=path, base_dir=base_dir, environ=environ, locator=TomlLocator(text, prefix)
    )
    return build_ecosystem(ctx, document, project_default=project_default)


def _line_in(traceback: TracebackType | None, filename: str) -> int | None:
    line = None
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == filename:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


def _load_python(path: Path, data: bytes, base_dir: Path, environ: Mapping[str, str]) -> Ecosystem:
    filename = str(path)
    try:
        # As a plain interpreter runs it, even in a daemon under -OO: its asserts
        # and docstrings behave in the daemon as in `omnitron check`.
        code = compile(data, filename, "exec", dont_inherit=True, optimize=0)
    except SyntaxError as exc:
        raise _fail(path, f"syntax error: {exc.msg}", line=exc.lineno, column=exc.offset) from None
    except ValueError as exc:  # e.g. NUL bytes in the source
        raise _fail(path, f"cannot compile: {exc}") from None
    namespace: dict[str, Any] = {
        "__name__": "__omnitron_config__",
        "__file__": filename,
        "__builtins__": builtins,
    }
    token = _LOADING.set(_Loading(file=path, base_dir=base_dir, environ=environ))
    try:
        exec(code, namespace)
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:  # SystemExit too: a config must not end the daemon
        message = f"{type(exc).__name__}: {exc}"
        raise _fail(path, message[:500], line=_line_in(exc.__traceback__, filename)) from exc
    finally:
        _LOADING.reset(token)
    ecosystem = namespace.get("ecosystem")
    if ecosystem is None:
        raise _fail(
            path, "does not define `ecosystem`; end it with: ecosystem = define_ecosystem(...)"
        )
    if not isinstance(ecosystem, Ecosystem):
        raise _fail(
            path,
            f"`ecosystem` is a {type(ecosystem).__name__}, not the result of define_ecosystem(...)",
        )
    return ecosystem


# --------------------------------------------------------------------------- define_ecosystem


def _plain(value: Any) -> Any:
    """``value`` with any records inside turned back into plain data."""
    if attrs.has(type(value)):
        from ._serialize import unstructure

        return unstructure(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def define_ecosystem(
    *,
    project: str | None = None,
    supervision: Mapping[str, Any] | Any = None,
    monitoring: Mapping[str, Any] | Any = None,
    logging: Mapping[str, Any] | Any = None,
    apps: list[Any] | tuple[Any, ...] | None = None,
    stacks: Mapping[str, Any] | None = None,
    base_dir: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Ecosystem:
    """Build an ecosystem in Python, from the same data an ``omnitron.toml`` holds.

    Used in ``omnitron.config.py`` as ``ecosystem = define_ecosystem(...)``: each
    argument takes what the TOML section of the same name takes (plain dicts and
    lists, or records such as :class:`AppConfig`), and the result equals the one
    the TOML form gives. Durations may be numbers or ``"30s"``; ``None`` means
    "not set".

    Args:
        base_dir: Relative paths resolve against it. Default: the directory of the
            config file being loaded, else of the file calling this, else the
            current directory.
        environ: Where ``${VAR}`` expands from. Default: what :func:`load_config`
            was given, else ``os.environ``.

    Raises:
        ConfigError: Every problem found, located at the line of this call.
    """
    caller = sys._getframe(1)
    loading = _LOADING.get()
    file: Path | None
    if loading is not None:
        file, directory, env = loading.file, loading.base_dir, loading.environ
    else:
        filename = caller.f_globals.get("__file__")
        file = Path(filename) if isinstance(filename, str) else None
        directory = Path(os.path.abspath(file)).parent if file is not None else Path.cwd()
        env = os.environ
    if base_dir is not None:
        directory = Path(os.path.abspath(base_dir))
    if environ is not None:
        env = environ
    same_file = file is not None and caller.f_code.co_filename == str(file)
    sections = {
        "project": project,
        "supervision": supervision,
        "monitoring": monitoring,
        "logging": logging,
        "apps": apps,
        "stacks": stacks,
    }
    raw = {key: _plain(value) for key, value in sections.items() if value is not None}
    ctx = BuildContext(
        file=file,
        base_dir=directory,
        environ=env,
        default_line=caller.f_lineno if same_file else None,
    )
    return build_ecosystem(ctx, raw, project_default=_default_project(directory.name))
