"""The node's connection to one of its mailboxes, for messages from other nodes' processes.

On the relay path (:mod:`._remote`), what other nodes route to a process of this node is
written to its mailbox on one :class:`Destination` per process: written without blocking
the loop (buffered when full, :class:`~prismatic._mailbox_writer.MailboxWriter`), in
arrival order. A call gets a ref of this connection's own (the callers of many nodes share
it) and the reply read back here is mapped to the caller's node, link and ref and handed to
the relay (:class:`DestinationOwner`). When the connection breaks (the process exited), the
calls in flight are handed over to fail with the callee's exit reason.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from typing import Any, Protocol

import msgspec

from .._address import Pid
from .._mailbox_writer import MailboxCheck, MailboxWriter
from ..transports._framing import FrameBuffer
from ..transports._messages import CallRefused, CallReply, MailboxFrame

__all__ = ["Destination", "DestinationOwner"]

_mailbox_decoder = msgspec.msgpack.Decoder(MailboxFrame)


class DestinationOwner(Protocol):
    """What a destination asks of the relay (see :class:`~._remote.Distribution`)."""

    counters: collections.Counter[str]

    @property
    def hub(self) -> MailboxCheck: ...

    def answer(self, src: str, link: int, frame: Any) -> None: ...

    def callee_died(self, dest: Destination) -> None: ...


class Destination(MailboxWriter):
    """The node's connection to one local mailbox, for messages from other nodes: written
    without blocking the loop (buffered when full, :class:`MailboxWriter`), read for the
    replies to calls."""

    def __init__(self, dist: DestinationOwner, pid: Pid) -> None:
        self.dist = dist
        self.pid = pid
        self.refs = itertools.count(1)
        self.calls: dict[int, tuple[str, int, int]] = {}  # our ref -> (node, link, its ref)
        self.full = False  # dropping what comes for it (backlog_full)
        self.frames = FrameBuffer(_mailbox_decoder, f"mailbox of {pid}")
        super().__init__(dist.hub, pid)
        if not self.closed:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self.readable)

    def buffered(self) -> None:
        self.dist.counters["buffered"] += 1

    def readable(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        for frame in self.frames.feed(data):
            if isinstance(frame, (CallReply, CallRefused)):
                origin = self.calls.pop(frame.ref, None)
                if origin is not None:
                    src, link, ref = origin
                    self.dist.answer(src, link, msgspec.structs.replace(frame, ref=ref))

    def close(self) -> None:
        if self.closed:
            return
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        super().close()
        self.dist.callee_died(self)
