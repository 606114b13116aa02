"""Wire frames between a process and its node's relay: messages to processes of other nodes.

A process keeps one ``AF_UNIX`` stream connection to ``\\0prismatic/<node>/relay`` for every
remote destination (one connection: its messages leave in send order, and the node keeps
that order on the mesh link and into the destination's mailbox). Same framing as the
messaging plane (:mod:`._framing`).

=============  ===================  =======================================================
tag            direction            meaning
=============  ===================  =======================================================
``forward``    process -> relay     deliver ``frame`` (a call, cast or send) to ``to`` on
                                    ``node``: a Pid, or a name registered there
``reply``      relay -> process     the answer to call ``ref`` (:class:`CallReply`)
``refused``    relay -> process     call ``ref`` not taken: ``noproc`` or ``not_registered``
``failed``     relay -> process     call ``ref`` failed: the callee exited with ``reason``
                                    (``noconnection``: its node became unreachable)
=============  ===================  =======================================================
"""

from __future__ import annotations

import msgspec

from .._address import Pid
from .._exit import ExitReason
from ._messages import CallFrame, CallRefused, CallReply, CastFrame, InfoFrame

__all__ = ["Forward", "CallFailed", "RelayRequest", "RelayAnswer", "relay_address"]


class Forward(msgspec.Struct, frozen=True, tag="forward", array_like=True):
    node: str
    to: Pid | str
    frame: CallFrame | CastFrame | InfoFrame


class CallFailed(msgspec.Struct, frozen=True, tag="failed", array_like=True):
    ref: int
    reason: ExitReason


RelayRequest = Forward
RelayAnswer = CallReply | CallRefused | CallFailed


def relay_address(node: str) -> bytes:
    """The node relay's abstract ``AF_UNIX`` address (only a clustered node listens)."""
    return f"\0prismatic/{node}/relay".encode()
