"""A process's blocking connection to its node's hub (see :mod:`._hub`).

Used from worker processes and from external clients alike: one request at a time, answered
by ``ref``; a reply to an earlier request that timed out is dropped. Opened lazily, so a
process that never registers, monitors or links never connects.

The hub's address is abstract, so any local user could bind it: the client trusts the hub
only if ``SO_PEERCRED`` says it runs under the client's own uid, and else says who holds it.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ._errors import EventLogError, NodeError
from ._nodeinfo import hub_address, peer_creds
from ._topics import validate_topic
from .transports._framing import FrameBuffer, encode_frame
from .transports._messages import EmitReq, HubReply

__all__ = ["HubClient", "EMIT_TIMEOUT_S"]

log = logging.getLogger(__name__)
EMIT_TIMEOUT_S = 30.0  # a synced commit takes ~1 ms; this bounds a disk that stopped answering

_decoder = msgspec.msgpack.Decoder(HubReply)


class HubClient:
    def __init__(self, node: str, timeout: float = 10.0) -> None:
        self.node = node
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.frames = FrameBuffer(_decoder, f"hub of {node}")
        self.refs = itertools.count(1)
        self.lost_notes = 0

    def _connect(self) -> socket.socket:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(hub_address(self.node))
            except OSError as exc:
                sock.close()
                raise NodeError(f"node {self.node!r} is not running on this host "
                                f"(its hub refused: {exc.strerror})") from None
            pid, uid = peer_creds(sock)
            if uid != os.getuid():
                sock.close()
                raise NodeError(f"the hub address of node {self.node!r} is held by uid {uid}, "
                                f"pid {pid}, another user: not the node's hub (not trusted)")
            self.sock = sock
        return self.sock

    def request(self, make: Callable[[int], Any], timeout: float | None = None) -> HubReply:
        ref = next(self.refs)
        sock = self._connect()
        wait = timeout if timeout is not None else self.timeout
        deadline = time.monotonic() + wait
        try:
            sock.settimeout(wait)
            sock.sendall(encode_frame(make(ref)))
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.0001))
                data = sock.recv(1 << 16)
                if not data:  # the node stopped, or its hub refused this connection (caps)
                    raise OSError("connection closed (the node stopped, or its hub refused "
                                  "the connection: see the node's log)")
                for reply in self.frames.feed(data):
                    if reply.ref == ref:
                        return reply
        except TimeoutError:
            raise NodeError(f"the hub of node {self.node!r} did not answer within "
                            f"{wait:.1f}s") from None
        except OSError as exc:
            self.close()
            raise NodeError(f"lost the hub of node {self.node!r}: {exc}") from None

    def emit(self, topic: str, payloads: list[Any], source: str,
             correlation_id: str | None, timeout: float = EMIT_TIMEOUT_S) -> int:
        """Append events to the node's log; the first one's seq, once synced (the ack)."""
        validate_topic(topic)
        reply = self.request(lambda ref: EmitReq(ref, topic, payloads, source, correlation_id),
                             timeout)
        if reply.error:
            raise EventLogError(f"emit to {topic!r} refused: {reply.error}: {reply.detail}")
        return reply.value

    def note(self, frame: Any) -> None:
        """A one-way notice (a dead letter); failures only cost the notice."""
        try:
            self._connect().sendall(encode_frame(frame))
        except (OSError, NodeError) as exc:
            self.lost_notes += 1
            log.warning("hub of node %r: a %s notice was lost (%d so far): %s", self.node,
                        type(frame).__struct_config__.tag, self.lost_notes, exc)
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.frames = FrameBuffer(_decoder, f"hub of {self.node}")
