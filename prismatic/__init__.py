"""Prismatic: Erlang/OTP-grade supervision trees of OS processes for Python.

This module only re-exports; the implementation lives in private modules. The client side
(``connect``, event streams, subscriptions: ZeroMQ) is imported on first access, so a tree's
processes, forked from an image that imported ``prismatic``, do not carry it: every fork and
every exit then has fewer pages to copy and free.
"""

from ._address import Global, Pid
from ._childspec import (
    AutoShutdown, ChildSpec, ChildType, RestartType, ShutdownKind, Strategy, SupervisorSpec,
    SupFlags, check_child_specs,
)
from ._errors import (
    CallError, CallTimeout, ChildSpecError, ControlError, EventLogError, EventLogFormatError,
    EventLogFullError, MailboxFull, NodeError, NoProcError, PrismaticError, ProcessDown,
    PubSubError, RegistryError, StartError, SupervisorError, TopicError,
)
from ._exit import (
    Crashed, ExitCode, ExitReason, Killed, NoConnection, NoProc, Normal, Shutdown, describe,
    is_abnormal,
)
from ._notices import Caller, Down, Exit, GlobalNameConflict
from ._program import FileCheck, HttpCheck, LineCheck, NotifyCheck, PortCheck, Program
from ._pubsub_wire import Event
from ._worker import Ignore, Stop, Worker
from .supervisors._events import ChildInfo

__all__ = [
    "Worker", "Stop", "Ignore",
    "Program", "PortCheck", "HttpCheck", "FileCheck", "LineCheck", "NotifyCheck",
    "ChildSpec", "SupFlags", "SupervisorSpec", "check_child_specs",
    "RestartType", "ChildType", "ShutdownKind", "Strategy", "AutoShutdown",
    "ExitReason", "Normal", "Shutdown", "Crashed", "Killed", "ExitCode", "NoProc", "NoConnection",
    "is_abnormal", "describe",
    "Pid", "ChildInfo",
    "connect", "NodeConnection", "open_event_stream", "EventStream",
    "PrismaticError", "ChildSpecError", "SupervisorError", "StartError", "NodeError",
    "ControlError", "EventLogError", "EventLogFormatError", "EventLogFullError",
    "Caller", "Down", "Exit", "GlobalNameConflict", "Global",
    "CallError", "CallTimeout", "ProcessDown", "NoProcError", "MailboxFull", "RegistryError",
    "Event", "Subscription", "open_subscription", "PubSubError", "TopicError",
]

_LAZY = {
    "connect": "._client", "NodeConnection": "._client",
    "open_event_stream": "._event_stream", "EventStream": "._event_stream",
    "Subscription": "._subscription",
    "open_subscription": "._subscription",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prismatic' has no attribute {name!r}")
    import importlib  # noqa: PLC0415 - the point is to import late

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
