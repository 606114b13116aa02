"""The caller's routes to other nodes: this node's relay and direct links to other nodes.

:class:`RemoteRoutes` is a base of :class:`~._outbox.Outbox`: the part of a process's
outgoing connections that reaches processes of other nodes. A destination on another node
is reached on this process's direct link to that node (:mod:`._direct_link`), one link per
node so that messages leave in send order. The link is made on first use: the relay
(:mod:`prismatic.mesh._remote`, a :class:`~._mailbox_peer.Peer` at this node's relay
address) is asked to ``locate`` the node and answers with its address and the cluster's
keys; pyzmq is imported then, never before (a tree's image stays without it). A node the
relay does not know reachable gets no link: what is sent to it goes to the relay
(``Forward``), which fails it. The relay also says when a node is lost (``NodeLost``): its
link then fails the calls in flight with ``NoConnection()``; a sending process reads those
notices at most every ``RELAY_POLL_S``. Answers to calls that went out on the relay come
back on it and are handed to the caller (:meth:`RemoteRoutes.on_relay_frame`).
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

import msgspec

from ._address import Global, Pid
from ._errors import MailboxFull
from ._exit import NoConnection
from ._mailbox_peer import Peer
from .transports._framing import encode_frame
from .transports._messages import CallRefused, CallReply
from .transports._remote_frames import (
    CallFailed, Deliver, Forward, Locate, Located, NodeLost, RelayAnswer, relay_address,
)

if TYPE_CHECKING:
    from ._direct_link import DirectLink

__all__ = ["RemoteRoutes", "RELAY_POLL_S"]

_relay_decoder = msgspec.msgpack.Decoder(RelayAnswer)
# A process sending on a direct link reads its relay's notices (a lost node) at most this
# often: a read per message would cost a system call each.
RELAY_POLL_S = 0.001


class RemoteRoutes:
    """The relay connection and the direct links of one process's :class:`~._outbox.Outbox`
    (which sets these attributes)."""

    node: str
    sent: int
    relay: Peer | None  # to this node's relay, for remote destinations
    links: dict[str, DirectLink]  # direct links, by node (._direct_link)
    located: dict[str, Located]  # the relay's answers to locate
    linked: bool  # this process made a direct link (it flushes them at exit)
    relay_read_at: float

    def relay_peer(self) -> Peer:
        if self.relay is None:
            self.relay = Peer(Pid(self.node, 0), relay_address(self.node), _relay_decoder)
        return self.relay

    def drop_relay(self) -> None:
        if self.relay is not None:
            self.relay.sock.close()
            self.relay = None
            # Nobody tells us of lost nodes any more (our node stopped): links end too.
            for node in list(self.links):
                self.node_lost(node)

    def on_relay_frame(self, frame: Any) -> Any:
        """A frame from the relay: the answer to a relay-path call is returned, the rest
        handled here."""
        if isinstance(frame, Located):
            self.located[frame.node] = frame
        elif isinstance(frame, NodeLost):
            self.node_lost(frame.node)
        elif isinstance(frame, (CallReply, CallRefused, CallFailed)):
            return frame
        return None

    def poll_relay(self) -> None:
        """Read what the relay told us meanwhile (a lost node), without waiting."""
        relay = self.relay
        if relay is None:
            return
        try:
            data = relay.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.drop_relay()
            return
        for frame in relay.frames.feed(data):
            answer = self.on_relay_frame(frame)
            if answer is not None and answer.ref in relay.waiting:
                relay.replies[answer.ref] = answer

    def node_lost(self, node: str) -> None:
        link = self.links.pop(node, None)
        if link is not None:
            link.fail_all(NoConnection())

    def link_to(self, node: str, timeout: float) -> DirectLink | None:
        """The direct link to ``node``; None if the relay does not know it reachable (or
        this node is in no cluster): the relay path then fails what is sent."""
        link = self.links.get(node)
        if link is not None:
            now = time.monotonic()
            if now >= self.relay_read_at:  # a lost node is seen within RELAY_POLL_S
                self.relay_read_at = now + RELAY_POLL_S
                self.poll_relay()
                link = self.links.get(node)
            if link is not None:
                return link
        try:
            relay = self.relay_peer()
        except OSError:
            return None
        self.located.pop(node, None)
        relay.set_timeouts(timeout)
        deadline = time.monotonic() + timeout
        try:
            relay.sock.sendall(encode_frame(Locate(node)))
            while node not in self.located:
                data = relay.sock.recv(1 << 16)
                if not data:
                    self.drop_relay()
                    return None
                for frame in relay.frames.feed(data):
                    answer = self.on_relay_frame(frame)
                    if answer is not None and answer.ref in relay.waiting:
                        relay.replies[answer.ref] = answer
                if time.monotonic() > deadline:
                    return None
                relay.set_timeouts(max(deadline - time.monotonic(), 0.0001), snd=False)
        except OSError:  # BlockingIOError: no answer in time (the node is stuck)
            self.drop_relay()
            return None
        located = self.located.pop(node)
        if located.addr is None:
            return None
        from ._direct_link import DirectLink  # noqa: PLC0415 - loads zmq: only when used

        link = self.links[node] = DirectLink(located)
        self.linked = True
        return link

    def forward(self, node: str, to: Pid | str, frame: Any, timeout: float,
                dest: Pid | str | Global | tuple[str, str]) -> Peer | DirectLink | None:
        """Send ``frame`` to ``to`` on ``node``: on the direct link to ``node``, or else to
        this node's relay; what it went out on, or None if this node is in no cluster (no
        relay). Raises :class:`MailboxFull` as :meth:`~._outbox.Outbox._send` does."""
        link = self.link_to(node, timeout)
        if link is not None:
            self.sent += 1
            if not link.send([Deliver(to, frame)], timeout):
                raise MailboxFull(dest, f"the link to node {node} stayed full for "
                                        f"{timeout:.3g}s")
            return link
        data = encode_frame(Forward(node, to, frame))
        for _attempt in (0, 1):
            try:
                peer = self.relay_peer()
            except OSError:
                return None
            peer.set_timeouts(timeout)
            self.sent += 1
            try:
                peer.sock.sendall(data)
                return peer
            except BlockingIOError:
                self.drop_relay()
                raise MailboxFull(dest, f"the node's relay stayed full for {timeout:.3g}s") \
                    from None
            except OSError:
                self.drop_relay()  # the node restarted: once more, on a new connection
        return None

    def close_links(self) -> None:
        """Before the process exits: what its direct links hold leaves first."""
        if self.linked:
            from ._direct_link import close_all  # noqa: PLC0415

            self.links.clear()
            close_all()
