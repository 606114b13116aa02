"""The mesh's links: one DEALER per peer address, used only to send, and its failure signal.

A link is a CURVE client with the cluster's keys; sends never block: a link whose queue is
full (``LINK_QUEUE``) drops the frame and counts it (the protocol repeats what matters).
The links follow the member table (:meth:`PeerLinks.reconcile_links`): a link to every
member not ``left`` and to every seed.

The link's socket monitor is the fast failure signal: ``DISCONNECTED`` (the peer's kernel
closed the connection) becomes :class:`~._events.LinkDown`, and at once the loop *knocks*:
a plain non-blocking TCP connect to the peer's address, refused within the call on this
host (a round trip on another) when nothing listens there any more:
:class:`~._events.LinkRefused`. The link's own next failed reconnect (``CLOSED``, 1-2 ms
later on libzmq's thread) says the same if the knock could not. Reconnects back off to
0.1 s.

:class:`PeerLinks` is a base of :class:`~._loop.MeshLoop`: it works on the loop's state
(declared in its body).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio

from .._throttle import ThrottledWarning
from ..transports._mesh_frames import MemberState, encode_mesh_frame
from ._auth import parse_event
from ._events import LinkDown, LinkRefused, MeshState

if TYPE_CHECKING:
    from ._secret import ClusterKeys

__all__ = ["PeerLink", "PeerLinks", "CLOSE_LINGER_MS"]

LINK_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED | zmq.EVENT_HANDSHAKE_SUCCEEDED \
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL \
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
# Frames waiting for a peer; beyond this they are dropped (and counted). Membership repeats
# what matters; a dropped distribution frame fails its call or becomes a dead letter.
LINK_QUEUE = 4096
CLOSE_LINGER_MS = 300  # a leaving node's last frames get this long to go out
KNOCK_TIMEOUT_S = 1.0  # an unanswered connect after a lost link: give up (the probes decide)


class PeerLink:
    """The DEALER that sends to one peer address, and its socket monitor."""

    __slots__ = ("addr", "sock", "monitor", "task", "lost")

    def __init__(self, addr: str, sock: zmq.Socket, monitor: zmq.asyncio.Socket) -> None:
        self.addr = addr
        self.sock = sock
        self.monitor = monitor
        self.task: asyncio.Task[None] | None = None
        self.lost = False  # saw DISCONNECTED; the next CLOSED is a refused reconnect


class PeerLinks:
    """Sending to peers and watching their links: a base of :class:`~._loop.MeshLoop`."""

    if TYPE_CHECKING:  # the mesh loop's, set by MeshLoop.__init__ and MeshLoop.start
        loop: asyncio.AbstractEventLoop
        ctx: zmq.asyncio.Context
        sync_ctx: zmq.Context[zmq.Socket[bytes]]
        keys: ClusterKeys
        state: MeshState | None
        links: dict[str, PeerLink]
        link_serial: int
        closing: set[asyncio.Task[None]]
        counts: Counter[str]
        links_refused: Counter[str]
        sent_bytes: Counter[str]
        link_warning: ThrottledWarning

        def feed(self, event: Any) -> None: ...

    # ---- sending -----------------------------------------------------------------------------

    def send(self, addr: str, frame: Any) -> bool:
        link = self.links.get(addr) or self.open_link(addr)
        data = encode_mesh_frame(frame)
        try:
            link.sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self.counts["frames_dropped"] += 1  # queue full: the peer is gone or far behind
            return False
        except zmq.ZMQError as exc:
            self.counts["send_errors"] += 1
            self.link_warning.warn("mesh: send to %s failed: %s", addr, exc)
            return False
        self.sent_bytes[addr] += len(data)
        self.counts["frames_sent"] += 1
        return True

    def open_link(self, addr: str) -> PeerLink:
        sock = self.sync_ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.sndhwm = LINK_QUEUE
        sock.reconnect_ivl = 1  # the refused reconnect after a loss confirms a death: soon
        sock.reconnect_ivl_max = 100  # a seed that comes up late is reached within 0.1 s
        sock.curve_serverkey = self.keys.public
        sock.curve_publickey = self.keys.public
        sock.curve_secretkey = self.keys.secret
        self.link_serial += 1
        monitor_addr = f"inproc://mesh-link-{self.link_serial}"
        sock.monitor(monitor_addr, LINK_EVENTS)
        monitor = self.ctx.socket(zmq.PAIR)
        monitor.connect(monitor_addr)
        sock.connect(addr)
        link = PeerLink(addr, sock, monitor)
        link.task = self.loop.create_task(self.watch_link(link))
        self.links[addr] = link
        return link

    def reconcile_links(self) -> None:
        """A link to every member not ``left`` (dead ones too: the periodic sync asks them,
        which is how a healed partition merges); a left or forgotten member's link goes."""
        assert self.state is not None
        keep = {m.addr for m in self.state.members.values() if m.state is not MemberState.LEFT}
        keep.update(self.state.seeds)
        for addr in keep - self.links.keys():
            self.open_link(addr)
        for addr in [a for a in self.links if a not in keep]:
            self.closing.add(self.loop.create_task(self.close_link(self.links.pop(addr))))

    async def close_link(self, link: PeerLink) -> None:
        # In this order: the monitor's reader must be gone (its task finished) before its
        # socket closes, or the loop keeps polling a descriptor libzmq then reuses, and
        # stops hearing the sockets that get it (found the hard way: a node went deaf).
        try:
            link.sock.disable_monitor()
            if link.task is not None:
                link.task.cancel()
                await asyncio.gather(link.task, return_exceptions=True)
            link.monitor.close(0)
            link.sock.close(CLOSE_LINGER_MS)
        finally:
            self.closing.discard(asyncio.current_task())  # type: ignore[arg-type]


    # ---- watching a link ----------------------------------------------------------------------

    async def watch_link(self, link: PeerLink) -> None:
        while True:
            event, _ = parse_event(await link.monitor.recv_multipart())
            if event == zmq.EVENT_DISCONNECTED:
                link.lost = True
                self.feed(LinkDown(time.monotonic(), link.addr))
                self.knock(link)
            elif event == zmq.EVENT_CLOSED and link.lost:
                self.refused(link, "reconnect")
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                link.lost = False
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                           zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                self.counts["handshake_failures"] += 1
                self.link_warning.warn("mesh: %s refused our handshake: it holds another "
                                       "cluster secret, or is not a Prismatic node", link.addr)

    def refused(self, link: PeerLink, by: str) -> None:
        """Nothing listens at a lost link's address: the first to find out (our knock, or
        the link's own reconnect) confirms the death, counted by which it was."""
        if link.lost and self.links.get(link.addr) is link:
            link.lost = False
            self.links_refused[by] += 1
            self.feed(LinkRefused(time.monotonic(), link.addr))

    def knock(self, link: PeerLink) -> None:
        """Ask the peer's kernel at once whether anything still listens there, rather than
        wait for the link's reconnect (1-2 ms later on libzmq's thread, then one more wake
        of this loop): a connect to a closed port on this host is refused within the call,
        on another host within a round trip. A connect that succeeds proves nothing (the
        dying process may not have closed its listener yet: its descriptors close in
        order) and is reset at once; a live peer whose connection to us dropped for another
        reason counts that one connection as a refused handshake."""
        host, _, port = link.addr[6:].rpartition(":")
        host = host.strip("[]")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        err = sock.connect_ex((host, int(port)))
        if err != errno.EINPROGRESS:
            sock.close()
            if err == errno.ECONNREFUSED:
                self.refused(link, "knock")
            return
        done = self.loop.call_later(KNOCK_TIMEOUT_S, self.knocked, link, sock, True)

        def writable() -> None:
            done.cancel()
            self.knocked(link, sock, False)
        self.loop.add_writer(sock.fileno(), writable)

    def knocked(self, link: PeerLink, sock: socket.socket, timed_out: bool) -> None:
        self.loop.remove_writer(sock.fileno())
        err = 0 if timed_out else sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        sock.close()
        if err == errno.ECONNREFUSED:
            self.refused(link, "knock")
