"""Wire frames of the node mesh (node <-> node over TCP, CurveZMQ-encrypted).

One ZeroMQ message part per frame: the 3-byte prefix ``b"PM"`` + one byte of wire version,
then a msgpack body that is one member of the tagged union :data:`MeshFrame`. Every frame
carries its sender's name, advertised address and incarnation (``src``/``addr``/``inc``)
and up to :data:`MAX_PIGGYBACK` membership updates (SWIM's piggybacked dissemination). A
frame with a foreign prefix, an unknown version or a body that does not decode is dropped by
:func:`decode_mesh_frame` (it returns ``None`` and says why); the mesh loop counts and logs
it. Nothing here raises on bad input.

=============  =================  ============================================================
tag            direction          meaning
=============  =================  ============================================================
``ping``       prober -> target   are you alive? (``seq`` names the probe)
``ack``        target -> prober   yes: answers ``ping`` ``seq``
``ping_req``   prober -> helper   probe ``target`` for me (SWIM's indirect probe)
``ind_ack``    helper -> prober   ``target`` answered your indirect probe ``seq``
``nack``       helper -> prober   ``target`` did not answer in time (Lifeguard: the helper,
                                  at least, is alive and well; a missing nack is our fault)
``gossip``     any -> any         updates only, pushed (an announcement, a refutation)
``sync_req``   any -> any         full-state push-pull: my whole table, send me yours
``sync``       any -> any         the whole table, answering ``sync_req``
``join``       newcomer -> seed   let me in (name, address, incarnation)
``join_reply`` seed -> newcomer   welcome: the whole table
``join_nack``  seed -> newcomer   refused (a live node has that name), with the reason
``leave``      leaver -> all      I am leaving for good (this incarnation)
``g_*``        (global registry)  :mod:`._global_frames`
=============  =================  ============================================================

Distribution frames (processes of one node talking to processes of another; the mesh loop
hands them to :mod:`prismatic.mesh._remote`, not to the membership state machine). They
were added to wire version 1 without a bump: a node that predates them drops them as
undecodable, counted, and the sender's calls to it time out.

=============  =================  ============================================================
``route``      node -> node       deliver ``frame`` (call/cast/send) to ``to`` (a Pid or a
                                  registered name); ``link`` names the sending process's
                                  relay connection on ``src``, where replies go
``answer``     node -> node       reply/refusal/failure of a call, for relay connection
                                  ``link`` on the receiving node
``watch``      node -> node       tell me once when ``pid`` (yours) exits (``gone``)
``link_add``   node -> node       my process ``a`` is linked to your ``b``: an exit of ``a``
                                  reaches ``b`` (I send ``gone`` for ``a``), and vice versa
``link_del``   node -> node       that link is gone (``unlink``)
``gone``       node -> node       process ``pid`` exited with ``reason`` (answers ``watch``
                                  and ``link_add``, once per exit and node)
``whereis``    node -> node       who holds the name ``name`` on your node? (a monitor or
                                  link by ``(name, node)`` resolves it there, at once)
``name_at``    node -> node       answers ``whereis`` ``ref``: the holder's Pid, or nil
``control``    node -> node       a control call (``start_child``, ``tree``...) a client made
                                  to ``src`` with ``node=`` the receiver; ``call`` is the
                                  encoded call, answered by ``control_reply`` with ``ref``
``control_reply`` node -> node    its result (the control plane's ``Ok``/``Err``, encoded)
``events``     node -> all        pub/sub messages published on ``src`` (topic, msgpack array
                                  of payloads: the pub/sub wire's two parts), in order
=============  =================  ============================================================
"""

from __future__ import annotations

import enum

import msgspec

from ._global_frames import GlobalFrame
from .._address import Pid
from .._exit import ExitReason
from ._messages import CallFrame, CallRefused, CallReply, CastFrame, InfoFrame
from ._remote_frames import CallFailed

__all__ = [
    "MESH_WIRE_VERSION", "MAX_PIGGYBACK", "MemberState", "Update", "Ping", "Ack", "PingReq",
    "IndirectAck", "Nack", "Gossip", "SyncReq", "Sync", "Join", "JoinReply", "JoinNack",
    "Leave", "Route", "Answer", "Watch", "LinkAdd", "LinkDel", "Gone", "ControlRoute",
    "ControlAnswer", "Events", "WhereisName", "NameAt", "DIST_FRAMES", "MeshFrame",
    "encode_mesh_frame", "decode_mesh_frame",
]

MESH_WIRE_VERSION = 1
_MAGIC = b"PM"
_PREFIX = _MAGIC + bytes((MESH_WIRE_VERSION,))
MAX_PIGGYBACK = 8  # updates per frame: a frame stays well under one TCP segment
MAX_FRAME_BYTES = 4 * 1024 * 1024  # a full table of ~20k members; more is not ours


class MemberState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


