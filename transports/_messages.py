"""Wire frames of the messaging plane: process mailboxes and the node's hub.

Same framing as the supervision plane (:mod:`._framing`), a different tagged union, and
``array_like`` structs (the tag is the first array element) to keep hot frames small.

To a process's mailbox (``\\0prismatic/<node>/<ospid>``; each sender keeps one connection per
destination, so messages between one pair of processes arrive in send order):

=============  ===================  =======================================================
tag            direction            meaning
=============  ===================  =======================================================
``call``       sender -> mailbox    ``msg`` for ``handle_call``; ``to_name`` is the registered
                                    name the sender resolved, checked by the callee
``reply``      mailbox -> sender    the answer to call ``ref`` (on the same connection)
``refused``    mailbox -> sender    call ``ref`` not taken: ``reason`` (``not_registered``)
``cast``       sender -> mailbox    ``msg`` for ``handle_cast``
``info``       sender -> mailbox    ``msg`` for ``handle_info`` (``send``)
``down``       hub -> mailbox       a monitor fired (:class:`~prismatic.Down`)
``exit``       hub -> mailbox       a linked process exited (:class:`~prismatic.Exit`)
``global_conflict`` hub -> mailbox  this process lost a global name at a partition's heal
``stats``      node -> mailbox      the runtime's counters, answered ahead of the queue
``d_hello``    node -> mailbox      a process of another node asks for this process's own
                                    direct listener (:mod:`prismatic._direct_listener`);
                                    replied with its port, or nil; ``token`` names the
                                    asker's connection to it
``d_fence``    node -> mailbox      what ``token``'s asker sent on the node path before
                                    switching is all in: its listener messages may follow
``d_gone``     mailbox -> node      ``token``'s asker is gone (its route's connection went
                                    and did not come back): the node stops watching for it
=============  ===================  =======================================================

To the node's hub (``\\0prismatic/<node>/hub``), request/reply by ``ref``:

=================  ======================================================================
tag                meaning
=================  ======================================================================
``register``       name ``name`` for ``pid`` (unique per node)
``unregister``     drop ``name`` held by ``pid``
``whereis``        the pid registered as ``name``, or nil
``monitor``        ``watcher`` monitors ``target`` (or ``name`` on ``target.node``, or a
                   global name, resolved now); the reply carries the monitor ref. With
                   ``here``, its ``down`` comes on this connection (a client's monitor)
``demonitor``      drop monitor ``mref`` of ``watcher``
``link``           link ``a`` and ``b`` (both directions; ``name`` and ``here`` as monitor's)
``unlink``         remove that link
``exit_of``        the exit reason of ``pid``, waiting up to ``wait`` s for it to be known
``dead_letter``    a message that could not be delivered (no reply)
``direct_counts``  what the process counted of its direct routes/listener (no reply)
``emit``           append events to the node's event log; replied once durable (the ack)
``g_register``     global name ``name`` for ``pid`` (cluster-wide; :mod:`prismatic.mesh._global`)
``g_unregister``   drop global name ``name`` held by ``pid``
``g_whereis``      the pid holding global name ``name``, or nil
``hub_reply``      the answer: ``ok`` and ``value``, or ``error`` (a reason atom) and detail
``down``, ``exit`` to a client, on its hub connection: its monitor or link fired (``here``)
=================  ======================================================================
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._address import Global, Pid
from .._notices import Down, Exit, GlobalNameConflict

__all__ = [
    "CallFrame", "CallReply", "CallRefused", "CastFrame", "InfoFrame", "StatsReq",
    "DirectHello", "DirectFence", "DirectGone", "MailboxFrame",
    "RegisterReq", "UnregisterReq", "WhereisReq", "MonitorReq", "DemonitorReq", "LinkReq",
    "UnlinkReq", "ExitOfReq", "DeadLetterNote", "DirectCountsNote", "EmitReq", "HubReply",
    "HubRequest",
    "GlobalRegisterReq", "GlobalUnregisterReq", "GlobalWhereisReq", "GLOBAL_REQUESTS",
]


class CallFrame(msgspec.Struct, frozen=True, tag="call", array_like=True):
    ref: int
    msg: Any
    sender: Pid | None = None
    to_name: str | None = None


class CallReply(msgspec.Struct, frozen=True, tag="reply", array_like=True):
    ref: int
    value: Any


class CallRefused(msgspec.Struct, frozen=True, tag="refused", array_like=True):
    ref: int
    reason: str


class CastFrame(msgspec.Struct, frozen=True, tag="cast", array_like=True):
    msg: Any


class InfoFrame(msgspec.Struct, frozen=True, tag="info", array_like=True):
    msg: Any


class StatsReq(msgspec.Struct, frozen=True, tag="stats", array_like=True):
    ref: int


class DirectHello(msgspec.Struct, frozen=True, tag="d_hello", array_like=True):
    """Open (or give) this process's direct listener. The caller sends ``ref`` and ``token``;
    its node's port fills in where to listen and the cluster's keys (taken only from the
    node's own process)."""

    ref: int
    token: bytes
    host: str = ""
    public: bytes = b""
    secret: bytes = b""

    def __repr__(self) -> str:  # the cluster's keys never reach a log line
        return f"DirectHello({self.ref!r}, {self.host!r})"


class DirectFence(msgspec.Struct, frozen=True, tag="d_fence", array_like=True):
    token: bytes


class DirectGone(msgspec.Struct, frozen=True, tag="d_gone", array_like=True):
    """From a process to its node only (never in a mailbox's union): the caller that asked
    as ``token`` is gone; the node need not tell it of this process's exit."""

    token: bytes


MailboxFrame = CallFrame | CallReply | CallRefused | CastFrame | InfoFrame | Down | Exit \
    | StatsReq | DirectHello | DirectFence \
    | GlobalNameConflict


class RegisterReq(msgspec.Struct, frozen=True, tag="register", array_like=True):
    ref: int
    name: str
    pid: Pid


class UnregisterReq(msgspec.Struct, frozen=True, tag="unregister", array_like=True):
    ref: int
    name: str
    pid: Pid


class WhereisReq(msgspec.Struct, frozen=True, tag="whereis", array_like=True):
    ref: int
    name: str


class MonitorReq(msgspec.Struct, frozen=True, tag="monitor", array_like=True):
    ref: int
    watcher: Pid
    target: Pid
    # A monitor by name: ``name`` registered on ``target.node`` (``target`` is then
    # ``Pid(node, 0)``), or a Global; the hub resolves it there, now.
    name: str | Global | None = None
    # The watcher is a client (not a process of the tree): its notices come back on this
    # hub connection, and the monitor ends with the connection.
    here: bool = False


class DemonitorReq(msgspec.Struct, frozen=True, tag="demonitor", array_like=True):
    ref: int
    watcher: Pid
    mref: int


class LinkReq(msgspec.Struct, frozen=True, tag="link", array_like=True):
    ref: int
    a: Pid
    b: Pid
    name: str | Global | None = None  # as MonitorReq's: ``b`` is resolved from it
    here: bool = False  # as MonitorReq's


class UnlinkReq(msgspec.Struct, frozen=True, tag="unlink", array_like=True):
    ref: int
    a: Pid
    b: Pid


class ExitOfReq(msgspec.Struct, frozen=True, tag="exit_of", array_like=True):
    ref: int
    pid: Pid
    wait: float


class DeadLetterNote(msgspec.Struct, frozen=True, tag="dead_letter", array_like=True):
    dest: str  # a pid or a name, as text
    reason: str  # noproc | not_registered | mailbox_full
    kind: str  # call | cast | info
    sender: Pid | None
    size: int  # encoded message bytes


class EmitReq(msgspec.Struct, frozen=True, tag="emit", array_like=True):
    """``payloads`` under one ``topic`` (several: one transaction); the reply carries the
    first sequence number, sent only after the transaction is synced."""

    ref: int
    topic: str
    payloads: list[Any]
    source: str
    correlation_id: str | None = None


class DirectCountsNote(msgspec.Struct, frozen=True, tag="direct_counts", array_like=True):
    """What a process counted of its direct routes and listener since its last note."""

    counts: dict[str, int]


class HubReply(msgspec.Struct, frozen=True, tag="hub_reply", array_like=True):
    ref: int
    value: Any = None
    error: str | None = None
    detail: str = ""


class GlobalRegisterReq(msgspec.Struct, frozen=True, tag="g_register", array_like=True):
    ref: int
    name: str
    pid: Pid


class GlobalUnregisterReq(msgspec.Struct, frozen=True, tag="g_unregister", array_like=True):
    ref: int
    name: str
    pid: Pid


class GlobalWhereisReq(msgspec.Struct, frozen=True, tag="g_whereis", array_like=True):
    ref: int
    name: str


GLOBAL_REQUESTS = (GlobalRegisterReq, GlobalUnregisterReq, GlobalWhereisReq)

HubRequest = RegisterReq | UnregisterReq | WhereisReq | MonitorReq | DemonitorReq | LinkReq \
    | UnlinkReq | ExitOfReq | DeadLetterNote | EmitReq | DirectCountsNote \
    | GlobalRegisterReq | GlobalUnregisterReq | GlobalWhereisReq
