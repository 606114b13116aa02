"""Distribution: messages, monitors and links between processes of different nodes.

Runs in the node, on its loop, beside the hub (:mod:`prismatic._hub`) and the mesh loop
(:mod:`._loop`). The path of a message to a process of another node reachable now::

    process --direct link (ZeroMQ, CURVE)--> the other node's port --AF_UNIX--> mailbox

A process locates the other node through this node's relay once, then sends on a direct
link of its own (:mod:`prismatic._direct_link`) to that node's mesh ROUTER, whose thread
(:mod:`._direct`) delivers and answers without a turn of either node's loop: one ordered
ZeroMQ stream per process and node, one connection per destination mailbox there, so per
sender -> destination order is kept end to end. What goes to a node this node does not
know reachable takes the relay path below, which fails it (``NoConnection()``, a dead
letter) as it always has::

    process --AF_UNIX--> this node's relay --mesh link--> the other node --AF_UNIX--> mailbox

A pair that keeps talking then leaves the port's hop for a *direct route* to the callee's
own listener (:mod:`prismatic._direct_listener`; the switch, with its fence that keeps the
pair's order, is asked for on the direct link): the port fills in the ``d_hello`` and, when
the callee exits, tells each caller that asked (``exited``, with the exit reason
:meth:`Distribution.fail_direct_calls` waits for), since the route's calls never pass here::

    process --route (ZeroMQ, CURVE)--> the callee's own ROUTER, read by its loop

* **The relay** listens at ``\\0prismatic/<node>/relay`` (frames of
  :mod:`prismatic.transports._remote_frames`, only from the node's uid). It answers
  ``locate`` with a reachable member's mesh address and the cluster's keys, and tells each
  process that located a node when that node is lost (``node_lost``: the process fails its
  calls in flight on that link with ``NoConnection()`` and closes the link). Each process
  keeps one connection to it; on the relay path, what it sends leaves in order, the mesh
  link to a peer is one ordered ZeroMQ stream, and the receiving node keeps one connection
  per destination mailbox.
* **Calls** (either path): the receiving node gives each call it delivers a ref of its own
  (the callers of many nodes share its connection to a mailbox) and maps the reply back.
  A callee that is not there refuses the call (``noproc``: the caller raises
  :class:`NoProcError`); one whose
  connection breaks mid-call fails it with its exit reason as the hub learns it
  (:class:`ProcessDown`). A call in flight to a node that becomes unreachable fails with
  ``NoConnection()``; an answer that arrives after that (a healed partition) is dropped.
* **Monitors and links**: each node's hub keeps the monitors and links of its own processes
  (:mod:`prismatic._links`), remote ends included, and delivers their notices itself (a
  mailbox takes ``Down``/``Exit`` only from its own node). For each remote process it
  watches it sends ``watch``; the remote node answers with one ``gone`` when that process
  exits (at once if it is not alive). A link also sends ``link_add``, so the other node
  holds it too and is told (``gone``) when our end exits. When a node is declared dead or
  leaves, every remote process of it the hub knows of is taken as exited with
  ``NoConnection()``: each monitor fires once, each link once. The links state machine
  forgets a process after its exit, so a ``gone`` arriving after a heal fires nothing more.
  A monitor or link by ``(name, node)`` first asks that node who holds the name
  (``whereis``, answered by ``name_at``); a node lost meanwhile answers ``NoConnection()``.
* **Cluster pub/sub**: each message a publisher of this node publishes is sent, batched per
  loop turn, to every other member (``events``), which publishes it on its own events
  socket only (never onward): a subscriber anywhere sees it once, in its publisher's order
  (one node's messages travel one ordered link). Nothing is kept for a member that is
  unreachable (dead; a partition) or whose link queue is full: those messages are dropped
  and counted per peer (``prismatic_cluster_events_dropped_total``), with a log line.
* **Dead letters**: a cast or send that cannot be delivered becomes a dead letter on the
  node that finds out: here when the destination's node is unreachable (``noconnection``),
  there when no such process or name exists (``noproc``, ``not_registered``).

Its parts: a process's connection to the relay is :class:`~._relay.RelayConnection`; the
node's connection to one of its mailboxes on the relay path is
:class:`~._remote_mailbox.Destination`; the rule for a mailbox whose backlog is full is
:func:`~._backlog.backlog_full` (shared with :mod:`._direct`). This module keeps
:class:`Distribution`: the relay's routing, calls and their answers, cluster pub/sub,
monitors and links across nodes, and node loss.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._address import Pid
from .._direct_counts import KNOWN
from .._exit import ExitReason, NoConnection, NoProc
from .._links import Link, ProcessExited, Unlink
from .._throttle import ThrottledWarning
from ..transports._framing import encode_frame
from ..transports._mesh_frames import (
    Answer, ControlAnswer, ControlRoute, Events, Gone, LinkAdd, LinkDel, NameAt, Route, Watch,
    WhereisName,
)
from ..transports._messages import CallFrame, CallRefused, DeadLetterNote
from ..transports._remote_frames import (
    CallFailed, Exited, Forward, Located, NodeLost, relay_address,
)
from ._backlog import backlog_full
from ._interest import Interest
from ._relay import RelayConnection
from ._remote_mailbox import Destination
from ._settings import backlog_limit

if TYPE_CHECKING:
    from .._hub import Hub
    from ._direct import DirectPort

__all__ = ["Distribution"]

log = logging.getLogger(__name__)
EVENTS_FRAME_BYTES = 1 << 20  # a batch of pub/sub messages to a peer is sent at this size
EXIT_REASON_WAIT_S = 1.0  # a callee died mid-call: how long to wait for its reported reason

MeshSend = Callable[[str, Any], bool]


class Distribution:
    """``send(node, frame)`` puts a distribution frame on the mesh link to ``node`` (False:
    not a reachable member, or the link's queue is full); ``alive(node)`` says whether
    ``node`` is a reachable member."""

    def __init__(self, name: str, hub: Hub, send: MeshSend, alive: Callable[[str], bool],
                 dead_letter: Callable[[DeadLetterNote], None],
                 peers: Callable[[], list[tuple[str, bool]]] = list) -> None:
        self.name = name
        self.hub = hub
        self.send = send
        self.alive = alive
        self.dead_letter = dead_letter
        self.peers = peers  # every other member not left: (name, reachable)
        self.publish_local: Callable[[bytes, bytes], None] = lambda topic, body: None
        self.outgoing: list[tuple[bytes, bytes]] = []
        self.outgoing_bytes = 0
        self.events_dropped = collections.Counter[str]()  # per peer
        self.events_warning = ThrottledWarning(log)
        self.conns: dict[int, RelayConnection] = {}
        self.serial = itertools.count(1)
        self.pending: dict[tuple[int, int], str] = {}  # (connection, ref) -> callee's node
        self.dests: dict[Pid, Destination] = {}
        self.interest = Interest()  # our processes -> nodes to tell of their exit
        # Names asked of other nodes (whereis): ref -> (node, what to do with the answer).
        self.asked: dict[int, tuple[str, Callable[..., None]]] = {}
        self.counters = collections.Counter[str]()
        self.warning = ThrottledWarning(log)
        self.backlog_limit = backlog_limit()  # checked when the node started
        self.server: asyncio.AbstractServer | None = None
        # The node's control plane, for control calls across nodes (ControlRoute/Answer),
        # and told of each lost node (its calls in flight fail).
        self.on_control: Callable[[Any], None] = lambda frame: None
        self.on_lost: Callable[[str], None] = lambda node: None
        # Direct links (._direct): where a member takes them, the keys they use, and the
        # node's end of them (set by the node when the mesh runs).
        self.address_of: Callable[[str], str | None] = lambda node: None
        self.keys: Any = None
        self.port: DirectPort | None = None

    def attach_port(self, port: DirectPort) -> None:
        """The node's end of direct links: it delivers here, it fails calls through us."""
        self.port = port
        port.fail_calls = self.fail_direct
        port.dead_letter = lambda to, why, frame: self.note_dead_letter(
            to, self.name, why, frame, getattr(frame, "sender", None))
        port.keys = self.keys
        port.hub = self.hub

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(relay_address(self.name))
        except OSError:
            sock.close()
            raise
        sock.listen(1024)
        self.server = await asyncio.get_running_loop().create_unix_server(
            lambda: RelayConnection(self), sock=sock)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for dest in list(self.dests.values()):
            dest.close()

    # ---- from this node's processes --------------------------------------------------------

    def locate(self, conn: RelayConnection, node: str) -> None:
        """Where ``node`` takes direct links (none: not a reachable member, or this node);
        ``conn`` is told if ``node`` is lost from now on."""
        addr = self.address_of(node) if node != self.name and self.keys is not None else None
        if addr is None:
            conn.write(Located(node, None))
            return
        conn.located.add(node)
        conn.write(Located(node, addr, self.keys.public, self.keys.secret))

    def forward(self, conn: RelayConnection, fw: Forward) -> None:
        frame = fw.frame
        if isinstance(frame, CallFrame):
            self.pending[(conn.id, frame.ref)] = fw.node
        if fw.node == self.name:  # (name, this node) sent the long way: deliver here
            self.route(self.name, conn.id, fw.to, frame)
            return
        if self.alive(fw.node) and self.send(fw.node, Route(self.name, conn.id, fw.to, frame)):
            return
        if isinstance(frame, CallFrame):
            del self.pending[(conn.id, frame.ref)]
        self.counters["unreachable"] += 1
        if isinstance(frame, CallFrame):
            conn.write(CallFailed(frame.ref, NoConnection()))
        else:
            self.note_dead_letter(fw.to, fw.node, "noconnection", frame, conn.caller)

    def note_dead_letter(self, to: Pid | str, node: str, reason: str, frame: Any,
                         sender: Pid | None) -> None:
        kind = "cast" if type(frame).__struct_config__.tag == "cast" else "info"
        dest = str(to) if isinstance(to, Pid) else f"{to}@{node}"
        self.dead_letter(DeadLetterNote(dest, reason, kind, sender, len(encode_frame(frame))))

    # ---- from other nodes --------------------------------------------------------------------

    def on_frame(self, frame: Any) -> None:
        """A distribution frame from the mesh (already decoded and validated)."""
        if isinstance(frame, Route):
            self.route(frame.src, frame.link, frame.to, frame.frame)
        elif isinstance(frame, Answer):
            self.answered(frame.link, frame.frame)
        elif isinstance(frame, Watch):
            self.watched_by(frame.src, frame.pid)
        elif isinstance(frame, LinkAdd):
            self.link_from(frame.src, frame.a, frame.b)
        elif isinstance(frame, LinkDel):
            if frame.b.node == self.name:
                self.hub.apply_links(Unlink(frame.b, frame.a))
        elif isinstance(frame, Events):
            for topic, body in frame.messages:
                self.publish_local(topic, body)
            self.counters["events_received"] += len(frame.messages)
        elif isinstance(frame, (ControlRoute, ControlAnswer)):
            self.on_control(frame)
        elif isinstance(frame, WhereisName):
            self.send(frame.src, NameAt(self.name, frame.ref,
                                        self.hub.registry.names.get(frame.name)))
        elif isinstance(frame, NameAt):
            asked = self.asked.get(frame.ref)
            if asked is not None and asked[0] == frame.src:  # a node answers for its own names
                del self.asked[frame.ref]
                asked[1](frame.pid if frame.pid is None or frame.pid.node == frame.src
                         else None)
        elif isinstance(frame, Gone):
            if frame.pid.node == frame.src:  # a node speaks only for its own processes
                self.hub.apply_links(ProcessExited(frame.pid, frame.reason))

    def route(self, src: str, link: int, to: Pid | str, frame: Any) -> None:
        pid = self.hub.registry.names.get(to) if isinstance(to, str) else to
        is_call = isinstance(frame, CallFrame)
        if pid is None or pid.node != self.name:
            reason = "not_registered" if pid is None else "noproc"
            if is_call:
                self.answer(src, link, CallRefused(frame.ref, reason))
            else:
                self.note_dead_letter(to, self.name, reason, frame, None)
            return
        pid = self.hub.complete(pid, probe=False)  # a Pid without discriminators: its holder
        dest = self.destination(pid)
        if dest is None:
            if is_call:
                self.answer(src, link, CallRefused(frame.ref, "noproc"))
            else:
                self.note_dead_letter(to, self.name, "noproc", frame, None)
            return
        dest.full = backlog_full(dest.full, len(dest.pending), self.backlog_limit)
        if dest.full:  # its process stopped reading
            self.counters["mailbox_full"] += 1
            self.warning.warn("distribution: %s takes nothing from its mailbox and its "
                              "backlog here reached %d bytes: dropped a %s from node %s (%d so "
                              "far)", to, self.backlog_limit,
                              type(frame).__struct_config__.tag, src,
                              self.counters["mailbox_full"])
            if is_call:
                self.answer(src, link, CallRefused(frame.ref, "mailbox_full"))
            else:
                self.note_dead_letter(to, self.name, "mailbox_full", frame, None)
            return
        if is_call:
            ref = next(dest.refs)
            dest.calls[ref] = (src, link, frame.ref)
            frame = CallFrame(ref, frame.msg, frame.sender,
                              to if isinstance(to, str) else frame.to_name)
        dest.write(encode_frame(frame))

    def destination(self, pid: Pid) -> Destination | None:
        dest = self.dests.get(pid)
        if dest is None or dest.closed:
            dest = Destination(self, pid)
            if dest.closed:
                return None
            self.dests[pid] = dest
        return dest

    def answer(self, src: str, link: int, frame: Any) -> None:
        if src == self.name:
            self.answered(link, frame)
        elif not self.send(src, Answer(self.name, link, frame)):
            self.counters["answers_lost"] += 1  # the caller's node is gone: its call failed

    def answered(self, link: int, frame: Any) -> None:
        if self.pending.pop((link, frame.ref), None) is None:
            return  # the call already failed (its node was lost): a late answer, dropped
        conn = self.conns.get(link)
        if conn is not None:
            conn.write(frame)

    def callee_died(self, dest: Destination) -> None:
        calls, dest.calls = dest.calls, {}
        if self.dests.get(dest.pid) is dest:
            del self.dests[dest.pid]
        if calls:
            asyncio.get_running_loop().create_task(self.fail_calls(dest.pid, calls))

    async def exit_reason(self, pid: Pid) -> ExitReason:
        """``pid``'s exit reason once the tree has reported it (as a local caller asks the
        hub), waiting EXIT_REASON_WAIT_S at most; NoProc if it never came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXIT_REASON_WAIT_S
        reason: ExitReason | None = self.hub.exits.get(self.hub.complete(pid, probe=False))
        while reason is None and loop.time() < deadline:
            await asyncio.sleep(0.01)
            reason = self.hub.exits.get(self.hub.complete(pid, probe=False))
        return reason or NoProc()

    async def fail_calls(self, pid: Pid, calls: dict[int, tuple[str, int, int]]) -> None:
        """The callee's connection broke with calls in flight: fail each with its exit
        reason."""
        reason = await self.exit_reason(pid)
        for src, link, ref in calls.values():
            self.answer(src, link, CallFailed(ref, reason))

    def fail_direct(self, pid: Pid, origins: list[tuple[bytes, int]],
                    watchers: list[tuple[bytes, bytes]] = []) -> None:  # noqa: B006
        """The direct path's callee ``pid`` died with calls in flight, or with links that
        route to its own listener watching it (from the port)."""
        asyncio.get_running_loop().create_task(self.fail_direct_calls(pid, origins, watchers))

    async def fail_direct_calls(self, pid: Pid, origins: list[tuple[bytes, int]],
                                watchers: list[tuple[bytes, bytes]] = []) -> None:  # noqa: B006
        reason = await self.exit_reason(pid)
        if self.port is not None:
            for link, ref in origins:
                self.port.post(link, CallFailed(ref, reason))
            for link, token in watchers:  # its direct routes' calls fail there
                self.port.post(link, Exited(token, reason))

    def direct_counts(self, counts: dict[str, int]) -> None:
        """A process's counts of its direct routes and listener (``direct_counts`` note,
        :mod:`prismatic._direct_counts`), added up under ``direct_<name>``."""
        for name, n in counts.items():
            if name in KNOWN and isinstance(n, int) and 0 < n < 1 << 40:
                self.counters["direct_" + name] += n
            else:
                self.counters["bad_frames"] += 1
                self.warning.warn("distribution: dropped a direct count %r", str(name)[:40])

    # ---- cluster pub/sub (called by the forwarder) -------------------------------------------

    def published(self, frames: list[Any]) -> None:
        """A message a publisher of this node published: to every other member, batched."""
        topic, body = frames[0].bytes, frames[1].bytes
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self.flush_events)
        self.outgoing.append((topic, body))
        self.outgoing_bytes += len(topic) + len(body)
        if self.outgoing_bytes >= EVENTS_FRAME_BYTES:
            self.flush_events()

    def flush_events(self) -> None:
        batch, self.outgoing, self.outgoing_bytes = tuple(self.outgoing), [], 0
        if not batch:
            return
        frame = Events(self.name, batch)
        for node, reachable in self.peers():
            if not (reachable and self.send(node, frame)):
                self.events_dropped[node] += len(batch)
                self.events_warning.warn("cluster pub/sub: %d message(s) not sent to %s "
                                         "(unreachable, or its link is full); %d so far",
                                         len(batch), node, self.events_dropped[node])

    # ---- monitors and links (called by the hub) ----------------------------------------------

    def whereis(self, node: str, name: str,
                then: Callable[[Pid | None, ExitReason | None], None]) -> None:
        """Ask ``node`` who holds ``name`` there: ``then(pid, None)`` (None: nobody), or
        ``then(None, NoConnection())`` if ``node`` is or becomes unreachable first."""
        ref = next(self.serial)
        self.asked[ref] = (node, then)
        if not (self.alive(node) and self.send(node, WhereisName(self.name, ref, name))):
            del self.asked[ref]
            then(None, NoConnection())

    def exit_of(self, pid: Pid) -> ExitReason | None:
        """None while ``pid``'s node is reachable (its own node answers ``watch``)."""
        return None if self.alive(pid.node) else NoConnection()

    def watch(self, pid: Pid) -> None:
        if not self.send(pid.node, Watch(self.name, pid)):
            self.hub.apply_links(ProcessExited(pid, NoConnection()))

    def linked(self, a: Pid, b: Pid) -> None:
        """Our ``a`` linked to remote ``b``: its node holds the link too, and hears of
        ``a``'s exit from us."""
        self.interest.add(a, b.node)
        self.send(b.node, LinkAdd(self.name, a, b))

    def unlinked(self, a: Pid, b: Pid) -> None:
        self.send(b.node, LinkDel(self.name, a, b))

    def forget(self, pid: Pid) -> None:
        """Our ``pid`` (a client, whose connection ended) is watched by nobody any more: no
        node is to hear of its exit (its links were removed with ``link_del``)."""
        self.interest.pop_exited(pid)

    def exited(self, pid: Pid, reason: ExitReason) -> None:
        """Our process ``pid`` exited: tell each node that watches or links it, once. What
        it sent to other nodes before dying goes first (OTP's signal order between a pair):
        while its relay connection still has bytes to read, the notice waits for its end."""
        # Other nodes name the process as they were given it (a Pid without discriminators
        # too): each such name of it hears of the exit under that name.
        gone = [(node, Gone(self.name, named, reason))
                for node, named in self.interest.pop_exited(pid)]
        if not gone:
            return
        for conn in self.conns.values():
            if conn.ospid == pid.ospid and pid.node == self.name:
                conn.after_close.extend(gone)
                return
        for node, frame in gone:
            self.send(node, frame)

    def watched_by(self, src: str, pid: Pid) -> None:
        if pid.node != self.name:
            return
        exited = self.hub.exit_of(pid)
        if exited is not None:
            self.send(src, Gone(self.name, pid, exited))
            return
        self.interest.add(pid, src)
        self.hub.watch(pid)

    def link_from(self, src: str, a: Pid, b: Pid) -> None:
        if b.node != self.name or a.node != src:
            return
        if self.hub.exit_of(b) is None:  # a dead b: the watch that came first answers it
            self.hub.apply_links(Link(b, a, None))
            self.interest.add(b, src)

    def node_lost(self, node: str) -> None:
        """``node`` was declared dead or left: what waits on it fails, once."""
        self.on_lost(node)
        self.interest.drop_node(node)  # it watches nothing of ours any more
        for ref in [r for r, (n, _) in self.asked.items() if n == node]:
            self.asked.pop(ref)[1](None, NoConnection())
        for located in list(self.conns.values()):
            if node in located.located:  # its process's direct link: calls on it fail there
                located.located.discard(node)
                located.write(NodeLost(node))
        for key in [k for k, n in self.pending.items() if n == node]:
            del self.pending[key]
            conn = self.conns.get(key[0])
            if conn is not None:
                conn.write(CallFailed(key[1], NoConnection()))
        links = self.hub.links
        theirs = {t for _, t in links.monitors.values() if t.node == node}
        theirs.update(p for pair in links.links for p in pair if p.node == node)
        for pid in sorted(theirs):
            self.hub.apply_links(ProcessExited(pid, NoConnection()))
        if theirs:
            log.info("distribution: node %s lost: %d of its processes taken as exited "
                     "(noconnection)", node, len(theirs))
