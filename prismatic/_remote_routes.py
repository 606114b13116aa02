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

A pair that keeps talking switches to a *direct route*: after ``SWITCH_AFTER`` messages to
one Pid of another node, the process asks that process, on the node path, for its own
listener (``d_hello``); once the answer came and the route's connection is up, it sends a
``d_fence`` on the node path and everything after on the route (the callee holds what the
route brings until the fence is out of its mailbox: order is kept across the switch; see
:mod:`._direct_listener`). When to switch, and when to give up, is the pure
:class:`~._pair_switch.Switch`. A route whose callee
exits is told so by the callee's node on the link (``exited``, with the exit reason): its
calls in flight fail with that reason, but for those whose answer the route already holds;
the pair then stays on the node path. A pair that cannot switch (the callee gives no port,
or the connection does not come up in time, or this process's link to the callee's node is
full when the hello or the fence should go) stays on the node path, logged and counted,
and asks again later, a few times (for good: a callee that offers no route, or this
process short of descriptors).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import msgspec

from ._address import Global, Pid
from ._direct_counts import counts, report
from ._errors import MailboxFull
from ._exit import NoConnection
from ._mailbox_peer import Peer
from ._throttle import ThrottledWarning
from ._pair_switch import SWITCH_AFTER, SWITCH_AFTER_PROBLEM, Hop, PairState, Switch
from .transports._framing import encode_frame
from .transports._messages import CallRefused, CallReply, DirectFence, DirectHello
from .transports._remote_frames import (
    CallFailed, Deliver, Exited, Forward, Locate, Located, NodeLost, RelayAnswer,
    relay_address,
)

if TYPE_CHECKING:
    from ._direct_link import DirectLink
    from ._hubclient import HubClient

__all__ = ["RemoteRoutes", "RELAY_POLL_S", "Pair", "SWITCH_AFTER"]

log = logging.getLogger(__name__)
_bad_setting = ThrottledWarning(log, 3600.0)
_route_warning = ThrottledWarning(log)  # routes this process could not open
_relay_decoder = msgspec.msgpack.Decoder(RelayAnswer)
# A process sending on a direct link reads its relay's notices (a lost node) at most this
# often: a read per message would cost a system call each.
RELAY_POLL_S = 0.001
EXIT_GRACE_S = 0.005  # a callee exited: answers still on their way get this long
ROUTE_SEND_STEP_S = 0.05  # a route that takes nothing: look for its callee's exit this often


class Pair(Switch):
    """This process's way to one process of another node: its :class:`Switch` and the
    route it made."""

    __slots__ = ("pid", "ref", "token", "route")

    def __init__(self, pid: Pid) -> None:
        super().__init__()
        self.pid = pid
        self.ref = 0
        self.token = b""
        self.route: DirectLink | None = None


