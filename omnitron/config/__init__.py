"""The ecosystem configuration: finding, loading, validating and comparing it.

``load_config(find_config())`` gives a frozen :class:`Ecosystem`, or raises one
:class:`ConfigError` listing every problem with its file, line and field path.
"""

from __future__ import annotations

from ._diff import AppChange as AppChange
from ._diff import EcosystemDiff as EcosystemDiff
from ._diff import FieldChange as FieldChange
from ._diff import diff_ecosystems as diff_ecosystems
from ._errors import ConfigError as ConfigError
from ._errors import ConfigIssue as ConfigIssue
from ._errors import ConfigNotFound as ConfigNotFound
from ._fields import SECRET_PREFIX as SECRET_PREFIX
from ._fields import secret_reference as secret_reference
from ._loader import CONFIG_FILENAMES as CONFIG_FILENAMES
from ._loader import MAX_CONFIG_SIZE as MAX_CONFIG_SIZE
from ._loader import define_ecosystem as define_ecosystem
from ._loader import find_config as find_config
from ._loader import load_config as load_config
from ._model import DEFAULT_WATCH_IGNORE as DEFAULT_WATCH_IGNORE
from ._model import AppConfig as AppConfig
from ._model import BackoffConfig as BackoffConfig
from ._model import DaemonDeath as DaemonDeath
from ._model import Ecosystem as Ecosystem
from ._model import HealthCheckConfig as HealthCheckConfig
from ._model import HealthConfig as HealthConfig
from ._model import LoggingConfig as LoggingConfig
from ._model import LogLevel as LogLevel
from ._model import MetricsConfig as MetricsConfig
from ._model import MonitoringConfig as MonitoringConfig
from ._model import ReadyConfig as ReadyConfig
from ._model import ReadyKind as ReadyKind
from ._model import Restart as Restart
from ._model import RestartPolicy as RestartPolicy
from ._model import SocketConfig as SocketConfig
from ._model import StackAppOverride as StackAppOverride
from ._model import StackConfig as StackConfig
from ._model import Strategy as Strategy
from ._model import SupervisionConfig as SupervisionConfig
from ._model import WatchConfig as WatchConfig
from ._units import format_duration as format_duration
from ._units import format_size as format_size
from ._units import parse_duration as parse_duration
from ._units import parse_size as parse_size

__all__ = [
    # loading
    "CONFIG_FILENAMES",
    "MAX_CONFIG_SIZE",
    "find_config",
    "load_config",
    "define_ecosystem",
    # errors
    "ConfigError",
    "ConfigNotFound",
    "ConfigIssue",
    # records
    "Ecosystem",
    "AppConfig",
    "SupervisionConfig",
    "BackoffConfig",
    "MonitoringConfig",
    "HealthCheckConfig",
    "MetricsConfig",
    "LoggingConfig",
    "RestartPolicy",
    "ReadyConfig",
    "HealthConfig",
    "SocketConfig",
    "WatchConfig",
    "StackConfig",
    "StackAppOverride",
    "DEFAULT_WATCH_IGNORE",
    # enums
    "Strategy",
    "Restart",
    "LogLevel",
    "ReadyKind",
    "DaemonDeath",
    # reload
    "diff_ecosystems",
    "EcosystemDiff",
    "AppChange",
    "FieldChange",
    # units
    "parse_duration",
    "parse_size",
    "format_duration",
    "format_size",
    # secrets
    "SECRET_PREFIX",
    "secret_reference",
]
