"""Erlang/OTP-style supervision trees made of Trio nurseries.

Leaves are OS processes (:class:`ProcessChild`) and Trio tasks (:class:`TaskChild`);
inner nodes are supervisors (:class:`SupervisorSpec`). Run a tree with
:func:`open_supervisor` or :func:`run_supervisor`. Events live in
:mod:`supervision.events`, the fake child for virtual-time tests in
:mod:`supervision.testing`.
"""

from ._errors import ChildAlreadyExists as ChildAlreadyExists
from ._errors import ChildNotFound as ChildNotFound
from ._errors import ChildRunning as ChildRunning
from ._errors import InvalidSpec as InvalidSpec
from ._errors import InvalidSpecType as InvalidSpecType
from ._errors import SpawnError as SpawnError
from ._errors import StartFailure as StartFailure
from ._errors import SupervisionError as SupervisionError
from ._errors import SupervisorGaveUp as SupervisorGaveUp
from ._errors import SupervisorNotRunning as SupervisorNotRunning
from ._exit import ExitStatus as ExitStatus
from ._procfs import MarkedProcess as MarkedProcess
from ._procfs import PinnedProcess as PinnedProcess
from ._procfs import ProcessIdentity as ProcessIdentity
from ._procfs import TerminateReport as TerminateReport
from ._procfs import descendants as descendants
from ._procfs import find_marked as find_marked
from ._procfs import kill_processes as kill_processes
from ._procfs import process_children as process_children
from ._procfs import terminate_processes as terminate_processes
from ._pubsub import Subscription as Subscription
from ._spec import AutoShutdown as AutoShutdown
from ._spec import Backoff as Backoff
from ._spec import ChildSpec as ChildSpec
from ._spec import Intensity as Intensity
from ._spec import Listen as Listen
from ._spec import Output as Output
from ._spec import ProcessChild as ProcessChild
from ._spec import Ready as Ready
from ._spec import Restart as Restart
from ._spec import Strategy as Strategy
from ._spec import SupervisorSpec as SupervisorSpec
from ._spec import TaskChild as TaskChild
from ._supervisor import ChildCounts as ChildCounts
from ._supervisor import ChildInfo as ChildInfo
from ._supervisor import ChildState as ChildState
from ._supervisor import Supervisor as Supervisor
from ._supervisor import open_supervisor as open_supervisor
from ._supervisor import run_supervisor as run_supervisor

__version__ = "0.1.0"

__all__ = [
    # specs
    "SupervisorSpec",
    "ChildSpec",
    "ProcessChild",
    "TaskChild",
    "Strategy",
    "Restart",
    "AutoShutdown",
    "Intensity",
    "Backoff",
    "Ready",
    "Output",
    "Listen",
    # running a tree
    "open_supervisor",
    "run_supervisor",
    "Supervisor",
    "Subscription",
    "ChildInfo",
    "ChildCounts",
    "ChildState",
    "ExitStatus",
    # processes (procfs)
    "ProcessIdentity",
    "PinnedProcess",
    "descendants",
    "MarkedProcess",
    "find_marked",
    "terminate_processes",
    "kill_processes",
    "process_children",
    "TerminateReport",
    # errors
    "SupervisionError",
    "InvalidSpec",
    "InvalidSpecType",
    "StartFailure",
    "SpawnError",
    "SupervisorGaveUp",
    "SupervisorNotRunning",
    "ChildNotFound",
    "ChildAlreadyExists",
    "ChildRunning",
]
