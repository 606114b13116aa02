"""What the runtime itself puts in a process's mailbox, and what a handler learns of a caller.

``Down`` is OTP's ``{'DOWN', Ref, process, Pid, Reason}`` from a monitor; ``Exit`` is
``{'EXIT', Pid, Reason}`` from a link, seen only by a process that traps exits. Both reach
``handle_info``. They travel as frames of the messaging plane unchanged.
"""

from __future__ import annotations

import msgspec

from ._address import Global, Pid
from ._exit import ExitReason

__all__ = ["Down", "Exit", "Caller", "GlobalNameConflict"]


class Down(msgspec.Struct, frozen=True, tag="down", array_like=True):
    """The monitored process ``pid`` exited with ``reason`` (``NoProc()`` if it never was);
    ``ref`` is what :meth:`Worker.monitor` returned.

    ``name``: for a monitor set up by name, what was monitored (OTP's ``{Name, Node}`` in
    its ``'DOWN'``): the name registered on ``pid.node``, or a :class:`~prismatic.Global`.
    The name was resolved when the monitor was set up; ``pid`` is the process it named then,
    ``Pid(node, 0)`` if nobody held it (the Down then comes at once, with ``NoProc()``).
    None for a monitor of a Pid."""

    ref: int
    pid: Pid
    reason: ExitReason
    name: str | Global | None = None


class Exit(msgspec.Struct, frozen=True, tag="exit", array_like=True):
    """The linked process ``pid`` exited with ``reason`` (delivered when trapping exits)."""

    pid: Pid
    reason: ExitReason


class GlobalNameConflict(msgspec.Struct, frozen=True, tag="global_conflict",
                         array_like=True):
    """This process no longer holds global name ``name``: when a partition healed, the same
    name was held on the other side, and ``winner``'s registration won (the older one; see
    docs/cluster.md, "Global names"). Delivered once, to ``handle_info``."""

    name: str
    winner: Pid


class Caller(msgspec.Struct, frozen=True):
    """Who made a call: ``pid`` is None for a caller outside the node's tree (a client)."""

    pid: Pid | None
    ref: int
