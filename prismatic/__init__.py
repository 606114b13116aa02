"""Prismatic: Erlang/OTP-grade supervision trees of OS processes for Python.

This module only re-exports; the implementation lives in private modules.
"""

from ._address import Pid
from ._childspec import (
    AutoShutdown, ChildSpec, ChildType, RestartType, ShutdownKind, Strategy, SupervisorSpec,
    SupFlags, check_child_specs,
)
from ._client import EventStream, NodeConnection, connect, open_event_stream
from ._errors import (
    CallError, CallTimeout, ChildSpecError, ControlError, EventLogError, EventLogFormatError,
    EventLogFullError, MailboxFull, NodeError, NoProcError, PrismaticError, ProcessDown,
    PubSubError, RegistryError, StartError, SupervisorError, TopicError,
)
from ._exit import (
    Crashed, ExitCode, ExitReason, Killed, NoProc, Normal, Shutdown, describe, is_abnormal,
)
from ._notices import Caller, Down, Exit
from ._pubsub_wire import Event
from ._subscription import Subscription, open_subscription
from ._worker import Ignore, Stop, Worker
from .supervisors._events import ChildInfo

__all__ = [
    "Worker", "Stop", "Ignore",
    "ChildSpec", "SupFlags", "SupervisorSpec", "check_child_specs",
    "RestartType", "ChildType", "ShutdownKind", "Strategy", "AutoShutdown",
    "ExitReason", "Normal", "Shutdown", "Crashed", "Killed", "ExitCode", "NoProc",
    "is_abnormal", "describe",
    "Pid", "ChildInfo",
    "connect", "NodeConnection", "open_event_stream", "EventStream",
    "PrismaticError", "ChildSpecError", "SupervisorError", "StartError", "NodeError",
    "ControlError", "EventLogError", "EventLogFormatError", "EventLogFullError",
    "Caller", "Down", "Exit",
    "CallError", "CallTimeout", "ProcessDown", "NoProcError", "MailboxFull", "RegistryError",
    "Event", "Subscription", "open_subscription", "PubSubError", "TopicError",
]
