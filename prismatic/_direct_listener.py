"""A process's own direct listener: other nodes' processes reach it with no hop between.

Imported only by a process that another node's process asked for it (it loads pyzmq; a
tree's image stays without it). The path it makes::

    caller's DEALER --TCP, CurveZMQ--> this process's ROUTER (read by its own loop)

How a pair switches onto it (the caller's side is :mod:`._remote_routes`):

1. A caller that sent ``SWITCH_AFTER`` messages to this process on the node path sends a
   ``d_hello`` on that path (:class:`~.transports._messages.DirectHello`, with a random
   ``token``). This process's node fills in the host its mesh listens on and the cluster's
   keys, and remembers the caller's link as a watcher of this process (it tells the caller
   when this process exits: ``exited``, with the real exit reason).
2. This process opens its listener (once, :class:`DirectListener`: a CurveZMQ ROUTER on an
   ephemeral port of that host, admitting only the cluster's key, as the node's mesh
   ROUTER does; the hello is taken only from the node's own process) and answers the hello
   with the port (nil if it cannot: the pair stays on the node path, logged and counted).
   From then on it *holds* what arrives on the listener from ``token`` (the caller's
   routing id).
3. The caller connects, and once its connection is up sends a ``d_fence`` on the node path,
   then everything on the new route. When the fence comes out of the mailbox, every message
   the caller sent on the node path is in this process's queue: what was held for
   ``token`` goes in behind them, and what comes after goes straight in. Per sender order
   holds across the switch, for calls, casts and sends alike.

Reading is this worker's loop's (its Reactor, or uvloop): the ROUTER's ``ZMQ_FD`` is an
edge (armed by reading ``EVENTS`` once), so a wake-up reads a lone message and answers it
at once, or everything the socket holds in a burst, and looks again after sending, which
can consume the edge. A message takes no turn of any other process or thread. A call's
reply goes back on the route it came in on, everything one wake-up answered for one caller
in one ZeroMQ message. The ZAP handler and
the socket's monitor (refusals: counted, logged throttled with the peer's address, no key
ever logged) are read on the same loop.

What arrives is checked as the node's port checks it: a batch that does not decode is
dropped, counted and logged (throttled); a message for another Pid (a stale one: another
incarnation or process) or a name this process does not hold reaches nobody (a call is
refused ``noproc``/``not_registered``, a cast or send is a dead letter). While the worker's
queue is at its high-water mark the listener stops reading: ZeroMQ's queues fill (1,000
messages here, ``SEND_HWM`` at the caller) and the caller's send blocks, then fails with
``MailboxFull`` at its timeout, as a local sender's does. What is held before a fence is
bounded by ``PRISMATIC_REMOTE_BACKLOG_BYTES`` (past it: dropped, a call refused
``mailbox_full``, a cast a dead letter).

A caller that goes (its process exits or is SIGKILLed, or it closes its route when it loses
this node) ends its route's connection. The listener knows each caller's connection by the
descriptor its last batch came on (``ZMQ_SRCFD``; the bookkeeping, numbers reused and
batches read late included, is :mod:`._direct_callers`'s) and reads the ROUTER's monitor: when that
connection is ``DISCONNECTED``, the caller has ``REJOIN_S`` to be back (a live caller's
DEALER reconnects within ~100 ms, under its routing id, and its fence is on its way on
the node path meanwhile). Then the listener asks ZeroMQ whether its routing id has a
connection (a send with ``ROUTER_MANDATORY``: an empty batch of answers if it does, which
the caller reads as nothing). A caller back, with or without a batch since, keeps what is
held for it, in order. A caller whose connection was reset without this side seeing it
(this side's left open until keepalive ends it) reconnects under its routing id, which the
ROUTER hands over to the new connection (``ROUTER_HANDOVER``, as the node's mesh ROUTER
does): it is served there at once; its old connection, read no more, ends later as any
does, and the caller, known on its new one (or looked for and found there), is not gone.
What this side had not read from the old connection when the id moved may be read after
the new one's first batch (ZeroMQ queues the two fairly). A caller not back is gone: what
was held for it, if its fence has not come (it never will), is dropped: a cast or send is
a dead letter (``noconnection``), a call fails ``NoConnection()``; counted and logged; and
the node is told (``d_gone``) so it stops watching for that caller. Not done: a live
caller whose connection went and came back later than ``REJOIN_S`` loses what was held for
it (loudly; if its fence was later still: a node path or a mailbox that slow; what it
routes once back is held again until that fence, never served ahead of it) and is no
longer told of this process's exit; a caller cut off without its connection closing (a
partition, a host lost) is seen gone only when TCP gives up on the connection (idle:
within ``KEEPALIVE_S``, the kernel's keepalive; with replies unacknowledged: its
retransmission timeout, minutes); a caller that asked for the listener and never sent on
it leaves its token here (a few bytes) and its watcher at the node, until this process
exits; one released before its fence leaves its token here too (what it routes if it is
back is held for that fence).

When the process exits, the listener is closed after its replies leave (``LINGER_MS``) and
its context ends: no thread or socket outlives it. A child the worker forks never touches
it (its descriptors stay open in the child until it exits or execs, as its parent's
mailbox connections are closed but ZeroMQ's cannot be from outside it: a child that
outlives its parent keeps the port bound, and a caller routed there gets its callee's exit
through the node, as always).
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils import z85

from ._address import Pid
from ._direct_callers import CallerConnections
from ._direct_counts import counts, report
from ._direct_link import descriptors_for_routes
from ._exit import NoConnection
from ._mailbox import Inbound
from ._throttle import ThrottledWarning
from .mesh._auth import WATCHED_EVENTS, ZAP_ENDPOINT, AdmissionWatch, parse_event
from .mesh._backlog import backlog_full
from .mesh._settings import backlog_limit
from .transports._framing import encode_frame
from .transports._messages import (
    CallFrame, CallRefused, CallReply, DeadLetterNote, DirectFence, DirectGone, DirectHello,
)
from .transports._remote_frames import (
    MAX_DIRECT_BATCH, CallFailed, decode_deliveries, encode_answers,
)

if TYPE_CHECKING:
    from ._worker_runtime import WorkerContext

__all__ = ["DirectListener", "take_direct_frame", "LINGER_MS", "REJOIN_S"]

log = logging.getLogger(__name__)
LINGER_MS = 250  # replies not yet sent when the process exits get this long to leave
RCV_HWM = 1000  # messages ZeroMQ queues per caller while this process does not read
# A caller's connection went: it has this long to be back before it counts as gone (its
# DEALER reconnects every 100 ms; a fence on its way has this long to arrive too).
REJOIN_S = 2.0
KEEPALIVE_S = 25  # an idle connection whose peer's host answers nothing ends after this
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
_SRCFD, _DISCONNECTED = int(zmq.SRCFD), int(zmq.EVENT_DISCONNECTED)
_ACCEPTED = int(zmq.EVENT_ACCEPTED)
_PROBE = encode_answers([])  # what a caller whose routing id is looked up gets: nothing
_SNDMORE = int(zmq.SNDMORE) | _NOBLOCK
# One throttle per kind of trouble: a flood of one never hides the first of another.
_refused_warning = ThrottledWarning(log)  # peers without the cluster's key
_handshake_warning = ThrottledWarning(log)  # connections that never completed a handshake
_bad_warning = ThrottledWarning(log)  # malformed batches
_full_warning = ThrottledWarning(log)  # held messages past the backlog bound
_fd_warning = ThrottledWarning(log)  # hellos refused for want of descriptors
_gone_warning = ThrottledWarning(log)  # held messages of callers that went before fencing


class _Route(Inbound):
    """One caller's route, as the worker's queue sees a connection: the replies to its
    calls go back on it."""

    __slots__ = ("listener", "ident")

    def __init__(self, listener: DirectListener, ident: bytes) -> None:  # noqa: D107
        self.listener = listener
        self.ident = ident
        self.batch = None
        self.peer_pid = 0
        self.fd = -1

    def reply(self, frame: Any) -> None:
        self.listener.answer(self.ident, frame)


class DirectListener:
    """This process's ROUTER and what reads it (see the module docstring). Not
    thread-safe: the worker's loop only."""

    def __init__(self, ctx: WorkerContext, hello: DirectHello) -> None:
        self.ctx = ctx
        self.pid: Pid = ctx.pid
        self.zctx: zmq.Context[Any] = zmq.Context(io_threads=1)
        self.closed = False
        try:
            zap = self.zctx.socket(zmq.REP)
            zap.linger = 0
            zap.bind(ZAP_ENDPOINT)  # before the CURVE server: every handshake asks it
            router = self.zctx.socket(zmq.ROUTER)
            router.linger = LINGER_MS
            router.rcvhwm = RCV_HWM
            router.sndhwm = 0  # replies never wait for the caller to read
            router.router_mandatory = True  # a reply for a caller that left raises: counted
            # A caller whose connection was reset without this side seeing it (its old one
            # left open here until keepalive ends it) reconnects under its routing id: the
            # id moves to the new connection, which is served at once, not refused for ~25 s.
            router.router_handover = True
            router.curve_server = True
            router.curve_publickey = hello.public
            router.curve_secretkey = hello.secret
            router.zap_domain = b"prismatic-direct"
            router.maxmsgsize = MAX_DIRECT_BATCH
            # A caller cut off with its connection left open (a partition, its host lost)
            # never closes it: the kernel probes an idle one and ends it when unanswered
            # (then it is a caller that went, below), within about KEEPALIVE_S.
            router.tcp_keepalive = 1
            router.tcp_keepalive_idle = KEEPALIVE_S - 15
            router.tcp_keepalive_intvl = 5
            router.tcp_keepalive_cnt = 3
            host = hello.host or "127.0.0.1"
            self.port = router.bind_to_random_port(f"tcp://{host}")
            monitor = router.get_monitor_socket(WATCHED_EVENTS)
        except BaseException:
            self.zctx.destroy(0)
            raise
        self.zap, self.router, self.monitor = zap, router, monitor
        self.allowed = z85.decode(hello.public)
        self.refusals: collections.Counter[str] = collections.Counter()
        self.admissions = AdmissionWatch(self.refusals, _handshake_warning)
        # Tokens whose fence has not come: (to, frame, size) of what their route brought.
        self.held: dict[bytes, list[tuple[Pid | str, Any, int]]] = {}
        self.callers = CallerConnections(REJOIN_S)  # which connection each caller is on
        self.fd_of = self.callers.fd_of  # read per batch
        self.hello_conns: dict[bytes, Inbound] = {}  # the node connection each token came on
        self.held_bytes = 0
        self.full = False
        self.limit = backlog_limit()
        self.answers: dict[bytes, list[Any]] = {}
        self.draining = False
        self.burst = False  # the last wake-up read more than one message
        self.flush_queued = False
        self.paused = False
        self.fds = (int(router.get(zmq.FD)), int(zap.get(zmq.FD)), int(monitor.get(zmq.FD)))
        loop = ctx.loop
        assert loop is not None  # hellos come through the mailbox: the loop runs
        loop.add_reader(self.fds[0], self.readable)
        loop.add_reader(self.fds[1], self.on_zap)
        loop.add_reader(self.fds[2], self.on_monitor)
        # A ZMQ_FD signals only once EVENTS has been read: each reader looks once now.
        for handler in (self.readable, self.on_zap, self.on_monitor):
            loop.call_soon(handler)
        os.register_at_fork(after_in_child=self.abandon)
        counts["listeners_opened"] += 1
        report(ctx.hub)
        log.debug("direct listener of %s on %s:%d", self.pid, host, self.port)

    # ---- the node path's control frames -------------------------------------------------------

    def expect(self, token: bytes, conn: Inbound) -> None:
        """A caller will route here as ``token`` once its fence came: hold it until then.
        ``conn`` is the node's connection that brought its hello (told when it is gone)."""
        self.held.setdefault(token, [])
        self.hello_conns[token] = conn

    def fence(self, token: bytes) -> None:
        """Everything ``token`` sent on the node path is queued: what it routed here since
        goes in behind it, in order."""
        frames = self.held.pop(token, None)
        if not frames:
            return
        route = _Route(self, token)
        for _to, frame, size in frames:
            self.held_bytes -= size
            self.ctx.on_frame(route, frame)

    # ---- reading ------------------------------------------------------------------------------

    def readable(self) -> None:
        if self.closed or self.paused:
            return
        router = self.router
        recv, get = router.recv, router.get
        self.draining = True
        n = 0
        try:
            while not self.paused:
                # One message at a time (a caller awaiting its answer) is answered first:
                # after it, look for more (EVENTS, ~2 us; a recv that finds nothing costs
                # ~3.5 us) only in a burst; the check after sending finds the next one.
                if n == 1 and not (self.burst and get(_EVENTS) & _POLLIN):  # type: ignore[operator]
                    break
                try:
                    ident = recv(_NOBLOCK)
                except zmq.Again:
                    break
                n += 1
                part = recv(_NOBLOCK, copy=False)
                if part.more:  # not a batch: [routing id, body] only
                    while part.more:
                        part = recv(_NOBLOCK, copy=False)
                    self.bad(part, "a multi-part message")
                    continue
                self.take(ident, part)
        finally:
            self.draining = False
        self.burst = n > 1
        self.flush()
        report(self.ctx.hub, force=False)  # the message count, every REPORT_S at most
        if not self.paused and get(_EVENTS) & _POLLIN:  # type: ignore[operator]
            self.burst = True  # more came meanwhile (the send above may have taken the edge)
            self.later(self.readable)

    def take(self, ident: bytes, part: Any) -> None:
        batch, why = decode_deliveries(part.bytes)
        if batch is None:
            self.bad(part, why)
            return
        counts["listener_messages"] += len(batch)
        fd = part.get(_SRCFD)  # ~0.3 us: which connection to watch for the caller
        if self.fd_of.get(ident) != fd and self.callers.moved(ident, fd, time.monotonic()):
            self.later(self.look_after, [ident], delay=REJOIN_S)  # read after it went
        route = _Route(self, ident)  # made per batch: nothing kept per caller that left
        held = self.held.get(ident)
        ctx = self.ctx
        for d in batch:
            frame, to = d.frame, d.to
            if isinstance(frame, (DirectHello, DirectFence)):
                self.bad(part, "a control frame on a direct route")
                continue
            if isinstance(to, str):
                if to not in ctx.names:
                    self.refuse(ident, to, frame, "not_registered")
                    continue
                if isinstance(frame, CallFrame):
                    frame = CallFrame(frame.ref, frame.msg, frame.sender, to)
            elif not to.names(self.pid):  # another process (a stale Pid): nobody
                self.refuse(ident, to, frame, "noproc")
                continue
            if held is not None:
                self.hold(ident, to, frame, held)
                continue
            ctx.on_frame(route, frame)

    def hold(self, ident: bytes, to: Pid | str, frame: Any,
             held: list[tuple[Pid | str, Any, int]]) -> None:
        self.full = backlog_full(self.full, self.held_bytes, self.limit)
        if self.full:
            counts["listener_mailbox_full"] += 1
            _full_warning.warn("direct listener of %s: held %d bytes for callers whose fence has "
                          "not come: dropped a %s (%d so far)", self.pid, self.held_bytes,
                          type(frame).__struct_config__.tag, counts["listener_mailbox_full"])
            self.refuse(ident, to, frame, "mailbox_full")
            report(self.ctx.hub)  # as the refusal's dead letter goes: its node knows now
            return
        size = len(encode_frame(frame))
        held.append((to, frame, size))
        self.held_bytes += size

    def refuse(self, ident: bytes, to: Pid | str, frame: Any, reason: str) -> None:
        if isinstance(frame, CallFrame):
            self.answer(ident, CallRefused(frame.ref, reason))
            return
        counts["listener_dead_letters"] += 1
        self.dead_letter(to, frame, reason)

    def dead_letter(self, to: Pid | str, frame: Any, reason: str) -> None:
        kind = "cast" if type(frame).__struct_config__.tag == "cast" else "info"
        dest = str(to) if isinstance(to, Pid) else f"{to}@{self.pid.node}"
        self.ctx.hub.note(DeadLetterNote(dest, reason, kind, None, len(encode_frame(frame))))

    def bad(self, part: Any, why: str) -> None:
        counts["listener_bad_frames"] += 1
        try:
            peer = part.get("Peer-Address")
        except (zmq.ZMQError, AttributeError):
            peer = "an unknown address"
        _bad_warning.warn("direct listener of %s: dropped a malformed batch from %s (%d so far): "
                      "%s", self.pid, peer, counts["listener_bad_frames"], why)
        report(self.ctx.hub)

    # ---- answering ----------------------------------------------------------------------------

    def answer(self, ident: bytes, frame: Any) -> None:
        answers = self.answers.get(ident)
        if answers is None:
            self.answers[ident] = [frame]
        else:
            answers.append(frame)
        if not self.draining and not self.flush_queued:  # a reply from an async handler
            self.flush_queued = True
            self.later(self.flush)

    def flush(self) -> None:
        self.flush_queued = False
        if not self.answers or self.closed:
            return
        answers, self.answers = self.answers, {}
        for ident, batch in answers.items():
            if not self.send_answers(ident, encode_answers(batch)):  # nobody awaits them
                counts["listener_answers_lost"] += len(batch)
                report(self.ctx.hub)  # rare (a caller left mid-call): its node learns now

    def send_answers(self, ident: bytes, body: bytes) -> bool:
        """Send a batch of answers to ``ident``; False if no connection has that routing id
        (ROUTER_MANDATORY refuses it: its caller is gone)."""
        try:
            self.router.send(ident, _SNDMORE)
            self.router.send(body, _NOBLOCK)  # sndhwm 0: never refused once the id was taken
        except zmq.ZMQError:  # EHOSTUNREACH
            return False
        return True

    def later(self, callback: Any, *args: Any, delay: float = 0.0) -> None:
        """``callback(*args)`` on the loop, at its next turn or ``delay`` s from now."""
        loop = self.ctx.loop
        if loop is None or loop.is_closed():
            return
        if delay:
            loop.call_later(delay, callback, *args)
        else:
            loop.call_soon(callback, *args)

    # ---- admission ----------------------------------------------------------------------------

    def on_zap(self) -> None:
        """ZAP requests (RFC 27): admit exactly the cluster's key, as the node's mesh does."""
        zap = self.zap
        while not self.closed and zap.get(_EVENTS) & _POLLIN:  # type: ignore[operator]
            msg = zap.recv_multipart(_NOBLOCK)
            version, request_id = (msg + [b"", b""])[:2]
            mechanism = msg[5] if len(msg) > 5 else b""
            key = msg[6] if len(msg) > 6 else b""
            ok = mechanism == b"CURVE" and key == self.allowed
            if not ok:
                self.refusals["unknown_key"] += 1
                counts["listener_refused_unknown_key"] += 1
                address = msg[3].decode(errors="replace") if len(msg) > 3 else "?"
                _refused_warning.warn("direct listener of %s: refused a peer at %s: not the "
                                      "cluster's key (another cluster secret?)", self.pid,
                                      address)
            zap.send_multipart([version, request_id, b"200" if ok else b"400",
                                b"OK" if ok else b"not a member of this cluster", b"", b""],
                               _NOBLOCK)
            if not ok:
                report(self.ctx.hub)

    def on_monitor(self) -> None:
        monitor = self.monitor
        while not self.closed and monitor.get(_EVENTS) & _POLLIN:  # type: ignore[operator]
            before = self.refusals["bad_handshake"]
            event, value = parse_event(monitor.recv_multipart(_NOBLOCK))
            self.admissions.on_event(event, value)
            if self.refusals["bad_handshake"] != before:
                counts["listener_refused_bad_handshake"] += 1
                report(self.ctx.hub)
            if event == _DISCONNECTED:
                self.disconnected(value)
            elif event == _ACCEPTED:
                self.callers.accepted(value)

    # ---- callers that go ----------------------------------------------------------------------

    def disconnected(self, fd: int) -> None:
        """Connection ``fd`` went: the callers that may have been on it get REJOIN_S to be
        back (:meth:`CallerConnections.disconnected`)."""
        held = [token for token, frames in self.held.items() if frames]
        tokens = self.callers.disconnected(fd, time.monotonic(), held)
        if tokens:
            self.later(self.look_after, tokens, delay=REJOIN_S)

    def look_after(self, tokens: list[bytes]) -> None:
        """REJOIN_S after a connection went: each of ``tokens`` still to look for whose
        caller has no connection now is gone."""
        if self.closed:
            return
        if self.paused:  # its mailbox is not read: a fence may be waiting in it
            self.later(self.look_after, tokens, delay=REJOIN_S)
            return
        for token in self.callers.due(tokens, time.monotonic()):
            if not self.attached(token):
                self.gone(token)

    def attached(self, token: bytes) -> bool:
        """Whether a connection has ``token``'s routing id now; if one has, it is sent an
        empty batch of answers."""
        return self.send_answers(token, _PROBE)

    def gone(self, token: bytes) -> None:
        """``token``'s caller went and is not back: what was held for it is dropped (its
        fence will never come), loudly, and its node stops watching for it."""
        self.callers.forget(token)
        held = self.held.get(token)
        if held is not None:  # its fence has not come
            # If it is back after all, what it routes is held again until its fence: served
            # at once it would overtake what it sent on the node path before the fence.
            self.held[token] = []
        held = held or []
        size = 0
        failed: list[Any] = []
        # Each counted once, as released: not also as an answer lost or a dead letter.
        for to, frame, n in held:
            self.held_bytes -= n
            size += n
            counts["listener_released"] += 1
            if isinstance(frame, CallFrame):  # nobody awaits it, unless the caller was slow
                failed.append(CallFailed(frame.ref, NoConnection()))
            else:
                self.dead_letter(to, frame, "noconnection")
        if failed:
            self.answer_released(token, failed)
        if held:
            _gone_warning.warn("direct listener of %s: a caller's route went before its fence "
                               "came, and it is not back after %.0fs: dropped the %d messages "
                               "(%d bytes) held for it (%d so far)", self.pid, REJOIN_S,
                               len(held), size, counts["listener_released"])
        conn = self.hello_conns.pop(token, None)
        if conn is not None:
            conn.reply(DirectGone(token))  # its node stops watching for it
        report(self.ctx.hub)

    def answer_released(self, token: bytes, failed: list[Any]) -> None:
        """The calls released for ``token`` fail, behind what was answered it before; sent
        now, as nobody may be there: only those others count as answers lost then."""
        batch = self.answers.pop(token, []) + failed
        if not self.send_answers(token, encode_answers(batch)):  # gone, as expected
            counts["listener_answers_lost"] += len(batch) - len(failed)

    # ---- pausing with the mailbox, closing ----------------------------------------------------

    def pause(self) -> None:
        """The worker's queue is at its high-water mark: stop reading (callers block)."""
        if not self.paused and not self.closed and self.ctx.loop is not None:
            self.paused = True
            self.ctx.loop.remove_reader(self.fds[0])

    def resume(self) -> None:
        if self.paused and not self.closed and self.ctx.loop is not None:
            self.paused = False
            self.ctx.loop.add_reader(self.fds[0], self.readable)
            self.later(self.readable)

    def drain(self) -> None:
        """Before a notice is handed on: what callers routed here is queued first."""
        if not self.paused and not self.closed:
            self.burst = True  # everything it holds, not one message
            self.readable()

    def close(self) -> None:
        """The process exits: its replies leave (within LINGER_MS), then everything ends."""
        if self.closed:
            return
        self.flush()
        self.closed = True
        report(self.ctx.hub)
        loop = self.ctx.loop
        if loop is not None and not loop.is_closed():
            for fd in self.fds:
                loop.remove_reader(fd)
        try:
            self.router.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)
        self.zap.close(0)
        self.router.close(LINGER_MS)
        self.zctx.term()

    def abandon(self) -> None:
        """In a child forked from this process: the parent's sockets are not ours to touch."""
        self.closed = True
        if self.ctx._direct is self:
            self.ctx._direct = None


