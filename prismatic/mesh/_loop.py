"""The node's mesh loop: carries out what :func:`._membership.decide` decides, nothing more.

Transport (asyncio + pyzmq, in the node's loop, on a ZeroMQ context of its own):

* one ROUTER bound on ``--listen`` (TCP, default ``127.0.0.1:0``: a new node is never
  exposed beyond its host), a CurveZMQ server with the cluster's keypair; the ZAP handler
  and the refusal count are :mod:`._auth`. Every frame a peer sends arrives here, read by
  a thread of its own (:mod:`._direct`: it also serves other nodes' processes' direct
  links) that hands the mesh's frames to the loop in arrival order; each is decoded at the
  edge (:mod:`prismatic.transports._mesh_frames`), and one that does not decode is
  dropped, counted and logged (throttled) with the peer's address;
* seeds given by name are resolved every 10 s; each A/AAAA record is a seed;
* one DEALER per peer address (a *link*), a CURVE client, used only to send, never
  blocking; its connection closing is the fast failure signal (``LinkDown``, heard from
  our copy of the connection or the socket's monitor, then a *knock* that finds nothing
  listening there any more: ``LinkRefused``): :mod:`._peer_links`.

Time: one timer, set after every decision to :func:`._membership.next_wake`; every event
carries the loop's monotonic time. Before a timer's tick, the frames already received are
handled (:meth:`MeshLoop.drain`): a timeout is never judged with its ack unread. The loop
reports member changes to the node through ``publish(topic, body)``
(``cluster.node.<name>.up|down|left``), a name conflict through ``fatal(reason)``, and its
counters to Prometheus (:meth:`MeshLoop.collector`, the series in :mod:`._mesh_metrics`).

The global registry (:mod:`._global_names`) rides on the mesh through two hooks: its frames
(``g_*``) go to ``on_global_frame`` instead of the membership machine, and ``on_members``
hears the members believed alive (name -> incarnation) whenever that set changes;
:meth:`MeshLoop.send_to` sends it a frame by member name.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from .._connection_drops import ConnectionDrops
from .._errors import NodeError
from .._throttle import ThrottledWarning
from ..transports._global_frames import GLOBAL_FRAMES
from ..transports._mesh_frames import DIST_FRAMES, MemberState, decode_mesh_frame
from ._direct import DirectPort
from ._auth import WATCHED_EVENTS, ZAP_ENDPOINT, AdmissionWatch, serve_zap
from ._events import (
    Changed, Count, Forgotten, Joined, JoinRequested, LeaveRequested, MeshState, NameConflict,
    Received, Send, Tick,
)
from ._hangups import HangupWatch
from ._listener_order import open_descriptor_floor
from ._membership import decide, initial_state, next_wake, table
from ._mesh_metrics import MeshCollector
from ._peer_links import PeerLink, PeerLinks
from ._secret import derive_keys, read_secret
from ._settings import MeshSettings, detector_config, hostport, parse_hostport

__all__ = ["MeshLoop", "MemberRow"]

log = logging.getLogger(__name__)
DNS_INTERVAL_S = 10.0  # seeds given by name are resolved again this often


class MemberRow(msgspec.Struct, frozen=True):
    """One line of ``prismatic cluster members``: ``since`` is wall-clock (Unix seconds),
    ``rtt_ms`` the last direct probe's round trip as seen from this node."""

    name: str
    address: str
    state: MemberState
    incarnation: int
    rtt_ms: float | None
    since: float
    this_node: bool = False



