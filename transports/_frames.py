"""Wire frames of the supervision plane (supervisor <-> child channel).

Every frame is a msgspec Struct in one tagged union, msgpack-encoded, behind a one-byte wire
version (see :mod:`._framing`). The table:

=============  ==================  ===========================================================
tag            direction           meaning
=============  ==================  ===========================================================
``become``     parent -> spare     a pre-forked spare process becomes child ``key``
``ready``      child -> parent     ``init`` returned (``info``: its value), or a supervisor
                                   started all its children
``ignored``    child -> parent     ``init`` declined to start (OTP's ``ignore``)
``exiting``    child -> parent     the exit reason, sent just before the process exits
``request``    parent -> child     an API operation for the supervisor at ``path``
``reply``      child -> parent     the answer to ``request`` ``ref``
``lifecycle``  child -> parent     a lifecycle event of the supervisor at ``path`` (forwarded
                                   up to the node unchanged)
``trouble``    child -> parent     the supervisor at ``path`` carried on degraded (``what``:
                                   a :class:`~prismatic.supervisors._trouble.Trouble` value;
                                   it logged why): forwarded up, counted by the node
=============  ==================  ===========================================================
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._exit import ExitReason
from ._framing import WIRE_VERSION

__all__ = [
    "WIRE_VERSION", "Become", "BecomeAt", "ReadyFrame", "IgnoredFrame", "ExitingFrame",
    "RequestFrame", "ReplyFrame", "LifecycleFrame", "TroubleFrame", "Frame",
]



class Become(msgspec.Struct, frozen=True, tag="become"):
    key: str
    spec_id: str
    args: tuple[Any, ...] = ()


class BecomeAt(msgspec.Struct, frozen=True, tag="become_at"):
    """``Become`` for the node's shared spare (``supervisors/_lender.py``), which serves any
    supervisor: the child ``key`` of the supervisor at ``path``, started from the spec
    ``spec_id`` that the node's tree has there."""

    path: tuple[str, ...]
    key: str
    spec_id: str
    args: tuple[Any, ...] = ()


class ReadyFrame(msgspec.Struct, frozen=True, tag="ready"):
    pid: int
    mono: float  # CLOCK_MONOTONIC when init returned (system-wide on Linux)
    info: Any = None  # what a worker's init returned: OTP's {ok, Pid, Info}


class IgnoredFrame(msgspec.Struct, frozen=True, tag="ignored"):
    pass


class ExitingFrame(msgspec.Struct, frozen=True, tag="exiting"):
    reason: ExitReason


class RequestFrame(msgspec.Struct, frozen=True, tag="request"):
    ref: int
    path: tuple[str, ...]
    op: msgspec.Raw  # decoded by the target supervisor, so a bad op still gets a reply


class ReplyFrame(msgspec.Struct, frozen=True, tag="reply"):
    ref: int
    result: msgspec.Raw  # Ok | Err, passed up the tree without re-encoding


class LifecycleFrame(msgspec.Struct, frozen=True, tag="lifecycle"):
    """``path`` names the supervisor, ``key`` its child; ``mono``/``wall`` when it happened."""

    path: tuple[str, ...]
    kind: str
    key: str
    pid: int | None
    reason: ExitReason | None
    child_type: str
    mono: float
    wall: float


class TroubleFrame(msgspec.Struct, frozen=True, tag="trouble"):
    """The supervisor at ``path`` met ``what`` and carried on degraded (it logged the detail);
    the node counts it (``prismatic_supervisor_troubles_total``)."""

    path: tuple[str, ...]
    what: str


Frame = Become | BecomeAt | ReadyFrame | IgnoredFrame | ExitingFrame | RequestFrame | ReplyFrame \
    | LifecycleFrame | TroubleFrame
