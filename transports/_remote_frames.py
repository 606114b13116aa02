"""Wire frames of distribution that do not ride the membership protocol: between a process
and its node's relay, and on a process's direct link to another node.

A process keeps one ``AF_UNIX`` stream connection to ``\\0prismatic/<node>/relay`` (same
framing as the messaging plane, :mod:`._framing`). It asks there where another node takes
direct links (``locate``), and hears there when a node it located is lost (``node_lost``).
A destination on a node that cannot be located (unreachable) is still forwarded to the
relay (``forward``), which fails it the way it always has.

=============  ===================  =======================================================
tag            direction            meaning
=============  ===================  =======================================================
``forward``    process -> relay     deliver ``frame`` (a call, cast or send) to ``to`` on
                                    ``node``: a Pid, or a name registered there
``locate``     process -> relay     where does ``node`` take direct links?
``located``    relay -> process     ``node``'s mesh address and the cluster's CURVE keys,
                                    or no address: ``node`` is not a reachable member
``node_lost``  relay -> process     ``node`` (located before) was declared dead or left:
                                    calls in flight to it fail with ``NoConnection()``
``reply``      relay -> process     the answer to call ``ref`` (:class:`CallReply`)
``refused``    relay -> process     call ``ref`` not taken: ``noproc`` or ``not_registered``
``failed``     relay -> process     call ``ref`` failed: the callee exited with ``reason``
                                    (``noconnection``: its node became unreachable)
``exited``     node -> process      on a direct link: the process that answered the
                                    ``d_hello`` naming ``token`` exited with ``reason``
=============  ===================  =======================================================

A *direct link* is a ZeroMQ DEALER of the process, a CURVE client with the cluster's keys,
connected to the other node's mesh ROUTER (so it is authenticated as every node-to-node link
is). Its messages are batches: the prefix ``b"PD"`` + one byte of wire version, then a
msgpack array. Process -> node: ``[Deliver, ...]``, in send order; node -> process:
``[reply | refused | failed | exited, ...]``. A batch that does not decode is dropped, counted and
logged (:func:`decode_deliveries`, :func:`decode_answers` return None and say why).

A *direct route* (:mod:`prismatic._direct_listener`) carries the same batches between a
process and one process of another node: a DEALER of the caller whose routing id is the
``token`` of its ``d_hello``, to the callee's own CurveZMQ ROUTER.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._address import Pid
from .._exit import ExitReason
from ._messages import (
    CallFrame, CallRefused, CallReply, CastFrame, DirectFence, DirectHello, InfoFrame,
)

__all__ = ["Forward", "Locate", "Located", "NodeLost", "CallFailed", "Exited", "Deliver",
           "RelayRequest", "RelayAnswer", "relay_address", "DIRECT_PREFIX", "encode_deliveries",
           "decode_deliveries", "encode_answers", "decode_answers", "MAX_DIRECT_BATCH"]


class Forward(msgspec.Struct, frozen=True, tag="forward", array_like=True):
    node: str
    to: Pid | str
    frame: CallFrame | CastFrame | InfoFrame


class Locate(msgspec.Struct, frozen=True, tag="locate", array_like=True):
    node: str


class Located(msgspec.Struct, frozen=True, tag="located", array_like=True):
    node: str
    addr: str | None
    public: bytes = b""
    secret: bytes = b""

    def __repr__(self) -> str:  # the cluster's keys never reach a log line
        return f"Located({self.node!r}, {self.addr!r})"


class NodeLost(msgspec.Struct, frozen=True, tag="node_lost", array_like=True):
    node: str


class CallFailed(msgspec.Struct, frozen=True, tag="failed", array_like=True):
    ref: int
    reason: ExitReason


class Exited(msgspec.Struct, frozen=True, tag="exited", array_like=True):
    """The process whose listener ``token`` was routed to exited with ``reason`` (from the
    node that saw it exit: its calls in flight on that route fail with it)."""

    token: bytes
    reason: ExitReason


class Deliver(msgspec.Struct, frozen=True, array_like=True):
    """One message on a direct link: ``frame`` for ``to`` (a Pid or a registered name)."""

    to: Pid | str
    frame: CallFrame | CastFrame | InfoFrame | DirectHello | DirectFence


RelayRequest = Forward | Locate
RelayAnswer = CallReply | CallRefused | CallFailed | Located | NodeLost
DirectAnswer = CallReply | CallRefused | CallFailed | Exited

DIRECT_PREFIX = b"PD\x01"
MAX_DIRECT_BATCH = 8 * 1024 * 1024  # the mesh ROUTER's maxmsgsize
_encoder = msgspec.msgpack.Encoder()
_deliveries = msgspec.msgpack.Decoder(list[Deliver])
_answers = msgspec.msgpack.Decoder(list[DirectAnswer])


def relay_address(node: str) -> bytes:
    """The node relay's abstract ``AF_UNIX`` address (only a clustered node listens)."""
    return f"\0prismatic/{node}/relay".encode()


def encode_deliveries(batch: list[Deliver]) -> bytes:
    return DIRECT_PREFIX + _encoder.encode(batch)


def encode_answers(batch: list[CallReply | CallRefused | CallFailed | Exited]) -> bytes:
    return DIRECT_PREFIX + _encoder.encode(batch)


def _decode(decoder: msgspec.msgpack.Decoder[Any],
            data: bytes | memoryview) -> tuple[Any, str]:
    if bytes(data[:3]) != DIRECT_PREFIX:
        return None, "foreign or unknown-version direct batch"
    try:
        return decoder.decode(data[3:]), ""
    except (ValueError, RecursionError) as exc:  # DecodeError, bad UTF-8, bottomless nesting
        return None, f"undecodable direct batch: {exc}"


def decode_deliveries(data: bytes | memoryview) -> tuple[list[Deliver] | None, str]:
    return _decode(_deliveries, data)


def decode_answers(data: bytes | memoryview) -> tuple[list[DirectAnswer] | None, str]:
    return _decode(_answers, data)
