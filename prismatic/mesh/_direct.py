"""The node end of direct links: the thread that reads the mesh's ROUTER.

Processes of other nodes send their messages for this node's processes straight here, on a
ZeroMQ DEALER of their own connected to this node's mesh address (a CURVE client with the
cluster's keys, admitted like any node; :mod:`prismatic.transports._remote_frames`). This
thread owns the mesh ROUTER, so a message takes no turn of the node's shared loop:

* a direct batch (``b"PD"`` prefix) is handled here: each message goes to its destination's
  mailbox on this thread's own connection to it (one per destination: a link's order is
  kept into the mailbox), everything one wake-up read for one mailbox in one write; a call
  is refused at once (``noproc``, ``not_registered``) when its callee is not there; the
  replies are read here too, and everything a wake-up gathered for one link goes back to it
  as one ZeroMQ message;
* every other frame (membership, the global registry, the relay path's distribution frames)
  is handed to the loop as it arrives, in arrival order, one hand-over per wake-up
  (:meth:`MeshLoop.on_message` does what it always did).

A ``d_hello`` (a process asking for its callee's own listener, :mod:`prismatic._direct_listener`)
travels as a call does, this port filling in where the callee listens (the host this
mesh ROUTER is bound to) and the cluster's keys; the port then remembers the asking link as
a *watcher* of the callee: when the callee's mailbox connection breaks, each watcher is
told (``exited``, with the exit reason the tree reports), since its calls on the direct
route are not seen here. A watcher is forgotten when its caller goes: the callee's listener
sees the route's connection go and not come back, and says so on its mailbox connection
(``d_gone``, with the token); and when the callee answers the hello with no port (it opened
no listener: the pair stays on the node path, where its exits are seen). ``watching``
counts them (a gauge, ``prismatic_cluster_direct_route_watchers``).

The loop side does what needs the hub's loop: a callee that dies with calls in flight fails
them with its exit reason once the tree reports it (:meth:`Distribution.fail_direct`, which
hands the failures back here with :meth:`DirectPort.post`), and dead letters are recorded
there. The socket and the mailbox connections are this thread's alone.

Wake-ups: one epoll over the ROUTER's descriptor (edge-like: the ROUTER is drained until it
has nothing, and its ``EVENTS`` checked before sleeping), the mailbox connections and an
eventfd for what the loop posts. After handing calls to mailboxes the thread polls those
connections for up to ``SPIN_S`` before sleeping, as a local caller does: a callee that
answers that fast costs it no wake-up (on two CPUs or more; never on one). A malformed
batch is dropped, counted (``prismatic_cluster_direct_bad_frames``) and logged (throttled)
with the peer's address.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from .._address import Pid
from .._mailbox_writer import MailboxWriter
from .._throttle import ThrottledWarning
from ..transports._framing import FrameBuffer, encode_frame
from ..transports._messages import (
    CallFrame, CallRefused, CallReply, DirectFence, DirectGone, DirectHello, MailboxFrame,
)
from ..transports._remote_frames import CallFailed, Exited, decode_deliveries, encode_answers
from ._backlog import backlog_full
from ._settings import backlog_limit

if TYPE_CHECKING:
    import asyncio

    from .._hub import Hub

__all__ = ["DirectPort"]

log = logging.getLogger(__name__)
# What a mailbox sends back to the node: its replies, and d_gone (a mailbox never takes it).
_mailbox_decoder = msgspec.msgpack.Decoder(MailboxFrame | DirectGone)
_DIRECT = b"PD"
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
# Plain ints: pyzmq's enum flags cost a conversion on every use in the hot loop.
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE) | _NOBLOCK
READ_SIZE = 1 << 16
# After handing calls to mailboxes, poll for their replies this long before sleeping (as a
# local caller does; never on one CPU, where spinning would only delay the callee).
SPIN_S = 30e-6 if len(os.sched_getaffinity(0)) > 1 else 0.0
Answer = CallReply | CallRefused | CallFailed | Exited
# A call's way back: (the caller's link, the caller's ref)
Origin = tuple[bytes, int]


class DirectPort:
    """Reads ``router`` on a thread of its own (see the module docstring).

    ``on_frames(parts_list)`` is called on this thread with the frames that are not direct
    batches, in arrival order: it must only hand them to the loop (thread-safe).
    Until the node's distribution sets ``hub`` (and the hooks below), direct batches are
    dropped and counted (no process was told this node's address yet);
    ``fail_calls(pid, origins, watchers)`` runs on ``loop`` when ``pid``'s mailbox
    connection broke with calls in flight or links watching it (``[(link, token)]``);
    ``dead_letter(to, reason, frame)`` on ``loop`` for a cast or send
    nobody takes.
    """

    def __init__(self, node: str, router: zmq.Socket, loop: asyncio.AbstractEventLoop,
                 on_frames: Callable[[list[list[Any]]], None]) -> None:
        self.node = node
        self.router = router
        self.hub: Hub | None = None  # set when the node's distribution starts
        self.loop = loop
        self.on_frames = on_frames
        self.fail_calls: Callable[[Pid, list[Origin], list[tuple[bytes, bytes]]], None] = \
            lambda pid, origins, watchers: None
        self.keys: Any = None  # the cluster's keys, for d_hello (set with ``hub``)
        self.host = _bound_host(router.get_string(zmq.LAST_ENDPOINT))
        self.dead_letter: Callable[[Pid | str, str, Any], None] = lambda to, why, frame: None
        self.counters = collections.Counter[str]()
        self.warning = ThrottledWarning(log)
        self.backlog_limit = backlog_limit()  # checked when the node started
        self.outlets: dict[Pid, _Outlet] = {}
        self.watching = 0  # watchers of all outlets (read by the metrics thread)
        self.by_fd: dict[int, _Outlet] = {}
        self.answers: dict[bytes, list[Answer]] = {}
        self.dirty: list[_Outlet] = []
        self.posted: collections.deque[tuple[bytes, Answer]] = collections.deque()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epoll = select.epoll()
        self.stopping = False
        self.burst = False  # the last wake-up read more than one message
        self.thread = threading.Thread(target=self.run, name="mesh-port", daemon=True)

    def start(self) -> None:
        self.epoll.register(int(self.router.get(zmq.FD)), _IN)
        self.epoll.register(self.wake, _IN)
        self.thread.start()

    def stop(self) -> None:
        """From the loop: end the thread (joined) and close the mailbox connections."""
        self.stopping = True
        os.eventfd_write(self.wake, 1)
        self.thread.join(5.0)
        for outlet in list(self.outlets.values()):
            outlet.sock.close()
        self.epoll.close()
        os.close(self.wake)

    def post(self, link: bytes, answer: Answer) -> None:
        """From the loop: send ``answer`` to ``link`` (a call failed with its exit reason)."""
        self.posted.append((link, answer))
        os.eventfd_write(self.wake, 1)

    # ---- the thread ----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self.serve()
        except Exception:  # noqa: BLE001 - logged: a node whose port died must be visible
            self.counters["errors"] += 1
            log.exception("mesh: the receiving thread failed; this node no longer hears its "
                          "peers")

    def serve(self) -> None:
        router, wake, by_fd = self.router, self.wake, self.by_fd
        while not self.stopping:
            self.drain()
            if router.get(_EVENTS) & _POLLIN:  # type: ignore[operator]
                # More came meanwhile (sending consumed the descriptor's edge: look again
                # before sleeping): a burst, read whole by the next drain.
                self.burst = True
                continue
            for fd, ev in self.epoll.poll(1.0):
                if fd == wake:
                    try:
                        os.eventfd_read(wake)
                    except BlockingIOError:
                        pass
                    while self.posted:
                        link, answer = self.posted.popleft()
                        self.answers.setdefault(link, []).append(answer)
                    continue
                outlet = by_fd.get(fd)
                if outlet is None:
                    continue  # the ROUTER: drained at the top of the loop
                if ev & _OUT:
                    outlet.flush()
                if ev & ~_OUT:
                    self.replies(outlet)
            self.flush_answers()

    def drain(self) -> None:
        """Everything the ROUTER holds now: direct batches delivered, the rest to the loop."""
        router = self.router
        recv, get = router.recv, router.get
        others: list[list[Any]] = []
        n = 0
        while True:
            # After one message, ask EVENTS (a system call: ~2.5 us here) whether more wait
            # only in a burst (the last drain read more than one, or more came while it was
            # handled): one call at a time (a caller waiting for its answer) is answered
            # first, and serve's check of EVENTS before sleeping finds the next one.
            if n == 1 and not (self.burst and get(_EVENTS) & _POLLIN):  # type: ignore[operator]
                break
            try:
                ident = recv(_NOBLOCK)
            except zmq.Again:
                break
            n += 1
            # The body as a frame: a frame handed to the loop may need its peer's address,
            # and Frame.more costs nothing where get(RCVMORE) costs ~1.5 us.
            part = recv(_NOBLOCK, copy=False)
            if part.more:
                parts: list[Any] = [ident, part]
                while parts[-1].more:
                    parts.append(recv(_NOBLOCK, copy=False))
                others.append(parts)
                continue
            data = part.bytes  # below a few KiB, cheaper than a memoryview of the frame
            if data[:2] == _DIRECT:
                self.deliveries(ident, part, data)
            else:
                others.append([ident, part])
        self.burst = n > 1
        calls = [o for o in self.dirty if o.calls]
        for outlet in self.dirty:
            outlet.send_out()
        self.dirty.clear()
        if others:
            self.on_frames(others)
        self.flush_answers()
        if calls and SPIN_S:
            self.spin(calls)

    def spin(self, outlets: list[_Outlet]) -> None:
        """Poll the callees just written to for their replies, SPIN_S at most, before
        sleeping: a reply that comes that fast costs this thread no wake-up."""
        end = time.perf_counter() + SPIN_S
        while time.perf_counter() < end:
            for outlet in outlets:
                if outlet.closed:
                    continue
                try:
                    data = outlet.sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                self.on_replies(outlet, data)
                self.flush_answers()
                return

    def deliveries(self, link: bytes, part: Any, data: bytes) -> None:
        batch, why = decode_deliveries(data)
        if batch is None:
            self.counters["bad_frames"] += 1
            try:
                peer = part.get("Peer-Address")
            except (zmq.ZMQError, AttributeError):
                peer = "an unknown address"
            self.warning.warn("mesh: dropped a malformed direct batch from %s (%d so far): %s",
                              peer, self.counters["bad_frames"], why)
            return
        self.counters["messages"] += len(batch)
        for d in batch:
            try:
                self.deliver(link, d.to, d.frame)
            except Exception:  # noqa: BLE001 - one message must never end the port
                self.counters["errors"] += 1
                log.exception("mesh: delivering a direct message failed")

    def deliver(self, link: bytes, to: Pid | str, frame: Any) -> None:
        hub = self.hub
        if hub is None:
            self.counters["dropped"] += 1
            return
        pid = hub.registry.names.get(to) if isinstance(to, str) else to
        is_call = isinstance(frame, (CallFrame, DirectHello))
        outlet = None
        if pid is not None and pid.node == self.node:
            outlet = self.outlet(hub.complete(pid, probe=False))
        if outlet is None:
            reason = "not_registered" if pid is None else "noproc"
            if is_call:
                self.answers.setdefault(link, []).append(CallRefused(frame.ref, reason))
            else:
                self.loop.call_soon_threadsafe(self.dead_letter, to, reason, frame)
            return
        outlet.full = backlog_full(outlet.full, outlet.backlog, self.backlog_limit)
        # A fence is never dropped for a full backlog: its callee would hold the pair's
        # route for ever (a few bytes, once per switch).
        if outlet.full and type(frame) is not DirectFence:
            self.overflow(link, to, frame)
            return
        if is_call:
            ref = next(outlet.refs)
            outlet.calls[ref] = (link, frame.ref)
            if isinstance(frame, DirectHello):
                if link not in outlet.watchers:
                    self.watching += 1
                outlet.watchers[link] = frame.token
                outlet.hellos[ref] = frame.token  # answered with no port: not watched
                keys = self.keys
                frame = DirectHello(ref, frame.token, self.host, keys.public if keys else b"",
                                    keys.secret if keys else b"")
            else:
                frame = CallFrame(ref, frame.msg, frame.sender,
                                  to if isinstance(to, str) else frame.to_name)
        if not outlet.out:
            self.dirty.append(outlet)
        data = encode_frame(frame)
        outlet.out.append(data)
        outlet.backlog += len(data)

    def overflow(self, link: bytes, to: Pid | str, frame: Any) -> None:
        """``to``'s backlog here is full (backlog_full): ``frame`` is dropped, counted,
        logged, and refused (a call) or a dead letter."""
        self.counters["mailbox_full"] += 1
        self.warning.warn("mesh: %s takes nothing from its mailbox and its backlog here "
                          "reached %d bytes: dropped a %s from another node (%d so far)", to,
                          self.backlog_limit, type(frame).__struct_config__.tag,
                          self.counters["mailbox_full"])
        if isinstance(frame, (CallFrame, DirectHello)):
            self.answers.setdefault(link, []).append(CallRefused(frame.ref, "mailbox_full"))
        else:
            self.loop.call_soon_threadsafe(self.dead_letter, to, "mailbox_full", frame)

    def outlet(self, pid: Pid) -> _Outlet | None:
        outlet = self.outlets.get(pid)
        if outlet is None or outlet.closed:
            outlet = _Outlet(self, pid)
            if outlet.closed:
                return None
            self.outlets[pid] = outlet
            self.by_fd[outlet.fd] = outlet
            self.epoll.register(outlet.fd, _IN)
        return outlet

    def replies(self, outlet: _Outlet) -> None:
        try:
            data = outlet.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self.on_replies(outlet, data)

    def on_replies(self, outlet: _Outlet, data: bytes) -> None:
        if not data:
            self.gone(outlet)
            return
        answers = self.answers
        for frame in outlet.frames.feed(data):
            if isinstance(frame, (CallReply, CallRefused)):
                origin = outlet.calls.pop(frame.ref, None)
                token = outlet.hellos.pop(frame.ref, None) if outlet.hellos else None
                if origin is not None:
                    link, ref = origin
                    answers.setdefault(link, []).append(msgspec.structs.replace(frame, ref=ref))
                    if token is not None:  # a hello's answer
                        if isinstance(frame, CallRefused) or frame.value is None:
                            self.unwatch(outlet, link, token)  # no listener: no route
            elif isinstance(frame, DirectGone):  # that caller went: not told of the exit
                watchers = outlet.watchers
                for link in [k for k, token in watchers.items() if token == frame.token]:
                    self.unwatch(outlet, link, frame.token)

    def unwatch(self, outlet: _Outlet, link: bytes, token: bytes) -> None:
        """``link``'s caller, as ``token``, has no route to ``outlet``'s process (it went, or
        the process opened no listener): it need not be told of that process's exit."""
        if outlet.watchers.get(link) == token:
            del outlet.watchers[link]
            self.watching -= 1

    def gone(self, outlet: _Outlet) -> None:
        outlet.close()
        self.by_fd.pop(outlet.fd, None)
        if self.outlets.get(outlet.pid) is outlet:
            del self.outlets[outlet.pid]
        calls, outlet.calls = list(outlet.calls.values()), {}
        watchers, outlet.watchers = list(outlet.watchers.items()), {}
        outlet.hellos.clear()
        self.watching -= len(watchers)
        if calls or watchers:
            self.loop.call_soon_threadsafe(self.fail_calls, outlet.pid, calls, watchers)

    def flush_answers(self) -> None:
        if not self.answers:
            return
        answers, self.answers = self.answers, {}
        send = self.router.send
        for link, batch in answers.items():
            try:
                send(link, _SNDMORE)
                send(encode_answers(batch), _NOBLOCK)
            except zmq.ZMQError:  # the link is gone (its process exited): nobody awaits them
                self.counters["answers_lost"] += len(batch)


def _bound_host(endpoint: str) -> str:
    """The host part of a bound TCP endpoint (``tcp://10.0.0.5:4370`` -> ``10.0.0.5``)."""
    host = endpoint[6:] if endpoint.startswith("tcp://") else endpoint
    return host.rpartition(":")[0] or "127.0.0.1"


class _Outlet(MailboxWriter):
    """This thread's connection to one mailbox: writes never block the thread (what the
    socket does not take waits, in order, for EPOLLOUT); the replies to calls come back on
    it."""

    def __init__(self, port: DirectPort, pid: Pid) -> None:
        self.port = port
        self.pid = pid
        self.refs = itertools.count(1)
        self.calls: dict[int, Origin] = {}
        self.watchers: dict[bytes, bytes] = {}  # links that asked for its listener: token
        self.hellos: dict[int, bytes] = {}  # hellos not answered yet: ref here -> token
        self.out: list[bytes] = []
        self.backlog = 0  # bytes in ``out`` and ``pending``, known at each send_out
        self.full = False  # dropping what comes for it (backlog_full)
        self.frames = FrameBuffer(_mailbox_decoder, f"mailbox of {pid}")
        assert port.hub is not None
        super().__init__(port.hub, pid)
        self.fd = -1 if self.closed else self.sock.fileno()

    def undeliverable(self) -> None:
        self.port.counters["undeliverable"] += 1

    def buffered(self) -> None:
        self.port.counters["buffered"] += 1

    def watch_writable(self, on: bool) -> None:
        self.port.epoll.modify(self.fd, _IN | _OUT if on else _IN)

    def broken(self, writing: bool) -> None:
        self.port.gone(self)  # its calls in flight fail with the callee's exit reason

    def send_out(self) -> None:
        """Write what this wake-up gathered for the mailbox, in one send."""
        data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
        self.out.clear()
        if not self.closed:  # closed meanwhile: gone() has failed its calls
            self.write(data)
        self.backlog = len(self.pending)

    def flush(self) -> None:
        super().flush()
        self.backlog = len(self.pending)  # ``out`` is empty between wake-ups

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.port.epoll.unregister(self.fd)
            except (OSError, ValueError):
                pass
            self.sock.close()
