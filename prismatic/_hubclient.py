"""A process's blocking connection to its node's hub (see :mod:`._hub`).

Used from worker processes and from external clients alike: one request at a time, answered
by ``ref``; a reply to an earlier request that timed out is dropped. Opened lazily, so a
process that never registers, monitors or links never connects.

A client's monitors and links (:class:`~prismatic.NodeConnection`) fire on this connection:
``Down``/``Exit`` frames the hub sends between replies are kept, in order, in ``notices``
(:meth:`HubClient.receive_notice`). Each lost connection counts in ``losses``: the hub
dropped what it held for it.

The hub's address is abstract, so any local user could bind it: the client trusts the hub
only if ``SO_PEERCRED`` says it runs under the client's own uid, and else says who holds it.
"""

from __future__ import annotations

import collections
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
from ._notices import Down, Exit
from ._topics import validate_topic
from .transports._framing import FrameBuffer, encode_frame
from .transports._messages import EmitReq, HubReply

__all__ = ["HubClient", "EMIT_TIMEOUT_S"]

log = logging.getLogger(__name__)
EMIT_TIMEOUT_S = 30.0  # a synced commit takes ~1 ms; this bounds a disk that stopped answering

_decoder = msgspec.msgpack.Decoder(HubReply | Down | Exit)


class HubClient:
    def __init__(self, node: str, timeout: float = 10.0) -> None:
        self.node = node
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.frames = FrameBuffer(_decoder, f"hub of {node}")
        self.refs = itertools.count(1)
        self.lost_notes = 0
        self.notices: collections.deque[Down | Exit] = collections.deque()
        self.losses = 0  # connections that broke (not closed by us)

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
                found = self._take(self.frames.feed(data), ref)
                if found is not None:
                    return found
        except TimeoutError:
            raise NodeError(f"the hub of node {self.node!r} did not answer within "
                            f"{wait:.1f}s") from None
        except OSError as exc:
            self.lost()
            raise NodeError(f"lost the hub of node {self.node!r}: {exc}") from None

    def _take(self, frames: list[Any], ref: int) -> HubReply | None:
        """Keep the notices among ``frames``; the reply ``ref`` if it is there (replies to
        requests that timed out are dropped)."""
        found = None
        for frame in frames:
            if isinstance(frame, (Down, Exit)):
                self.notices.append(frame)
            elif frame.ref == ref:
                found = frame
        return found

    def receive_notice(self, timeout: float) -> Down | Exit | None:
        """The next notice of a client's monitor or link, None if none came in ``timeout``
        s (or nothing is connected). NodeError if the connection is lost meanwhile."""
        if self.notices:
            return self.notices.popleft()
        sock = self.sock
        if sock is None:
            return None
        deadline = time.monotonic() + timeout
        try:
            while not self.notices:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                sock.settimeout(left)
                data = sock.recv(1 << 16)
                if not data:
                    raise OSError("connection closed (the node stopped)")
                self._take(self.frames.feed(data), 0)
        except TimeoutError:
            return None
        except OSError as exc:
            self.lost()
            raise NodeError(f"lost the hub of node {self.node!r}: {exc}") from None
        return self.notices.popleft()

    def lost(self) -> None:
        """The connection broke: what the hub held for it (a client's monitors) is gone."""
        self.close()
        self.losses += 1

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
            self.lost()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            self.frames = FrameBuffer(_decoder, f"hub of {self.node}")
