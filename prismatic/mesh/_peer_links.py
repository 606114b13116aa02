"""The mesh's links: one DEALER per peer address, used only to send, and its failure signal.

A link is a CURVE client with the cluster's keys; sends never block: a link whose queue is
full (``LINK_QUEUE``) drops the frame and counts it (the protocol repeats what matters).
The links follow the member table (:meth:`PeerLinks.reconcile_links`): a link to every
member not ``left`` and to every seed.

The link's connection closing is the fast failure signal: the peer's kernel closed it. The
loop hears it directly, from its copy of the connection (:mod:`._hangups`), or from the
link's socket monitor (``DISCONNECTED``), whichever comes first; it becomes
:class:`~._events.LinkDown`, and at once the loop *knocks* (:mod:`._knock`): a plain TCP
connect to the peer's address, which finds out whether anything still listens there
(refused, or reset when the dying process's listener closes with the knock still
unaccepted): :class:`~._events.LinkRefused`. The link's own next failed reconnect
(``CLOSED`` after a loss, on libzmq's thread) says the same if the knock could not.
Reconnects back off to 0.1 s.

:class:`PeerLinks` is a base of :class:`~._loop.MeshLoop`: it works on the loop's state
(declared in its body).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import zmq

from .._throttle import ThrottledWarning
from ..transports._mesh_frames import MemberState, encode_mesh_frame
from ._auth import parse_event
from ._events import LinkDown, LinkRefused, MeshState
from ._hangups import HangupWatch
from ._knock import Knock, KnockResult

if TYPE_CHECKING:
    from ._secret import ClusterKeys

__all__ = ["PeerLink", "PeerLinks", "CLOSE_LINGER_MS"]

log = logging.getLogger(__name__)

LINK_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED \
    | zmq.EVENT_HANDSHAKE_SUCCEEDED \
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL \
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
# Frames waiting for a peer; beyond this they are dropped (and counted). Membership repeats
# what matters; a dropped distribution frame fails its call or becomes a dead letter.
LINK_QUEUE = 4096
CLOSE_LINGER_MS = 300  # a leaving node's last frames get this long to go out
KNOCK_TIMEOUT_S = 1.0  # an unanswered knock after a lost link: give up (the probes decide)


class PeerLink:
    """The DEALER that sends to one peer address, and its socket monitor."""

    __slots__ = ("addr", "host", "port", "sock", "monitor", "monitor_fd", "closed", "lost",
                 "confirmed", "hung_up", "knock")

    def __init__(self, addr: str, sock: zmq.Socket[bytes], monitor: zmq.Socket[bytes]) -> None:
        self.addr = addr
        host, _, port = addr[6:].rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.sock = sock
        self.monitor = monitor
        self.monitor_fd = int(monitor.getsockopt(zmq.FD))
        self.closed = False
        # Its connection closed since the last handshake: a CLOSED is a refused reconnect.
        self.lost = False
        self.confirmed = False  # and a refusal confirmed that loss (counted once per loss)
        self.hung_up = False  # that close was heard from our copy: the monitor's is not news
        self.knock: Knock | None = None  # the knock under way after the loss


class PeerLinks:
    """Sending to peers and watching their links: a base of :class:`~._loop.MeshLoop`."""

    if TYPE_CHECKING:  # the mesh loop's, set by MeshLoop.__init__ and MeshLoop.start
        loop: asyncio.AbstractEventLoop
        sync_ctx: zmq.Context[zmq.Socket[bytes]]
        keys: ClusterKeys
        state: MeshState | None
        links: dict[str, PeerLink]
        link_serial: int
        hangups: HangupWatch[str]  # the links' connections, by address
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
        # A lost link's reconnects back off from 10 ms: the knock confirms a death sooner, and
        # each failed reconnect wakes libzmq's thread and this loop (1 ms: five in the first
        # 30 ms after a death, at every member, when CPU is scarcest).
        sock.reconnect_ivl = 10
        sock.reconnect_ivl_max = 100  # a seed that comes up late is reached within 0.1 s
        sock.curve_serverkey = self.keys.public
        sock.curve_publickey = self.keys.public
        sock.curve_secretkey = self.keys.secret
        self.link_serial += 1
        monitor_addr = f"inproc://mesh-link-{self.link_serial}"
        sock.monitor(monitor_addr, LINK_EVENTS)
        # A plain socket read by a reader callback (not an asyncio socket and a task: a few
        # times cheaper per event, and a peer's death brings several at every member).
        monitor = self.sync_ctx.socket(zmq.PAIR)
        monitor.linger = 0
        monitor.connect(monitor_addr)
        sock.connect(addr)
        link = PeerLink(addr, sock, monitor)
        self.loop.add_reader(link.monitor_fd, self.on_link_events, link)
        # The descriptor signals only once a read found the pipe empty: one read arms it
        # (soon, not now: a send that opens a link may be in the middle of a decision).
        self.loop.call_soon(self.on_link_events, link)
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
            self.close_link(self.links.pop(addr))

    def close_link(self, link: PeerLink) -> None:
        # In this order: the monitor's reader goes before its socket closes, or the loop
        # keeps polling a descriptor libzmq then reuses, and stops hearing the sockets that
        # get it (found the hard way: a node went deaf).
        link.closed = True
        self.hangups.unwatch(link.addr)
        if link.knock is not None:
            link.knock.cancel()
            link.knock = None
        self.loop.remove_reader(link.monitor_fd)
        link.sock.disable_monitor()
        link.monitor.close(0)
        link.sock.close(CLOSE_LINGER_MS)  # a Leave still queued goes out

    # ---- watching a link ----------------------------------------------------------------------

    def on_link_events(self, link: PeerLink) -> None:
        """The reader of a link's monitor: its descriptor signals (edge-triggered) that
        events may be waiting, so every waiting one is read."""
        while not link.closed:  # a handler may close the link (a member left)
            try:
                frames = link.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self.on_link_event(link, *parse_event(frames))
            except Exception:  # noqa: BLE001 - one event must never stop a link's watch
                self.counts["errors"] += 1
                log.exception("mesh: handling %s's link event failed (%d so far)", link.addr,
                              self.counts["errors"])

    def on_link_event(self, link: PeerLink, event: int, value: int) -> None:
        if event == zmq.EVENT_CONNECTED:
            if self.links.get(link.addr) is link:
                self.hangups.watch(link.addr, value, link.port)
        elif event == zmq.EVENT_DISCONNECTED:
            self.hangups.unwatch(link.addr)
            if link.hung_up:
                link.hung_up = False  # heard first from our copy: handled then
            else:
                self.link_lost(link)
        elif event == zmq.EVENT_CLOSED and link.lost:
            self.refused(link, "reconnect")
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            link.lost = link.confirmed = False
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                       zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            self.counts["handshake_failures"] += 1
            self.link_warning.warn("mesh: %s refused our handshake: it holds another "
                                   "cluster secret, or is not a Prismatic node", link.addr)

    def on_hangups(self) -> None:
        """The loop's reader of :attr:`hangups`: links whose connection the peer closed."""
        for addr in self.hangups.hung_up():
            link = self.links.get(addr)
            if link is not None:
                link.hung_up = True
                try:
                    self.link_lost(link)
                except Exception:  # noqa: BLE001 - the other links' hang-ups still count
                    self.counts["errors"] += 1
                    log.exception("mesh: handling %s's hang-up failed (%d so far)", addr,
                                  self.counts["errors"])

    def link_lost(self, link: PeerLink) -> None:
        """A connection of ``link`` closed (its first since a handshake, or a reconnect's
        that reached a listener about to close): the member is checked, and we knock
        unless that loss was confirmed already."""
        link.lost = True
        if link.confirmed:
            return
        self.feed(LinkDown(time.monotonic(), link.addr))
        if link.knock is None and self.links.get(link.addr) is link:
            link.knock = Knock(self.loop, link.host, link.port, KNOCK_TIMEOUT_S,
                               lambda result: self.knocked(link, result))
            link.knock.start()

    def knocked(self, link: PeerLink, result: KnockResult) -> None:
        link.knock = None
        if result is KnockResult.REFUSED:
            self.refused(link, "knock")

    def refused(self, link: PeerLink, by: str) -> None:
        """Nothing listens at a lost link's address: the first to find out (our knock, or
        the link's own reconnect) confirms the death, counted by which it was."""
        if link.lost and not link.confirmed and self.links.get(link.addr) is link:
            link.confirmed = True
            self.links_refused[by] += 1
            self.feed(LinkRefused(time.monotonic(), link.addr))
