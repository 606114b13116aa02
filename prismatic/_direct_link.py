"""A process's direct link to another node: its messages to that node's processes.

Imported only by a process that addresses a process of another node (it loads pyzmq; a
tree's image stays without it). The node's relay says where the other node takes direct
links and gives the cluster's CURVE keys (``locate``, :mod:`.transports._remote_frames`);
the link is then one ZeroMQ DEALER, a CURVE client connected to that node's mesh address,
whose receiving thread (:mod:`.mesh._direct`) hands each message to its destination's
mailbox and sends the replies back on the same link. One link per node and process: what a
process sends to the processes of one node leaves, travels and is delivered in send order.

The relay stays the process's line to its own node: it says when the other node is lost
(``node_lost``: calls in flight fail with ``NoConnection()``, the link is closed and its late
replies never read; casts and sends it still held are dropped with it, as Erlang drops what
a broken distribution connection holds: they were never handed to the other node). A
process flushes its links before it exits (:func:`close_all`, within ``LINGER_MS``), so what
it sent before exiting goes out ahead of its exit's notices.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from ._throttle import ThrottledWarning

from .transports._remote_frames import (
    CallFailed, Deliver, Exited, Located, decode_answers, encode_deliveries,
)

__all__ = ["DirectLink", "DirectRoute", "close_all", "descriptors_for_routes", "LINGER_MS"]

LINGER_MS = 250  # what a process sent before exiting gets this long to leave
# Messages queued for one link (the node slow or unreachable) before a send blocks, then
# fails with MailboxFull at its timeout: as many as a mesh link queues.
SEND_HWM = 4096
_context: zmq.Context[Any] | None = None
_links: list[DirectLink] = []
log = logging.getLogger(__name__)
_bad = ThrottledWarning(log)
bad_batches = 0  # answers from nodes dropped as malformed, this process


def _ctx() -> zmq.Context[Any]:
    global _context
    if _context is None:
        _context = zmq.Context()
    return _context


def _forget_in_child() -> None:
    """A fork's child must not touch its parent's context or sockets: it starts anew."""
    global _context
    _context = None
    _links.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class DirectLink:
    """One process's DEALER to one node (or, made by :class:`DirectRoute`, to one process
    of it). Not thread-safe (one per process/client)."""

    __slots__ = ("node", "sock", "waiting", "replies", "lost", "timeout", "rcv_ms", "located",
                 "token", "on_exited")

    def __init__(self, located: Located, addr: str | None = None,
                 token: bytes | None = None) -> None:
        self.node = located.node
        self.located = located
        self.token = token
        sock = _ctx().socket(zmq.DEALER)
        sock.linger = LINGER_MS
        sock.sndhwm = SEND_HWM
        sock.rcvhwm = 0
        sock.curve_serverkey = located.public
        sock.curve_publickey = located.public
        sock.curve_secretkey = located.secret
        # A link to a node has a routing id of its own (the node's ROUTER hands it over to a
        # reconnection: what the node sends this link after a TCP reset still arrives); a
        # route's id is its token, which its listener knows the caller by.
        sock.routing_id = token if token is not None else b"L" + os.urandom(15)
        if token is not None:
            # Queue only to a connection that completed its handshake: a callee that is
            # gone refuses a send at once (EAGAIN) instead of taking it into a queue that
            # waits for a reconnect to a process that will never answer.
            sock.immediate = True
        addr = addr or located.addr
        assert addr is not None
        sock.connect(addr)
        self.sock = sock
        self.waiting: set[int] = set()  # refs of calls in flight on this link
        self.replies: dict[int, Any] = {}  # answers read while waiting for another one
        self.lost = False
        self.timeout = -1.0
        self.rcv_ms = -1
        # Told of each ``exited`` answer (a process routed to directly is gone).
        self.on_exited: Callable[[Exited], None] | None = None
        _links.append(self)

    def connected(self) -> bool:
        """Whether a send would be taken now (a route: once its handshake completed)."""
        return bool(self.sock.get(zmq.EVENTS) & zmq.POLLOUT)  # type: ignore[operator]

    def send(self, batch: list[Deliver], timeout: float) -> bool:
        """False if the link stayed full for ``timeout`` (the node is far behind or gone)."""
        if timeout != self.timeout:
            self.sock.sndtimeo = max(1, int(timeout * 1000))
            self.timeout = timeout
        try:
            self.sock.send(encode_deliveries(batch), copy=True)
        except zmq.Again:
            return False
        return True

    def send_now(self, batch: list[Deliver]) -> bool:
        """False if the link takes nothing at once (full, or a route not connected)."""
        try:
            self.sock.send(encode_deliveries(batch), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def receive(self, timeout: float) -> list[Any] | None:
        """The answers of the next batch on the link, waiting ``timeout`` at most (None:
        nothing came). A blocking receive, not a poll: polling the link and the relay
        together measured ~9 us more per round trip. A malformed batch is dropped,
        counted (``bad_batches``) and logged, throttled; an ``exited`` goes to
        ``on_exited``."""
        ms = max(1, int(timeout * 1000))
        if ms != self.rcv_ms:
            self.sock.rcvtimeo = ms
            self.rcv_ms = ms
        try:
            data = self.sock.recv()  # bytes: cheaper than a Frame and its memoryview (~1.5 us)
        except zmq.Again:
            return None
        return self.answers(data)

    def answers(self, data: bytes) -> list[Any]:
        global bad_batches
        batch, why = decode_answers(data)
        if batch is None:
            bad_batches += 1
            _bad.warn("direct link to %s: dropped a malformed batch (%d so far): %s",
                      self.node, bad_batches, why)
            return []
        for answer in batch:
            if type(answer) is Exited:  # rare: filtered out only when there is one
                for exited in [a for a in batch if type(a) is Exited]:
                    if self.on_exited is not None:
                        self.on_exited(exited)
                return [a for a in batch if type(a) is not Exited]
        return batch

    def drain(self) -> list[Any]:
        """The answers the link holds now, without waiting."""
        out: list[Any] = []
        if self.sock.closed:
            return out
        while True:
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return out
            out += self.answers(data)

    def fail_all(self, reason: Any, grace: float = 0.0) -> None:
        """The node (or, for a route, the process) is lost: every call in flight fails with
        ``reason``, but for those whose answer the link already holds (read first, waiting
        up to ``grace`` for the ones still missing); the link closes without waiting
        (nothing it still holds is delivered: the other end may be gone)."""
        self.lost = True
        if not self.sock.closed:
            self.keep(self.drain())
            end = time.monotonic() + grace
            while any(ref not in self.replies for ref in self.waiting):
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.keep(self.receive(left) or [])
        for ref in self.waiting:
            if ref not in self.replies:
                self.replies[ref] = CallFailed(ref, reason)
        self.close(0)

    def keep(self, answers: list[Any]) -> None:
        for answer in answers:
            if answer.ref in self.waiting:
                self.replies[answer.ref] = answer

    def close(self, linger: int | None = None) -> None:
        if not self.sock.closed:
            self.sock.close(linger)
        if self in _links:
            _links.remove(self)


def DirectRoute(located: Located, port: int, token: bytes) -> DirectLink:  # noqa: N802
    """A process's DEALER to one process of ``located``'s node, at that process's own
    listener (:mod:`._direct_listener`): its routing id is ``token`` (the one its
    ``d_hello`` gave), its host the node's mesh host."""
    assert located.addr is not None
    host = located.addr.rpartition(":")[0]
    return DirectLink(located, f"{host}:{port}", token)


def descriptors_for_routes(reserve: int = 256) -> tuple[int, int]:
    """This process's descriptors in use, and how many it may have in use and still open or
    offer a route: half of what its limit leaves below its reserve (the reserve as a mailbox
    takes it, :func:`~._local_limits.fd_within_reserve`; 256 by default), so that routes,
    one connection each at both ends, never take what local senders and its own work need."""
    limit = os.sysconf("SC_OPEN_MAX")
    return len(os.listdir("/proc/self/fd")), (limit - min(reserve, limit // 4)) // 2


def close_all() -> None:
    """Before the process exits: what its links hold leaves (within LINGER_MS)."""
    global _context
    for link in list(_links):
        link.close()
    if _context is not None:
        _context.term()
        _context = None
