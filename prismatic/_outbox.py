"""Sending to processes: ``call``, ``cast`` and ``send`` over direct mailbox connections.

Topology (chosen by measurement, see ``docs/messaging.md``): each sender keeps one
``AF_UNIX`` stream connection per destination process, straight to the destination's
mailbox socket; no hub or broker sits on the path. One connection per pair is what makes
messages between two processes arrive in send order.

A call blocks the calling process until the reply, the timeout, or the callee's death, as
``gen_server:call`` does: messages to the caller wait in its mailbox meanwhile. Replies come
back on the connection the call went out on; a reply whose ``ref`` is not the one awaited is
late (its call timed out) and is dropped. When the callee dies mid-call, the exit reason is
asked of the hub, which learns it from the callee's supervisor.

Sockets are blocking with timeouts: the kernel's socket buffer plus the receiver's bounded
mailbox are the high-water mark. A send that cannot complete within its timeout raises
:class:`MailboxFull`; the connection is then closed, because part of a frame may be out.

Messages are msgpack data (dict, list, str, int, float, bool, bytes, None; tuples arrive as
lists, Structs as dicts). Undeliverable casts and sends become dead letters reported to the
hub, and the call returns False.

A destination on another node (a Pid whose ``node`` is not ours, or ``(name, node)``) is
reached on this process's direct link to that node (:mod:`._direct_link`, located through
this node's relay once; pyzmq is imported then, never before): one link per node, so
messages leave in send order. A cast or send returns True once the link (or, for a node
that is not reachable, this node's relay, :mod:`prismatic.mesh._remote`) has it; if it
turns out undeliverable, the node that finds out records the dead letter. A call's reply,
refusal (``NoProcError``) or failure (``ProcessDown``, with the callee's exit reason, or
``NoConnection()`` when its node became unreachable: the relay says so) comes back on the
link it went out on.

Its parts: one connection to a mailbox (its kernel-side timeouts, the check of who holds
the address, the busy poll for a reply, the sorting of answers among the calls in flight)
is :class:`~._mailbox_peer.Peer`; the relay and the direct links to other nodes are
:class:`~._remote_routes.RemoteRoutes`, a base of :class:`Outbox`. This module keeps
addressing, sending, and the matching of calls to their replies.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from ._address import Global, Pid
from ._errors import CallTimeout, MailboxFull, NodeError, NoProcError, ProcessDown
from ._exit import ExitReason, NoConnection, NoProc
from ._hubclient import HubClient
from ._latency import LatencyHistogram
from ._mailbox_peer import SPIN_S, Peer, sort_answers, spin_recv
from ._remote_routes import RemoteRoutes
from .transports._framing import encode_frame
from .transports._messages import (
    CallFrame, CallRefused, CallReply, CastFrame, DeadLetterNote, ExitOfReq,
    GlobalWhereisReq, InfoFrame, WhereisReq,
)
from .transports._remote_frames import CallFailed, Located

if TYPE_CHECKING:
    from ._direct_link import DirectLink

__all__ = ["Outbox", "Dest", "RequestId"]

log = logging.getLogger(__name__)

Dest = Pid | str | Global | tuple[str, str]  # a Pid, a name on this node, (name, node)
EXIT_REASON_WAIT_S = 1.0  # how long a failed call waits for the tree to report the exit
# A process waiting for an answer on a direct link reads its relay's notices this often: a
# call in flight to a node declared lost fails within this of the notice.
RELAY_WAIT_S = 0.05


class RequestId(msgspec.Struct, frozen=True):
    """A call in flight, from :meth:`Outbox.send_request`."""

    dest: Pid | str | Global | tuple[str, str]
    pid: Pid  # for a remote name: Pid(node, 0)
    ref: int


class Outbox(RemoteRoutes):
    """All outgoing connections of one process. Not thread-safe (one per process/client)."""

    def __init__(self, node: str, me: Pid | None, hub: HubClient) -> None:
        self.node = node
        self.me = me
        self.hub = hub
        self.peers: dict[Pid, Peer] = {}
        self.relay: Peer | None = None  # to this node's relay, for remote destinations
        self.links: dict[str, DirectLink] = {}  # direct links, by node (._direct_link)
        self.located: dict[str, Located] = {}  # the relay's answers to locate
        self.via: dict[int, DirectLink] = {}  # remote calls in flight on a direct link
        self.linked = False  # this process made a direct link (it flushes them at exit)
        self.pairs = {}  # processes of other nodes it sent to (._remote_routes.Pair)
        self.by_token = {}
        self.relay_read_at = 0.0
        self.names: dict[str, Pid] = {}
        self.refs = itertools.count(1)
        self.dead_letters = 0
        self.sent = 0
        self.latency = LatencyHistogram()

    # ---- addressing -------------------------------------------------------------------------

    def remote(self, dest: Any) -> tuple[str, Pid | str] | None:
        """``(node, pid or name)`` for a destination on another node, else None."""
        if isinstance(dest, (list, tuple)) and len(dest) >= 2 and isinstance(dest[0], str):
            if isinstance(dest[1], str) and len(dest) == 2:
                return (dest[1], dest[0]) if dest[1] != self.node else None
            if isinstance(dest[1], int):
                dest = Pid(*dest)  # a Pid that travelled inside a message
        if isinstance(dest, Pid):
            return (dest.node, dest) if dest.node != self.node else None
        return None

    def route(self, dest: Dest) -> tuple[tuple[str, Pid | str] | None, Pid | None]:
        """Where one send goes: :meth:`remote`'s answer, and for a ``Global(name)`` its
        holder, looked up once for the whole send (it may move nodes between sends): held
        on another node, the send goes there as to its Pid; held here, to that Pid."""
        if isinstance(dest, Global):
            pid = self.whereis_global(dest.name)
            return ((pid.node, pid) if pid is not None and pid.node != self.node else None,
                    pid)
        return self.remote(dest), None

    def resolve(self, dest: Dest, fresh: bool = False) -> Pid | None:
        if isinstance(dest, Pid):
            return dest
        if isinstance(dest, Global):
            return self.whereis_global(dest.name)  # never cached: it may move nodes
        if not isinstance(dest, str):
            if isinstance(dest, (list, tuple)) and len(dest) == 2 and isinstance(dest[1], str):
                if dest[1] != self.node:
                    raise TypeError(f"{dest!r} is a name on another node: use its Pid here")
                return self.resolve(dest[0], fresh)  # (name, this node)
            if isinstance(dest, (list, tuple)) and 2 <= len(dest) <= 4:
                return Pid(*dest)  # a Pid that travelled inside a message
            raise TypeError(f"dest must be a Pid or a registered name, not {dest!r}")
        if not fresh and dest in self.names:
            return self.names[dest]
        reply = self.hub.request(lambda ref: WhereisReq(ref, dest))
        pid = msgspec.convert(reply.value, Pid | None)
        if pid is None:
            self.names.pop(dest, None)
        else:
            self.names[dest] = pid
        return pid

    def whereis(self, name: str) -> Pid | None:
        return self.resolve(name, fresh=True)

    def whereis_global(self, name: str) -> Pid | None:
        reply = self.hub.request(lambda ref: GlobalWhereisReq(ref, name))
        return msgspec.convert(reply.value, Pid | None) if reply.error is None else None

    def peer(self, pid: Pid) -> Peer:
        peer = self.peers.get(pid)
        if peer is None:
            peer = self.peers[pid] = Peer(pid)  # OSError: no such process
        return peer

    def drop(self, pid: Pid) -> None:
        peer = self.peers.pop(pid, None)
        if peer is not None:
            peer.sock.close()
        for name, held in list(self.names.items()):
            if held == pid:
                del self.names[name]

    # ---- sending --------------------------------------------------------------------------------

    def _send(self, peer: Peer, data: bytes, timeout: float, dest: Dest) -> None:
        peer.set_timeouts(timeout)
        self.sent += 1
        try:
            peer.sock.sendall(data)
        except BlockingIOError:  # SO_SNDTIMEO expired
            self.drop(peer.pid)
            raise MailboxFull(dest, f"mailbox stayed full for {timeout:.3g}s") from None

    def _post(self, dest: Dest, data: bytes, timeout: float, fresh: bool = False,
              held: Pid | None = None) -> Pid | str:
        """Hand ``data`` to the mailbox of ``dest``: the Pid it went to, or why it could not
        (``noproc``, ``not_registered``). A name whose cached pid is gone is resolved afresh
        once. ``held``: a ``Global`` destination's holder as :meth:`route` found it, taken
        for the first attempt. Raises :class:`MailboxFull` if the mailbox stayed full for
        ``timeout``."""
        for attempt in (0, 1):
            if attempt == 0 and isinstance(dest, Global):
                pid = held
            else:
                pid = self.resolve(dest, fresh=fresh or attempt == 1)
            if pid is None:
                return "not_registered"
            try:
                self._send(self.peer(pid), data, timeout, dest)
                return pid
            except OSError:
                self.drop(pid)  # no such process, or a cached connection to one that died
                if isinstance(dest, Pid):
                    break
        return "noproc"

    def deliver(self, dest: Dest, frame: Any, kind: str, timeout: float) -> bool:
        """Cast or send: True once handed to the destination's mailbox (or, for a remote
        destination, to this node's relay), False if it became a dead letter."""
        remote, held = self.route(dest)
        if remote is not None:
            if self.forward(remote[0], remote[1], frame, timeout, dest) is not None:
                return True
            return self._dead_letter(dest, "noconnection", kind, len(encode_frame(frame)))
        data = encode_frame(frame)
        try:
            where = self._post(dest, data, timeout, held=held)
        except MailboxFull:
            self._dead_letter(dest, "mailbox_full", kind, len(data))
            raise
        if isinstance(where, str):
            return self._dead_letter(dest, where, kind, len(data))
        return True

    def cast(self, dest: Dest, msg: Any, timeout: float = 5.0) -> bool:
        return self.deliver(dest, CastFrame(msg), "cast", timeout)

    def send(self, dest: Dest, msg: Any, timeout: float = 5.0) -> bool:
        return self.deliver(dest, InfoFrame(msg), "info", timeout)

    def call(self, dest: Dest, msg: Any, timeout: float = 5.0) -> Any:
        started = time.monotonic()
        deadline = started + timeout
        for attempt in (0, 1):
            req = self.send_request(dest, msg, timeout, fresh=attempt == 1)
            result = self._collect(req, timeout, deadline)
            if isinstance(result, CallReply):
                self.latency.observe(time.monotonic() - started)
            if not isinstance(result, CallRefused):
                return self._outcome(req, result, deadline)
            if req.pid.node != self.node:
                self._refused(req, result)  # the remote node resolved the name itself
            timeout = max(deadline - time.monotonic(), 0.0001)
            # the name moved to another process since we cached it: resolve it afresh once
        raise NoProcError(dest)

    def send_request(self, dest: Dest, msg: Any, timeout: float = 5.0,
                     fresh: bool = False) -> RequestId:
        """OTP's ``gen_server:send_request``: send a call without waiting; collect the reply
        with :meth:`receive_response`. Many may be in flight to one process."""
        ref = next(self.refs)
        remote, held = self.route(dest)
        if remote is not None:
            node, to = remote
            frame = CallFrame(ref, msg, self.me, None)
            via = self.forward(node, to, frame, timeout, dest)
            if via is None:
                raise ProcessDown(dest, NoConnection())
            via.waiting.add(ref)
            if via is not self.relay:
                self.via[ref] = via  # type: ignore[assignment]
            return RequestId(dest, to if isinstance(to, Pid) else Pid(node, 0), ref)
        name = dest if isinstance(dest, str) else None
        where = self._post(dest, encode_frame(CallFrame(ref, msg, self.me, name)), timeout,
                           fresh, held)
        if isinstance(where, str):
            raise NoProcError(dest)
        self.peers[where].waiting.add(ref)
        return RequestId(dest, where, ref)

    def receive_response(self, req: RequestId, timeout: float = 5.0) -> Any:
        """OTP's ``gen_server:receive_response``: the reply to ``req``, raising as
        :meth:`call` does. After a timeout the request is abandoned (its reply dropped)."""
        deadline = time.monotonic() + timeout
        result = self._collect(req, timeout, deadline)
        if isinstance(result, CallRefused):
            self._refused(req, result)
        return self._outcome(req, result, deadline)

    @staticmethod
    def _refused(req: RequestId, refused: CallRefused) -> NoReturn:
        if refused.reason == "mailbox_full":  # another node held too much for its mailbox
            raise MailboxFull(req.dest, "its mailbox takes nothing and its node's backlog "
                                        "for it is full")
        raise NoProcError(req.dest)

    def _outcome(self, req: RequestId, result: CallReply | CallFailed | None,
                 deadline: float) -> Any:
        if isinstance(result, CallReply):
            return result.value
        if isinstance(result, CallFailed):
            raise ProcessDown(req.dest, result.reason)
        if req.pid.node != self.node:
            self.drop_relay()  # the relay connection broke: the node is stopping
            raise ProcessDown(req.dest, NoConnection())
        self.drop(req.pid)
        raise ProcessDown(req.dest, self.exit_reason(req.pid, deadline))

    def _collect(self, req: RequestId, timeout: float,
                 deadline: float) -> CallReply | CallRefused | CallFailed | None:
        """The reply to ``req``; None if the callee's connection broke first. Replies to
        other requests in flight are kept for them; replies nobody awaits are late: dropped."""
        ref = req.ref
        if req.pid.node != self.node:
            link = self.via.pop(ref, None)
            if link is not None:
                return self._collect_direct(link, req, deadline)
        peer = self.relay if req.pid.node != self.node else self.peers.get(req.pid)
        if peer is None:
            return None
        found = peer.replies.pop(ref, None)
        if found is not None:
            peer.waiting.discard(ref)
            return found
        peer.set_timeouts(timeout, snd=False)  # the same value call after call: no syscall
        sock = peer.sock
        spin = SPIN_S
        while True:
            try:
                data = spin_recv(sock, spin) if spin else sock.recv(1 << 16)
            except BlockingIOError:  # SO_RCVTIMEO expired
                peer.waiting.discard(ref)
                raise CallTimeout(req.dest, "no reply in time") from None
            except OSError:
                data = b""
            if not data:
                peer.waiting.discard(ref)
                return None
            frames: Iterable[Any] = peer.frames.feed(data)
            if peer is self.relay:  # lazily: each frame handled in turn, as it is sorted
                frames = (self.on_relay_frame(frame) for frame in frames)
            found = sort_answers(frames, ref, peer.waiting, peer.replies)
            if found is not None:
                peer.waiting.discard(ref)
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                peer.waiting.discard(ref)
                raise CallTimeout(req.dest, "no reply in time")
            peer.set_timeouts(left, snd=False)
            spin = 0.0

    def _collect_direct(self, link: DirectLink, req: RequestId,
                        deadline: float) -> CallReply | CallRefused | CallFailed:
        """The answer to ``req``, sent on ``link``: read from the link, or a failure when
        the relay says its node is lost meanwhile (read between waits of RELAY_WAIT_S)."""
        ref = req.ref
        while True:
            found = link.replies.pop(ref, None)
            if found is not None:
                link.waiting.discard(ref)
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                link.waiting.discard(ref)
                raise CallTimeout(req.dest, "no reply in time")
            # No busy poll first, as a local call does: spinning on a ZeroMQ socket
            # measured twice the round trip (it competes with the I/O thread).
            answers = link.receive(min(left, RELAY_WAIT_S)) if not link.lost else None
            if answers is None:
                self.poll_relay()  # a lost node fails the link's calls
                if link.token is not None:
                    self.read_link(link.node)  # its callee's exit fails the route's calls
                continue
            found = sort_answers(answers, ref, link.waiting, link.replies)
            if found is not None:
                link.waiting.discard(ref)
                return found

    def exit_reason(self, pid: Pid, deadline: float) -> ExitReason:
        wait = min(EXIT_REASON_WAIT_S, max(deadline - time.monotonic(), 0.05))
        try:
            reply = self.hub.request(lambda ref: ExitOfReq(ref, pid, wait), wait + 1.0)
        except NodeError as exc:  # the call failed either way; say why the reason is missing
            log.warning("exit reason of %s unknown: %s", pid, exc)
            return NoProc()
        return msgspec.convert(reply.value, ExitReason | None) or NoProc()

    def _dead_letter(self, dest: Dest, reason: str, kind: str, size: int) -> bool:
        self.dead_letters += 1
        self.hub.note(DeadLetterNote(str(dest), reason, kind, self.me, size))
        return False

    def close(self) -> None:
        for pid in list(self.peers):
            self.drop(pid)
        for link in self.links.values():
            link.close()  # what it holds leaves within its linger
        self.links.clear()
        for pair in self.pairs.values():
            if pair.route is not None:
                pair.route.close()
        self.pairs.clear()
        self.by_token.clear()
        self.drop_relay()
