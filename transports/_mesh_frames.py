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
"""

from __future__ import annotations

import enum

import msgspec

from ._global_frames import GlobalFrame

__all__ = [
    "MESH_WIRE_VERSION", "MAX_PIGGYBACK", "MemberState", "Update", "Ping", "Ack", "PingReq",
    "IndirectAck", "Nack", "Gossip", "SyncReq", "Sync", "Join", "JoinReply", "JoinNack",
    "Leave", "MeshFrame", "encode_mesh_frame", "decode_mesh_frame",
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


class Ping(msgspec.Struct, frozen=True, tag="ping"):
    src: str
    addr: str
    inc: int
    seq: int
    target: str  # the name the prober thinks it is talking to
    updates: tuple[Update, ...] = ()


class Ack(msgspec.Struct, frozen=True, tag="ack"):
    src: str
    addr: str
    inc: int
    seq: int
    updates: tuple[Update, ...] = ()


class PingReq(msgspec.Struct, frozen=True, tag="ping_req"):
    src: str
    addr: str
    inc: int
    seq: int
    target: str
    target_addr: str
    updates: tuple[Update, ...] = ()


class IndirectAck(msgspec.Struct, frozen=True, tag="ind_ack"):
    src: str
    addr: str
    inc: int
    seq: int
    target: str
    updates: tuple[Update, ...] = ()


class Nack(msgspec.Struct, frozen=True, tag="nack"):
    src: str
    addr: str
    inc: int
    seq: int
    target: str
    updates: tuple[Update, ...] = ()


class Gossip(msgspec.Struct, frozen=True, tag="gossip"):
    src: str
    addr: str
    inc: int
    updates: tuple[Update, ...] = ()


class SyncReq(msgspec.Struct, frozen=True, tag="sync_req"):
    src: str
    addr: str
    inc: int
    members: tuple[Update, ...] = ()


class Sync(msgspec.Struct, frozen=True, tag="sync"):
    src: str
    addr: str
    inc: int
    members: tuple[Update, ...] = ()


class Join(msgspec.Struct, frozen=True, tag="join"):
    src: str
    addr: str
    inc: int


class JoinReply(msgspec.Struct, frozen=True, tag="join_reply"):
    src: str
    addr: str
    inc: int
    members: tuple[Update, ...] = ()


class JoinNack(msgspec.Struct, frozen=True, tag="join_nack"):
    src: str
    addr: str
    inc: int
    reason: str = ""


class Leave(msgspec.Struct, frozen=True, tag="leave"):
    src: str
    addr: str
    inc: int


MeshFrame = Ping | Ack | PingReq | IndirectAck | Nack | Gossip | SyncReq | Sync | Join \
    | JoinReply | JoinNack | Leave \
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