def take_direct_frame(ctx: WorkerContext, conn: Inbound, frame: DirectHello | DirectFence) -> None:
    """A ``d_hello`` or ``d_fence`` from the mailbox (see the module docstring). Taken only
    from this process's node (the mailbox's ``hub_pid``): from anyone else, dropped and
    counted as a forged frame."""
    box = ctx.mailbox
    if box.hub_pid is not None and conn.peer_pid != box.hub_pid:
        box.bad_frames += 1
        box.warn("forged", "dropped a %s from pid %d (only the node, pid %d, sends it)",
                 type(frame).__struct_config__.tag, conn.peer_pid, box.hub_pid)
        return
    if isinstance(frame, DirectFence):
        if ctx._direct is not None:
            ctx._direct.fence(frame.token)
        return
    listener = ctx._direct
    in_use, most = (descriptors_for_routes(box.limits.fd_reserve) if listener is not None
                    else (0, 1))
    if in_use >= most:  # each route is a connection in: local senders need theirs
        counts["listener_failures"] += 1
        _fd_warning.warn("direct listener of %s: %d descriptors in use, routes may take up to "
                         "%d: offers no route (other nodes' processes reach it through its "
                         "node)", ctx.pid, in_use, most)
        report(ctx.hub)
        conn.reply(CallReply(frame.ref, None))
        return
    if listener is None and not ctx.direct_failed:
        try:
            listener = ctx._direct = DirectListener(ctx, frame)
            box.extra = listener
        except (zmq.ZMQError, OSError, ValueError) as exc:
            ctx.direct_failed = True  # the node path serves it: not tried again
            counts["listener_failures"] += 1
            log.warning("direct listener of %s: cannot open one on %s (%s); other nodes' "
                        "processes reach it through its node", ctx.pid, frame.host or "?", exc)
            report(ctx.hub)
    if listener is None:
        conn.reply(CallReply(frame.ref, None))
        return
    listener.expect(frame.token, conn)
    conn.reply(CallReply(frame.ref, listener.port))
