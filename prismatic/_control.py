"""The node's control protocol: what a client (CLI, tests, ``prismatic.connect``) sends.

Transport: ZeroMQ DEALER (client) -> ROUTER (node) at ``ipc://<data dir>/control.sock``; one
msgpack frame per message. Supervisor operations travel on as ``request`` frames down the
tree to the supervisor at ``path``; ``tree``, ``status`` and ``metrics`` are answered by the
node itself. Every request gets exactly one :class:`ControlReply` carrying ``Ok`` or ``Err``.

Authentication: every call carries ``cookie``, the contents of ``<data dir>/cookie`` (see
:mod:`._cookie`). The node checks it first, in constant time; a missing or wrong cookie is
answered ``Err("unauthorized", ...)`` and nothing else happens (logged, rate-limited, and
counted in ``prismatic_control_refusals_total``). A request that does not decode at all, or
is not one frame, is dropped (there is no ref to answer), logged (throttled, node-wide) and
counted as a bad frame (``prismatic_bad_frames_control_total``).

Limits: the node's ROUTER refuses a frame over :data:`CONTROL_MAX_BYTES` (``ZMQ_MAXMSGSIZE``:
libzmq drops that peer's connection before the frame is buffered, let alone checked; the
node counts that cut, :mod:`._connection_drops`); the
client refuses to send one (``ControlError``). No ``ZMQ_RCVHWM`` below libzmq's default is
set: on a ROUTER a lower one made libzmq drop messages uncounted.

=============  =====================================  ===========================================
call (tag)     fields                                 Ok value
=============  =====================================  ===========================================
``supervisor`` ref, path, op (a supervisor Op), cookie, the supervisor's reply (OTP's API)
               name (registered name, or ``""``)
``tree``       ref, cookie                            ``list[TreeRow]``
``status``     ref, cookie                            :class:`NodeStatus`
``metrics``    ref, cookie                            Prometheus text exposition (``str``)
``cl_members`` ref, cookie                            ``list[MemberRow]`` (prismatic.mesh._loop)
``cl_join``    ref, seeds (``HOST:PORT``), cookie     ``None``: the join was asked (retried)
``cl_leave``   ref, cookie                            ``None``: the leave was announced
``reload``     ref, cookie                            what the reload did (:mod:`._config_reload`)
=============  =====================================  ===========================================

The ``cl_*`` calls are answered ``Err("no_mesh", ...)`` by a node started without
``--listen``/``--join``.
"""

from __future__ import annotations

import enum

import msgspec

from ._exit import ExitReason

__all__ = ["SupervisorCall", "TreeCall", "StatusCall", "MetricsCall", "ControlCall",
           "ControlReply", "TreeRow", "NodeStatus", "ProcessState", "UNAUTHORIZED",
           "METRICS_FAILED", "CONTROL_MAX_BYTES", "ClusterMembersCall", "ClusterJoinCall",
           "ClusterLeaveCall", "NO_MESH", "NO_CONNECTION", "ReloadCall"]

UNAUTHORIZED = "unauthorized"  # the Err reason of a refused cookie
METRICS_FAILED = "metrics_failed"  # the node could not produce its metrics (logged there)
CONTROL_MAX_BYTES = 1024 * 1024  # a start_child with large args fits; 100 MiB does not
NO_MESH = "no_mesh"  # a cluster call to a node that runs without the mesh
NO_CONNECTION = "noconnection"  # a call for another node that is not a reachable member


class SupervisorCall(msgspec.Struct, frozen=True, tag="supervisor"):
    ref: int
    path: tuple[str, ...]
    op: msgspec.Raw
    cookie: str = ""
    # A registered supervisor name (``@name`` in the client): the node resolves it to that
    # supervisor's path, and ``path`` is then below it; ``noproc`` if nobody holds it.
    name: str = ""
    node: str = ""  # another member of the cluster: carried out there, over the mesh


class TreeCall(msgspec.Struct, frozen=True, tag="tree"):
    ref: int
    cookie: str = ""
    node: str = ""


class StatusCall(msgspec.Struct, frozen=True, tag="status"):
    ref: int
    cookie: str = ""
    node: str = ""


class MetricsCall(msgspec.Struct, frozen=True, tag="metrics"):
    ref: int
    cookie: str = ""


class ClusterMembersCall(msgspec.Struct, frozen=True, tag="cl_members"):
    ref: int
    cookie: str = ""


class ClusterJoinCall(msgspec.Struct, frozen=True, tag="cl_join"):
    ref: int
    seeds: tuple[str, ...] = ()
    cookie: str = ""


class ClusterLeaveCall(msgspec.Struct, frozen=True, tag="cl_leave"):
    ref: int
    cookie: str = ""


class ReloadCall(msgspec.Struct, frozen=True, tag="reload"):
    """Re-read the node's config file and apply its tree (``prismatic reload``)."""

    ref: int
    cookie: str = ""


ControlCall = SupervisorCall | TreeCall | StatusCall | MetricsCall | ClusterMembersCall \
    | ClusterJoinCall | ClusterLeaveCall | ReloadCall


class ControlReply(msgspec.Struct, frozen=True):
    ref: int
    result: msgspec.Raw  # Ok | Err


class ProcessState(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"  # no process: exited and not (yet) restarted, or terminated


class TreeRow(msgspec.Struct, frozen=True, gc=False):  # thousands per reply: untracked
    path: str
    type: str
    pid: int | None
    restarts: int
    uptime: float | None
    last_exit: ExitReason | None = None  # typed: decoded (and validated) at the client

    @property
    def state(self) -> ProcessState:
        return ProcessState.RUNNING if self.pid is not None else ProcessState.STOPPED


class NodeStatus(msgspec.Struct, frozen=True):
    node: str
    pid: int
    root_pid: int
    ready: bool
    uptime: float
    processes: int
    data_dir: str
    supervisors: int = 0
    workers: int = 0
    restarts: int = 0
    metrics_url: str | None = None
    dead_tasks: tuple[str, ...] = ()  # long-lived node tasks that ended: restart the node