class Update(msgspec.Struct, frozen=True, array_like=True):
    """What one node believes about ``name``; ``by`` is who suspects it (for ``suspect``)."""

    name: str
    addr: str
    inc: int
    state: MemberState
    by: str = ""


class _FromMember(msgspec.Struct, frozen=True):
    """What every membership frame carries: its sender's name, address and incarnation."""

    src: str
    addr: str
    inc: int


class _Probe(_FromMember, frozen=True):
    seq: int  # names the probe that a ping, ack, ping_req, ind_ack or nack belongs to


class Ping(_Probe, frozen=True, tag="ping"):
    target: str  # the name the prober thinks it is talking to
    updates: tuple[Update, ...] = ()


class Ack(_Probe, frozen=True, tag="ack"):
    updates: tuple[Update, ...] = ()


class PingReq(_Probe, frozen=True, tag="ping_req"):
    target: str
    target_addr: str
    updates: tuple[Update, ...] = ()


class IndirectAck(_Probe, frozen=True, tag="ind_ack"):
    target: str
    updates: tuple[Update, ...] = ()


class Nack(_Probe, frozen=True, tag="nack"):
    target: str
    updates: tuple[Update, ...] = ()


class Gossip(_FromMember, frozen=True, tag="gossip"):
    updates: tuple[Update, ...] = ()


class SyncReq(_FromMember, frozen=True, tag="sync_req"):
    members: tuple[Update, ...] = ()


class Sync(_FromMember, frozen=True, tag="sync"):
    members: tuple[Update, ...] = ()


class Join(_FromMember, frozen=True, tag="join"):
    pass


class JoinReply(_FromMember, frozen=True, tag="join_reply"):
    members: tuple[Update, ...] = ()


class JoinNack(_FromMember, frozen=True, tag="join_nack"):
    reason: str = ""


class Leave(_FromMember, frozen=True, tag="leave"):
    pass


class Route(msgspec.Struct, frozen=True, tag="route"):
    src: str
    link: int
    to: Pid | str
    frame: CallFrame | CastFrame | InfoFrame


class Answer(msgspec.Struct, frozen=True, tag="answer"):
    src: str
    link: int
    frame: CallReply | CallRefused | CallFailed


class Watch(msgspec.Struct, frozen=True, tag="watch"):
    src: str
    pid: Pid


class LinkAdd(msgspec.Struct, frozen=True, tag="link_add"):
    src: str
    a: Pid  # the sender's process
    b: Pid  # the receiver's


class LinkDel(msgspec.Struct, frozen=True, tag="link_del"):
    src: str
    a: Pid
    b: Pid


class Gone(msgspec.Struct, frozen=True, tag="gone"):
    src: str
    pid: Pid
    reason: ExitReason


class WhereisName(msgspec.Struct, frozen=True, tag="whereis"):
    src: str
    ref: int
    name: str


class NameAt(msgspec.Struct, frozen=True, tag="name_at"):
    src: str
    ref: int
    pid: Pid | None


class ControlRoute(msgspec.Struct, frozen=True, tag="control"):
    src: str
    ref: int
    call: msgspec.Raw


class ControlAnswer(msgspec.Struct, frozen=True, tag="control_reply"):
    src: str
    ref: int
    result: msgspec.Raw


class Events(msgspec.Struct, frozen=True, tag="events"):
    src: str
    messages: tuple[tuple[bytes, bytes], ...]


DIST_FRAMES = (Route, Answer, Watch, LinkAdd, LinkDel, Gone, ControlRoute, ControlAnswer,
               Events, WhereisName, NameAt)

MeshFrame = Ping | Ack | PingReq | IndirectAck | Nack | Gossip | SyncReq | Sync | Join \
    | JoinReply | JoinNack | Leave | Route | Answer | Watch | LinkAdd | LinkDel | Gone \
    | ControlRoute | ControlAnswer | Events | WhereisName | NameAt \
    | GlobalFrame  # the global registry's (prismatic.mesh._global)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(MeshFrame)


def encode_mesh_frame(frame: MeshFrame) -> bytes:
    return _PREFIX + _encoder.encode(frame)


def decode_mesh_frame(data: bytes) -> tuple[MeshFrame | None, str]:
    """``(frame, "")``, or ``(None, why)`` for anything that is not a frame of ours."""
    if len(data) > MAX_FRAME_BYTES:
        return None, f"oversized frame ({len(data)} bytes)"
    if data[:2] != _MAGIC:
        return None, "foreign frame (no mesh prefix)"
    if data[2:3] != _PREFIX[2:3]:
        version = data[2] if len(data) > 2 else None
        return None, f"unknown mesh wire version {version}"
    try:
        return _decoder.decode(data[3:]), ""
    except (ValueError, RecursionError) as exc:  # DecodeError, bad UTF-8, bottomless nesting
        return None, f"undecodable frame: {exc}"