class MeshLoop(PeerLinks):
    def __init__(self, name: str, settings: MeshSettings,
                 publish: Callable[[str, dict[str, Any]], None],
                 fatal: Callable[[str], None], drops: ConnectionDrops) -> None:
        self.name = name
        self.settings = settings
        self.publish = publish
        self.fatal = fatal
        self.drops = drops  # the node's: watches the listener (closed by the node first)
        self.keys = derive_keys(read_secret(Path(settings.secret_file)))
        self.listen = parse_hostport(settings.listen, "--listen")
        self.seeds = tuple(parse_hostport(s, "--join") for s in settings.join)
        self.counts: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.links_refused: Counter[str] = Counter()
        self.sent_bytes: Counter[str] = Counter()
        self.received_bytes: Counter[str] = Counter()
        self.bad_frame_warning = ThrottledWarning(log)
        self.refusal_warning = ThrottledWarning(log)
        self.link_warning = ThrottledWarning(log)
        self.links: dict[str, PeerLink] = {}
        self.link_serial = 0
        self.hangups: HangupWatch[str] = HangupWatch()
        self.tasks: list[asyncio.Task[None]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.state: MeshState | None = None
        self.closed = False
        # The global registry's hooks (set by the node; see the module docstring).
        self.on_global_frame: Callable[[Any], None] | None = None
        self.on_members: Callable[[dict[str, int]], None] | None = None
        self.reported_members: dict[str, int] = {}
        self.remote: Any = None  # ._remote.Distribution: frames between processes

    # ---- start and stop ---------------------------------------------------------------------

    async def start(self) -> str:
        """Bind, start serving, ask the seeds; returns the advertised address."""
        self.loop = asyncio.get_running_loop()
        self.ctx = zmq.asyncio.Context()
        self.sync_ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.shadow(self.ctx.underlying)
        zap = self.ctx.socket(zmq.REP)
        zap.linger = 0
        zap.bind(ZAP_ENDPOINT)  # before any CURVE server exists in this context
        self.zap = zap
        # Read on a thread of its own (._direct), never by the loop: a plain socket.
        router = self.sync_ctx.socket(zmq.ROUTER)
        router.linger = 0
        router.curve_server = True
        router.curve_publickey = self.keys.public
        router.curve_secretkey = self.keys.secret
        router.zap_domain = b"prismatic-mesh"
        router.maxmsgsize = 8 * 1024 * 1024
        # A process's link names itself (a random routing id, ``_direct_link``): when its
        # TCP connection is reset and comes back, the id moves to the new connection, and the
        # answers and ``exited`` notices addressed to it reach the process again.
        router.router_handover = True
        # An answer for a link that is gone raises (EHOSTUNREACH), to be counted lost
        # (``answers_lost``), instead of being discarded by ZeroMQ without a word.
        router.router_mandatory = True
        try:
            with open_descriptor_floor():  # a killed node's listener closes first (see there)
                router.bind(self.listen)
        except zmq.ZMQError as exc:
            router.close(0)
            zap.close(0)
            self.ctx.term()
            raise NodeError(f"--listen {self.settings.listen}: cannot bind: {exc}") from None
        self.router = router
        self.inbox: collections.deque[list[list[Any]]] = collections.deque()
        self.addr = _advertised(router.get_string(zmq.LAST_ENDPOINT))
        # Its monitor is read on the node's connection-drop watcher (._connection_drops),
        # which hands every event to the admission count first.
        watch = AdmissionWatch(self.refusals, ThrottledWarning(log))
        self.drops.watch(router, "mesh", WATCHED_EVENTS, watch.on_event)
        inc = time.time_ns() // 1_000_000  # a restart always outranks its predecessor
        self.state = initial_state(self.name, self.addr, inc, time.monotonic(), self.seeds,
                                   config=detector_config(self.settings),
                                   seed=inc ^ hash(self.addr))
        self.tasks = [
            self.loop.create_task(serve_zap(zap, self.keys.public, self.refusals,
                                            self.refusal_warning)),
            self.loop.create_task(self.resolve_seeds()),
        ]
        self.loop.add_reader(self.hangups.fileno(), self.on_hangups)
        self.port = DirectPort(self.name, router, self.loop, self.post_frames)
        self.port.start()
        log.info("mesh: %s listening on %s (incarnation %d)%s", self.name, self.addr, inc,
                 f", joining via {', '.join(self.seeds)}" if self.seeds else "")
        self.feed(Tick(time.monotonic()))
        return self.addr

    def leave(self) -> None:
        """Announce our departure to every member (SIGTERM, ``cluster leave``)."""
        if self.state is not None and not self.closed \
                and self.state.me.state is not MemberState.LEFT:
            log.info("mesh: %s leaving the cluster", self.name)
            self.feed(LeaveRequested(time.monotonic()))

    def join(self, seeds: tuple[str, ...]) -> None:
        self.feed(JoinRequested(time.monotonic(),
                                tuple(parse_hostport(s, "join") for s in seeds)))

    async def resolve_seeds(self) -> None:
        """Seeds given by name: every A/AAAA record is a seed (a Kubernetes headless
        service's names), resolved again every DNS_INTERVAL_S; a new record is asked at
        once. Seeds given as addresses need none of this."""
        named: list[tuple[str, int]] = []
        for seed in self.settings.join:
            host, _, digits = parse_hostport(seed, "--join")[6:].rpartition(":")
            if not _is_ip(host.strip("[]")):
                named.append((host, int(digits)))
        known: set[str] = set()
        warn = ThrottledWarning(log, 60.0)
        while named:
            found: set[str] = set()
            for host, port in named:
                try:
                    infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                except OSError as exc:
                    self.counts["dns_failures"] += 1
                    warn.warn("mesh: cannot resolve seed %s: %s", host, exc)
                    continue
                for family, *_, sockaddr in infos:
                    ip = str(sockaddr[0])
                    found.add(f"tcp://[{ip}]:{port}" if family == socket.AF_INET6
                              else f"tcp://{ip}:{port}")
            new = found - known
            if new:
                known |= new
                log.info("mesh: seeds from DNS: %s", ", ".join(sorted(new)))
                self.feed(JoinRequested(time.monotonic(), tuple(sorted(new))))
            await asyncio.sleep(DNS_INTERVAL_S)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        for t in self.tasks:
            t.cancel()
        self.loop.remove_reader(self.hangups.fileno())
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.port.stop()  # before the ROUTER it reads closes
        for link in self.links.values():
            self.close_link(link)  # a Leave still queued goes out
        self.hangups.close()
        self.router.close(0)
        self.zap.close(0)
        await self.loop.run_in_executor(None, self.ctx.term)  # waits out the linger

    # ---- the state machine -------------------------------------------------------------------

    def feed(self, event: Any) -> None:
        if self.closed or self.state is None:
            return
        self.state, actions = decide(self.state, event)
        changed = False
        for a in actions:
            if isinstance(a, Send):
                self.send(a.addr, a.frame)
            elif isinstance(a, Changed):
                changed = True
                self.on_changed(a)
            elif isinstance(a, Forgotten):  # a reaped member's link goes
                changed = True
            elif isinstance(a, Count):
                self.counts[a.what] += 1
            elif isinstance(a, Joined):
                log.info("mesh: %s joined the cluster via %s", self.name, a.seed)
            elif isinstance(a, NameConflict):
                log.error("mesh: cannot join: %s", a.reason)
                self.fatal(f"cannot join the cluster: {a.reason}")
        if changed:
            self.reconcile_links()
        if self.on_members is not None:
            self.report_members()
        self.schedule()

    def report_members(self) -> None:
        assert self.state is not None and self.on_members is not None
        live = (MemberState.ALIVE, MemberState.SUSPECT)
        alive = {} if self.state.me.state is MemberState.LEFT else {
            m.name: m.inc for m in self.state.members.values() if m.state in live}
        if alive != self.reported_members:
            self.reported_members = alive
            self.on_members(alive)

    def send_to(self, name: str, frame: Any) -> None:
        """Send ``frame`` to member ``name`` (the global registry's frames)."""
        member = self.state.members.get(name) if self.state is not None else None
        if member is None:
            self.counts["frames_dropped"] += 1
            return
        self.send(member.addr, frame)

    def schedule(self) -> None:
        assert self.state is not None
        if self.timer is not None:
            self.timer.cancel()
        # Event times are time.monotonic() (uvloop's loop.time() has millisecond steps).
        delay = max(0.0, next_wake(self.state) - time.monotonic())
        self.timer = self.loop.call_later(delay, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        self.drain()
        self.feed(Tick(time.monotonic()))

    def drain(self) -> None:
        """Handle the frames already received before a timer judges anyone. On a loaded
        host the timer and the ack it waits for fall due in the same loop iteration, and
        the loop may run the timer first (the receiving thread's hand-over is a callback
        that runs later in the iteration): the probe would fail with its ack waiting. The
        thread queues what it read (``inbox``) before it schedules the callback, so what is
        queued now is handled now, in arrival order."""
        inbox = self.inbox
        while inbox:
            self.on_frames(inbox.popleft())

    def post_frames(self, batch: list[list[Any]]) -> None:
        """Called on the receiving thread: queue ``batch`` for the loop (deque appends and
        pops are atomic), and have the loop take it unless a timer's drain does first."""
        self.inbox.append(batch)
        try:
            self.loop.call_soon_threadsafe(self.drain)
        except RuntimeError:
            pass  # the loop is closed: the node is stopping, nothing is judged any more

    def on_changed(self, c: Changed) -> None:
        kind = {MemberState.DEAD: "down", MemberState.LEFT: "left"}.get(c.new)
        if c.new is MemberState.ALIVE and c.old in (None, MemberState.DEAD, MemberState.LEFT):
            kind = "up"
        if kind is None:
            return
        self.publish(f"cluster.node.{c.name}.{kind}", {  # first: the event is the news
            "node": c.name, "address": hostport(c.addr), "incarnation": c.inc,
            "state": c.new.value, "previous": c.old.value if c.old else None,
            "seen_by": self.name})
        if kind != "up":
            self.on_node_lost(c.name)
        log.info("mesh: node %s is %s (%s, incarnation %d)", c.name, kind, c.addr, c.inc)

    # ---- receiving ---------------------------------------------------------------------------

    def on_frames(self, batch: list[list[Any]]) -> None:
        """Frames the receiving thread (:mod:`._direct`) read, in arrival order."""
        for parts in batch:
            if self.closed:
                return
            try:
                self.on_message(parts)
            except Exception:  # noqa: BLE001 - one frame must never end the mesh
                self.counts["errors"] += 1
                log.exception("mesh: handling a frame failed (%d so far)",
                              self.counts["errors"])

    def on_message(self, parts: list[Any]) -> None:
        if len(parts) != 2:
            self.bad_frame(parts[-1], f"{len(parts) - 1} message parts, expected 1")
            return
        data = parts[1].bytes
        frame, why = decode_mesh_frame(data)
        if frame is None:
            self.bad_frame(parts[1], why)
            return
        self.counts["frames_received"] += 1
        if isinstance(frame, DIST_FRAMES):
            self.on_dist_frame(frame, len(data))
            return
        self.received_bytes[frame.addr] += len(data)
        if isinstance(frame, GLOBAL_FRAMES):
            if self.on_global_frame is not None:
                self.on_global_frame(frame)
            return
        self.feed(Received(time.monotonic(), frame))

    def bad_frame(self, part: Any, why: str) -> None:
        self.counts["bad_frames"] += 1
        try:
            peer = part.get("Peer-Address")
        except (zmq.ZMQError, AttributeError):
            peer = "an unknown address"
        self.bad_frame_warning.warn("mesh: dropped a malformed frame from %s (%d so far): %s",
                                    peer, self.counts["bad_frames"], why)


    # ---- distribution (processes of one node talking to those of another: ._remote) -------

    def member_addr(self, name: str) -> str | None:
        """The address of ``name`` if it is a reachable member (alive or suspect)."""
        if self.state is None or self.closed:
            return None
        m = self.state.members.get(name)
        if m is None or m.state not in (MemberState.ALIVE, MemberState.SUSPECT):
            return None
        return m.addr

    def peers(self) -> list[tuple[str, bool]]:
        """Every other member not left, and whether it is reachable now."""
        if self.state is None:
            return []
        return [(n, m.state in (MemberState.ALIVE, MemberState.SUSPECT))
                for n, m in self.state.members.items()
                if m.state is not MemberState.LEFT and n != self.name]

    def node_alive(self, name: str) -> bool:
        return self.member_addr(name) is not None

    def send_to_node(self, name: str, frame: Any) -> bool:
        addr = self.member_addr(name)
        return addr is not None and self.send(addr, frame)

    def on_dist_frame(self, frame: Any, size: int) -> None:
        addr = self.member_addr(frame.src)
        if addr is None or self.remote is None:
            self.counts["dist_frames_dropped"] += 1  # not (or no longer) a member
            return
        self.received_bytes[addr] += size
        self.remote.on_frame(frame)

    def on_node_lost(self, name: str) -> None:
        if self.remote is not None:
            self.remote.node_lost(name)

    # ---- what the outside reads --------------------------------------------------------------

    def members(self) -> list[MemberRow]:
        assert self.state is not None
        mono, wall = time.monotonic(), time.time()
        return [MemberRow(m.name, hostport(m.addr), m.state, m.inc,
                          None if m.rtt is None else round(m.rtt * 1000, 3),
                          wall - (mono - m.since), this_node=(m is self.state.me))
                for m in table(self.state)]

    def collector(self) -> MeshCollector:
        return MeshCollector(self)


def _is_ip(host: str) -> bool:
    import ipaddress  # noqa: PLC0415

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _advertised(endpoint: str) -> str:
    """The address peers reach us at: the bound one, unless bound to every interface (then
    this host's name resolved, as Erlang's long names do)."""
    host, _, port = endpoint[6:].rpartition(":")
    if host in ("0.0.0.0", "*", "[::]", "::"):
        host = socket.gethostbyname(socket.gethostname())
    return f"tcp://{host}:{port}"