_hello_refs = itertools.count(1 << 62)  # apart from the process's call refs


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
    pairs: dict[Pid, Pair]  # processes of other nodes this one sent to, by each spelling
    by_token: dict[bytes, Pair]  # pairs with a route, by its token
    hub: HubClient  # this process's node's hub (counts go there, ._direct_counts)

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
        for pid in [pid for pid in self.pairs if pid.node == node]:
            pair = self.pairs.pop(pid)
            self.by_token.pop(pair.token, None)
            if pair.route is not None:
                pair.route.fail_all(NoConnection())
                pair.route = None

    def callee_exited(self, exited: Exited) -> None:
        """The callee of a route exited (its node says so, on the link): the route's calls
        in flight fail with its exit reason, but for the answers the route holds or gets
        within EXIT_GRACE_S; what comes for it after goes on the node path (which refuses
        it: no process)."""
        pair = self.by_token.pop(exited.token, None)
        if pair is None:
            return
        pair.failed()
        if pair.route is not None:
            pair.route.fail_all(exited.reason, EXIT_GRACE_S)
            pair.route = None

    def read_link(self, node: str) -> None:
        """What the link to ``node`` holds now (answers kept for their calls, ``exited``
        handled), without waiting."""
        link = self.links.get(node)
        if link is not None and not link.lost:
            link.keep(link.drain())

    def pick(self, link: DirectLink, to: Pid, timeout: float) -> DirectLink:
        """Where the next message to ``to`` goes: ``link`` (the node path) or the pair's
        route, as the pair's :class:`Switch` says (its answer read, its route opened)."""
        pair = self.pairs.get(to)
        if pair is None:
            # One pair per process however its Pid is spelled (as it travels, [node, ospid],
            # or exact): two routes would lose the order between them, and its node tells
            # one route per caller of its exit. A stale exact Pid shares it too: the
            # callee's listener refuses what is not its own.
            short = Pid(to.node, to.ospid)
            pair = self.pairs.get(short)
            if pair is None:
                pair = self.pairs[short] = Pair(to)
            self.pairs[to] = pair
            if SWITCH_AFTER_PROBLEM:
                _bad_setting.warn("direct routes: %s", SWITCH_AFTER_PROBLEM)
        now = time.monotonic()
        if pair.state is PairState.ASKED:
            answer = link.replies.pop(pair.ref, None)
            if answer is None:
                link.keep(link.drain())
                answer = link.replies.pop(pair.ref, None)
            if answer is not None:
                link.waiting.discard(pair.ref)
                offered = isinstance(answer, CallReply) and isinstance(answer.value, int)
                if isinstance(answer, CallRefused) and answer.reason == "mailbox_full":
                    # Its node held all it may for the callee: a busy moment, not a "no".
                    # Given up now, as a hello not answered in time: asked again later.
                    pair.deadline = now
                elif pair.answered(offered, now):
                    self.open_route(pair, link, answer.value)
                else:
                    counts["not_offered"] += 1  # no listener there: its process says why
                    report(self.hub)
        route = pair.route
        hop = pair.hop(now, route is not None and pair.state is PairState.CONNECTING
                       and route.connected())
        if hop is Hop.NODE:
            return link
        if hop is Hop.HELLO:
            pair.ref = next(_hello_refs)
            pair.token = b"\x01" + os.urandom(15)  # routing ids may not start with 0
            link.waiting.add(pair.ref)
            if not link.send([Deliver(to, DirectHello(pair.ref, pair.token))], timeout):
                link.waiting.discard(pair.ref)
                self.not_sent(pair, "hello")
            return link
        if hop is Hop.GIVE_UP and route is None:  # its hello got no answer in time
            link.waiting.discard(pair.ref)  # a late one is dropped
            counts["connect_failures"] += 1
            report(self.hub)
            log.warning("direct route to %s: no answer to its hello in %.0fs (or its "
                        "node's backlog for it was full); it stays on the node path%s", to,
                        pair.connect_wait * 5,
                        " for now" if pair.state is PairState.NODE else " (given up)")
            return link
        assert route is not None
        if hop is Hop.FENCE:
            if link.send([Deliver(to, DirectFence(pair.token))], timeout):
                counts["switched"] += 1
                report(self.hub)
                return route
            self.not_sent(pair, "fence")  # nothing went on the route: it is dropped
        elif hop is Hop.GIVE_UP:
            counts["connect_failures"] += 1
            report(self.hub)
            log.warning("direct route to %s: no connection in %.1fs; it stays on the node "
                        "path%s", to, pair.connect_wait,
                        " for now" if pair.state is PairState.NODE else " (given up)")
        else:
            return route
        self.by_token.pop(pair.token, None)
        pair.route = None
        route.close(0)
        return link

    def not_sent(self, pair: Pair, what: str) -> None:
        """``pair``'s hello or fence did not go: this process's link to the callee's node
        stayed full. A busy moment: the pair asks again later (a try, counted, logged)."""
        pair.not_sent()
        counts["connect_failures"] += 1
        report(self.hub)
        log.warning("direct route to %s: its %s did not go (this process's link to node %s "
                    "stayed full); it stays on the node path%s", pair.pid, what, pair.pid.node,
                    " for now" if pair.state is PairState.NODE else " (given up)")

    def open_route(self, pair: Pair, link: DirectLink, port: int) -> None:
        """``pair``'s route to ``port``; none (the pair stays on the node path, logged and
        counted) if this process is short of descriptors or ZeroMQ cannot make a socket."""
        from zmq import ZMQError  # noqa: PLC0415 - zmq is loaded (the link is made)

        from ._direct_link import DirectRoute, descriptors_for_routes  # noqa: PLC0415

        in_use, most = descriptors_for_routes()
        try:
            if in_use >= most:
                raise OSError(errno.EMFILE, f"{in_use} descriptors in use, routes may take "
                                            f"up to {most}")
            pair.route = DirectRoute(link.located, port, pair.token)
        except (ZMQError, OSError) as exc:
            pair.failed()
            counts["connect_failures"] += 1
            report(self.hub)
            _route_warning.warn("direct route to %s: not opened (%s); it stays on the node "
                                "path", pair.pid, exc)
            return
        pair.route.on_exited = self.callee_exited
        self.by_token[pair.token] = pair

    def send_routed(self, pair: Pair, link: DirectLink, batch: list[Deliver],
                    timeout: float) -> DirectLink | None:
        """``batch`` on ``pair``'s route; if the route takes nothing for a while, the
        callee may be gone: its node's word (``exited``) is looked for meanwhile, and then
        the batch goes on the node path. What it went on; None if nothing took it within
        ``timeout``."""
        route = pair.route
        if pair.state is PairState.DIRECT and route is not None and route.send_now(batch):
            return route  # the usual case: taken at once
        deadline = time.monotonic() + timeout
        while True:
            route = pair.route
            if pair.state is not PairState.DIRECT or route is None:
                return link if link.send(batch, max(deadline - time.monotonic(), 0.001)) \
                    else None
            left = deadline - time.monotonic()
            if route.send(batch, min(left, ROUTE_SEND_STEP_S)):
                return route
            if left <= ROUTE_SEND_STEP_S:
                return None
            self.poll_relay()
            self.read_link(link.node)

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
        link.on_exited = self.callee_exited
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
            batch = [Deliver(to, frame)]
            if type(to) is Pid and SWITCH_AFTER > 0:
                pair = self.pairs.get(to)
                if pair is None or pair.state is not PairState.DIRECT:
                    via = self.pick(link, to, timeout)
                    pair = self.pairs.get(to)
                else:
                    via = pair.route  # type: ignore[assignment]
                if via is not link and pair is not None:
                    sent = self.send_routed(pair, link, batch, timeout)
                    if sent is None:
                        raise MailboxFull(dest, f"the route to {to} stayed full for "
                                                f"{timeout:.3g}s")
                    return sent
            if not link.send(batch, timeout):
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
