"""The relay's end of one process's connection: this node's processes reach other nodes.

The relay (:class:`~._remote.Distribution`) listens at ``\\0prismatic/<node>/relay``; each
process of the node that addresses another node keeps one ``AF_UNIX`` stream connection to
it, a :class:`RelayConnection` here. A connection is admitted with ``SO_PEERCRED`` (only
from the node's uid; another is refused, logged throttled) and names its caller by the
kernel's pid. It carries frames of :mod:`prismatic.transports._remote_frames`: ``locate``
and ``forward`` are handed to the relay (:class:`RelayOwner`), one frame at a time, a
failing one counted and logged, never ending the connection; a malformed frame is counted
(``bad_frames``) and an unreadable stream closes the connection. When the connection ends,
the calls it had in flight are forgotten and the exit notices held for its process's end
(``after_close``: what it sent goes ahead of them) are sent.

Log lines keep the logger name ``prismatic.mesh._remote``: they are the relay's.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from .._address import Pid
from .._nodeinfo import peer_creds
from .._throttle import ThrottledWarning
from ..transports._framing import FrameBuffer, encode_frame
from ..transports._mesh_frames import Gone
from ..transports._remote_frames import Forward, Locate, RelayRequest

__all__ = ["RelayConnection", "RelayOwner"]

log = logging.getLogger("prismatic.mesh._remote")  # the relay's log: its lines name it
_request_decoder = msgspec.msgpack.Decoder(RelayRequest)


class RelayOwner(Protocol):
    """What a relay connection asks of the relay (see :class:`~._remote.Distribution`)."""

    name: str
    serial: itertools.count[int]
    warning: ThrottledWarning
    counters: collections.Counter[str]
    conns: dict[int, RelayConnection]
    pending: dict[tuple[int, int], str]  # (connection, ref) -> callee's node
    send: Callable[[str, Any], bool]

    def locate(self, conn: RelayConnection, node: str) -> None: ...

    def forward(self, conn: RelayConnection, fw: Forward) -> None: ...


class RelayConnection(asyncio.Protocol):
    def __init__(self, dist: RelayOwner) -> None:
        self.dist = dist
        self.id = next(dist.serial)
        self.frames = FrameBuffer(_request_decoder, "relay")
        self.transport: asyncio.Transport | None = None
        self.caller: Pid | None = None
        self.ospid = 0
        self.after_close: list[tuple[str, Gone]] = []  # its process's exit notices
        self.located: set[str] = set()  # nodes its process has direct links to

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        pid, uid = peer_creds(transport.get_extra_info("socket"))
        if uid != os.getuid():
            self.dist.warning.warn("relay: refused a connection from uid %d, pid %d", uid, pid)
            transport.close()
            self.transport = None
            return
        self.caller = Pid(self.dist.name, pid)
        self.ospid = pid
        self.dist.conns[self.id] = self

    def connection_lost(self, exc: Exception | None) -> None:
        self.dist.conns.pop(self.id, None)
        self.frames.release()
        for key in [k for k in self.dist.pending if k[0] == self.id]:
            del self.dist.pending[key]  # its process is gone: nobody awaits those answers
        for node, frame in self.after_close:
            self.dist.send(node, frame)
        self.after_close.clear()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        bad = self.frames.bad_frames
        for fw in self.frames.feed(data):
            try:
                if isinstance(fw, Locate):
                    self.dist.locate(self, fw.node)
                    continue
                self.dist.forward(self, fw)
            except Exception:  # noqa: BLE001 - one frame must never end the relay
                self.dist.counters["errors"] += 1
                log.exception("relay: forwarding a frame failed")
        self.dist.counters["bad_frames"] += self.frames.bad_frames - bad
        if self.frames.broken:
            self.transport.close()

    def write(self, frame: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(frame))
