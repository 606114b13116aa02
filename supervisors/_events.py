"""The vocabulary of the supervisor state machine: its state, what goes in, what comes out.

``decide(state, event) -> (state, actions)`` consumes the *events* below and returns *actions*
for the I/O loop to carry out. An action that needs a result (``StartProc``, ``StopProc``,
``StopMany``) is answered by the loop with a later event (``Started``/``StartFailed``/
``Ignored``, or one ``Exited`` per stopped pid). Requests and replies cross process
boundaries, so they are plain msgspec Structs with wire-safe fields.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

from .._childspec import ChildSpec, ChildType, SupFlags
from .._exit import ExitReason

__all__ = [
    "ChildStatus", "Phase", "FailMode", "Child", "Job", "StopStep", "StartStep", "StopAllStep",
    "ExitStep", "ReadyStep", "ReplyStep", "SupervisorState",
    "Init", "Exited", "Started", "StartFailed", "Ignored", "TryAgain", "ShutdownRequested",
    "Request", "Event",
    "WhichChildren", "CountChildren", "StartChild", "StartDynamic", "TerminateChild",
    "RestartChild", "DeleteChild", "GetChildSpec", "WhichChild", "Reload", "Op",
    "ReloadTableStep", "ReloadDoneStep",
    "StartProc", "StopProc", "StopMany", "Reply", "Report", "Ready", "Exit", "Action",
    "LifecycleKind", "Ok", "Err", "ChildInfo",
]


class ChildStatus(enum.Enum):
    RUNNING = "running"  # has a live process
    UNDEFINED = "undefined"  # spec kept, no process (OTP's pid = undefined)
    RESTARTING = "restarting"  # a restart failed and will be tried again


class Phase(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class FailMode(enum.Enum):
    """What a failed start inside a job means."""

    ABORT_INIT = "abort_init"  # the supervisor's own start fails
    TRY_AGAIN = "try_again"  # a restart: mark restarting, retry later (counts to intensity)
    REPLY = "reply"  # an API call: answer the caller with the error
    RELOAD = "reload"  # a reload: the child keeps its new spec, no process; the job goes on


class Child(msgspec.Struct, frozen=True):
    """One row of the child table. ``pid`` is the live process while RUNNING, and the last
    pid while RESTARTING (OTP's ``{restarting, OldPid}``)."""

    key: str
    spec: ChildSpec
    status: ChildStatus = ChildStatus.UNDEFINED
    pid: int | None = None
    dynamic: bool = False


class StopStep(msgspec.Struct, frozen=True):
    key: str


class StopAllStep(msgspec.Struct, frozen=True):
    """Stop every dynamic child at once (simple_one_for_one's shutdown)."""


class StartStep(msgspec.Struct, frozen=True):
    key: str


class ExitStep(msgspec.Struct, frozen=True):
    reason: ExitReason


class ReadyStep(msgspec.Struct, frozen=True):
    pass


class ReplyStep(msgspec.Struct, frozen=True):
    """Answer ``ok`` to request ``ref`` once the steps before it are done."""

    ref: int


class ReloadTableStep(msgspec.Struct, frozen=True):
    """A reload's new child table, taken once its stops are done (see ``_reload``):
    (key, spec, keep the row's process and status, dynamic)."""

    table: tuple[tuple[str, ChildSpec, bool, bool], ...]


class ReloadDoneStep(msgspec.Struct, frozen=True):
    """Answer the reload ``ref`` with ``summary`` and the keys whose start failed."""

    ref: int
    summary: dict[str, Any]


Step = StopStep | StopAllStep | StartStep | ExitStep | ReadyStep | ReplyStep \
    | ReloadTableStep | ReloadDoneStep


class Job(msgspec.Struct, frozen=True):
    """A multi-step operation in progress; while it awaits an effect the machine defers
    every unrelated event, as OTP's synchronous supervisor leaves them in its mailbox."""

    steps: tuple[Any, ...]
    on_start_fail: FailMode
    ref: int | None = None
    remove_on_fail: bool = False
    await_start: str | None = None
    await_exits: frozenset[int] = frozenset()
    failed: tuple[str, ...] = ()  # a reload's children whose start failed


class SupervisorState(msgspec.Struct, frozen=True):
    """Invariant: ``children`` is in start order; keys are unique; at most one row holds a
    given live pid; ``job is None`` unless ``phase`` is STARTING/STOPPING or a job awaits."""

    flags: SupFlags
    children: tuple[Child, ...] = ()
    restarts: tuple[float, ...] = ()
    phase: Phase = Phase.STARTING
    job: Job | None = None
    deferred: tuple[Any, ...] = ()
    next_dynamic: int = 0


# ---- events -------------------------------------------------------------------------------

class Init(msgspec.Struct, frozen=True, tag=True):
    now: float = 0.0


class Exited(msgspec.Struct, frozen=True, tag=True):
    pid: int
    reason: ExitReason
    now: float = 0.0


class Started(msgspec.Struct, frozen=True, tag=True):
    key: str
    pid: int
    now: float = 0.0
    info: Any = None  # what the child's init returned (OTP's {ok, Pid, Info})


class StartFailed(msgspec.Struct, frozen=True, tag=True):
    key: str
    reason: ExitReason
    now: float = 0.0


class Ignored(msgspec.Struct, frozen=True, tag=True):
    key: str
    now: float = 0.0


class TryAgain(msgspec.Struct, frozen=True, tag=True):
    key: str
    now: float = 0.0


class ShutdownRequested(msgspec.Struct, frozen=True, tag=True):
    now: float = 0.0


class WhichChildren(msgspec.Struct, frozen=True, tag=True):
    pass


class CountChildren(msgspec.Struct, frozen=True, tag=True):
    pass


class StartChild(msgspec.Struct, frozen=True, tag=True):
    spec: ChildSpec


class StartDynamic(msgspec.Struct, frozen=True, tag=True):
    """simple_one_for_one's ``start_child(Sup, ExtraArgs)``."""

    args: tuple[Any, ...] = ()


class TerminateChild(msgspec.Struct, frozen=True, tag=True):
    """``target`` is a child id, or an OS pid for a simple_one_for_one child."""

    target: str | int


class RestartChild(msgspec.Struct, frozen=True, tag=True):
    id: str


class DeleteChild(msgspec.Struct, frozen=True, tag=True):
    id: str


class GetChildSpec(msgspec.Struct, frozen=True, tag=True):
    """OTP's ``get_childspec``: ``target`` is a child id, or an OS pid for a
    simple_one_for_one child; the reply is the spec as ``spec_to_wire`` sends it."""

    target: str | int


class WhichChild(msgspec.Struct, frozen=True, tag=True):
    """OTP 26's ``which_child``: one :class:`ChildInfo` row, ``target`` as above."""

    target: str | int


class Reload(msgspec.Struct, frozen=True, tag=True):
    """Apply a new spec to a running supervisor (``prismatic reload``; see ``_reload``):
    its new flags, and its children as ``spec_to_wire`` sends them (maps, validated by the
    supervisor). The reply's value says what was done (``ReloadPlan.summary`` and
    ``failed``)."""

    flags: SupFlags
    children: tuple[Any, ...]


Op = WhichChildren | CountChildren | StartChild | StartDynamic | TerminateChild | RestartChild \
    | DeleteChild | GetChildSpec | WhichChild | Reload


class Request(msgspec.Struct, frozen=True, tag=True):
    ref: int
    op: Op
    now: float = 0.0


Event = Init | Exited | Started | StartFailed | Ignored | TryAgain | ShutdownRequested | Request


# ---- replies ------------------------------------------------------------------------------

class ChildInfo(msgspec.Struct, frozen=True):
    """One row of ``which_children``: ``pid`` is None for no process; ``restarting`` as OTP."""

    id: str | None
    pid: int | None
    restarting: bool
    type: str


class Ok(msgspec.Struct, frozen=True, tag=True):
    value: Any = None
    info: Any = None  # a start's extra info (OTP's {ok, Pid, Info}); None for other replies


class Err(msgspec.Struct, frozen=True, tag=True):
    """An OTP error term: ``reason`` is the atom (``not_found``, ``running``...)."""

    reason: str
    detail: str = ""
    exit_reason: ExitReason | None = None


# ---- actions ------------------------------------------------------------------------------

class LifecycleKind(enum.Enum):
    CHILD_STARTED = "child_started"
    CHILD_EXITED = "child_exited"  # an unexpected exit, restarted or not
    CHILD_STOPPED = "child_stopped"  # stopped by its supervisor
    START_ERROR = "start_error"
    SHUTDOWN_ERROR = "shutdown_error"  # a stopped child gave an unexpected reason
    INTENSITY_EXCEEDED = "intensity_exceeded"
    AUTO_SHUTDOWN = "auto_shutdown"
    # The row is gone from the supervisor (a temporary or dynamic child that ended, or
    # delete_child): whoever mirrors the tree forgets it (see prismatic._tree).
    CHILD_DELETED = "child_deleted"


class StartProc(msgspec.Struct, frozen=True):
    key: str
    spec: ChildSpec


class StopProc(msgspec.Struct, frozen=True):
    key: str
    pid: int
    shutdown: Any  # float seconds | ShutdownKind


class StopMany(msgspec.Struct, frozen=True):
    pids: tuple[int, ...]
    shutdown: Any


class Reply(msgspec.Struct, frozen=True):
    ref: int
    result: Ok | Err


class Report(msgspec.Struct, frozen=True):
    kind: LifecycleKind
    key: str
    pid: int | None = None
    reason: ExitReason | None = None
    child_type: ChildType = ChildType.WORKER


class Ready(msgspec.Struct, frozen=True):
    pass


class Exit(msgspec.Struct, frozen=True):
    reason: ExitReason


Action = StartProc | StopProc | StopMany | Reply | Report | Ready | Exit
