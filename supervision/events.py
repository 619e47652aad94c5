"""Lifecycle events of a supervision tree (see :meth:`Supervisor.subscribe`)."""

from ._events import ChildExited as ChildExited
from ._events import ChildReady as ChildReady
from ._events import ChildRestarting as ChildRestarting
from ._events import ChildStarted as ChildStarted
from ._events import ChildStopped as ChildStopped
from ._events import Event as Event
from ._events import EventsDropped as EventsDropped
from ._events import SupervisorGaveUp as SupervisorGaveUp

__all__ = [
    "Event",
    "ChildStarted",
    "ChildReady",
    "ChildExited",
    "ChildRestarting",
    "ChildStopped",
    "SupervisorGaveUp",
    "EventsDropped",
]
