"""A process's mailbox: the listening socket every sender connects to, and its readers.

The socket is bound at ``\\0prismatic/<node>/<ospid>`` as the process starts, before
``init``: messages sent meanwhile wait in the kernel, as they wait in an Erlang mailbox
before the process first receives. Only peers of the node's own uid are accepted
(``SO_PEERCRED``), within the caps of :mod:`._local_limits` (connections in all and per
process, a descriptor reserve, frame size, bytes of unfinished frames); ``Down`` and
``Exit`` notices are taken only from the node's own process (the hub), so no other process
can forge a DOWN or kill a process with a forged EXIT. Every refusal and drop is counted
(``refused``, ``bad_frames``) and logged, throttled.

Reading is loop-driven (:meth:`Mailbox.attach`), one reader per sender connection. Each
decoded frame goes to ``on_frame(conn, frame)``; the owner queues it. Backpressure is the
high-water mark: when the owner's queue is full it calls :meth:`pause`, the readers stop,
the kernel buffers fill, and senders block until their timeout (:class:`MailboxFull`).

Ordering: frames of one connection are handled in order. A ``Down``/``Exit`` notice comes
from the hub on its own connection, so before handing one on, every other connection is
drained: whatever the dead process sent before dying is queued before its DOWN (OTP's
signal ordering between a pair of processes).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import NodeError
from ._local_limits import Admissions, LocalLimits, mailbox_limits, tree_mailbox_limits
from ._nodeinfo import describe_holder, mailbox_address, node_pid, peer_creds
from ._notices import Down, Exit, GlobalNameConflict
from ._throttle import ThrottledWarning
from .transports._framing import ByteBudget, FrameBuffer, encode_frame
from .transports._messages import MailboxFrame

if TYPE_CHECKING:
    import asyncio

    from ._reactor import Reactor

__all__ = ["Mailbox", "Inbound"]

log = logging.getLogger(__name__)
_decoder = msgspec.msgpack.Decoder(MailboxFrame)
_NOTICES = (Down, Exit, GlobalNameConflict)  # only the node's hub may send these
READ_SIZE = 1 << 16  # below malloc's mmap threshold: a bigger read buffer costs an mmap per read
ACCEPT_BACKOFF_S = 0.1  # out of descriptors: stop accepting this long (the listener stays ready)


class Inbound:
    """One sender's connection; replies to its calls go back on it."""

    __slots__ = ("sock", "frames", "fd", "batch", "peer_pid")

    def __init__(self, sock: socket.socket, peer_pid: int, frames: FrameBuffer) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer_pid = peer_pid
        self.frames = frames
        self.batch: bytearray | None = None  # replies held while one read is handled

    def reply(self, frame: Any) -> None:
        """Send a reply (or add it to the batch of the read being handled: one write for
        every call that arrived in one read, when a caller pipelines)."""
        data = encode_frame(frame)
        if self.batch is not None:
            self.batch += data
        else:
            self.write(data)

    def write(self, data: bytes | bytearray) -> None:
        """A caller that is gone (it timed out and died) just misses its reply."""
        try:
            sent = self.sock.send(data)
            if sent < len(data):  # the caller stopped reading: give it the rest, briefly
                self.sock.settimeout(1.0)
                self.sock.sendall(data[sent:])
                self.sock.setblocking(False)
        except OSError:
            pass


class Mailbox:
    """``hub_pid``: the only process whose ``Down``/``Exit`` notices are taken (default: this
    process's node; None takes them from any peer of the uid)."""

    def __init__(self, node: str, ospid: int, limits: LocalLimits | None = None,
                 hub_pid: int | None = -1) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.listener.bind(mailbox_address(node, ospid))
        except OSError as exc:
            self.listener.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            raise NodeError(f"the mailbox address of pid {ospid} on node {node!r} is held by "
                            f"{describe_holder(mailbox_address(node, ospid))}") from None
        self.listener.listen(4096)
        self.listener.setblocking(False)
        if limits is None:
            try:
                limits = tree_mailbox_limits()
            except NodeError as exc:  # the node refuses to start on it; defaults all the same
                log.error("mailbox: %s; using the default caps", exc)
                limits = mailbox_limits({})
        self.limits = limits
        self.admissions = Admissions(limits)
        self.budget = ByteBudget(limits.max_buffered_bytes)
        self.hub_pid = node_pid() if hub_pid == -1 else hub_pid
        self.conns: dict[int, Inbound] = {}
        self.loop: asyncio.AbstractEventLoop | Reactor | None = None
        self.on_frame: Callable[[Inbound, Any], None] = lambda conn, frame: None
        self.paused = False
        self.bad_frames = 0
        self.refused = 0
        self.refusals: dict[str, ThrottledWarning] = {}  # a throttle per kind of refusal
        self.frame_warning = ThrottledWarning(log)  # and one for every dropped frame
        self.accepting = False
        # Another reader of this process's messages that pauses, resumes and drains with
        # this one (its direct listener, ._direct_listener), once it has one.
        self.extra: Any = None

    def attach(self, loop: asyncio.AbstractEventLoop | Reactor,
               on_frame: Callable[[Inbound, Any], None]) -> None:
        self.loop = loop
        self.on_frame = on_frame
        self.start_accepting()
        self.accept()

    def start_accepting(self) -> None:
        if self.loop is not None and not self.accepting and self.listener.fileno() >= 0:
            self.accepting = True
            self.loop.add_reader(self.listener.fileno(), self.accept)

    def refuse(self, kind: str, msg: str, *args: object) -> None:
        self.refused += 1
        self.warn(kind, msg, *args)

    def warn(self, kind: str, msg: str, *args: object) -> None:
        warning = self.refusals.get(kind)
        if warning is None:
            warning = self.refusals[kind] = ThrottledWarning(log)
        warning.warn("mailbox: " + msg, *args)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE) and self.loop is not None:
                    # The listener stays readable: without a pause this would spin.
                    self.refuse("descriptors", "cannot accept a sender: %s; pausing accepts "
                                "for %.1fs", exc, ACCEPT_BACKOFF_S)
                    self.loop.remove_reader(self.listener.fileno())
                    self.accepting = False
                    self.loop.call_later(ACCEPT_BACKOFF_S, self.start_accepting)
                return
            pid, uid = peer_creds(sock)
            refused = self.admissions.admit_peer(pid, uid, sock.fileno())
            if refused is not None:
                self.refuse(refused[0], "refused a connection from pid %d: %s", pid, refused[1])
                sock.close()
                continue
            sock.setblocking(False)
            conn = Inbound(sock, pid, FrameBuffer(_decoder, "mailbox",
                                                  self.limits.max_frame_bytes, self.budget,
                                                  self.frame_warning))
            self.conns[conn.fd] = conn
            if not self.paused and self.loop is not None:
                self.loop.add_reader(conn.fd, self.read, conn)

    def receive(self, conn: Inbound) -> list[Any] | None:
        """The frames one read brings (counting bad ones); None if nothing was waiting.
        Closes the connection on EOF or broken framing."""
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self.close_conn(conn)
            return []
        bad = conn.frames.bad_frames
        frames = conn.frames.feed(data)
        self.bad_frames += conn.frames.bad_frames - bad
        if conn.frames.broken:
            self.close_conn(conn)
        return frames

    def read(self, conn: Inbound) -> None:
        frames = self.receive(conn)
        if not frames:
            return
        batching = len(frames) > 1  # one call per read needs no batch, and is the hot path
        if batching:
            conn.batch = bytearray()
        try:
            for frame in frames:
                if isinstance(frame, _NOTICES):
                    if self.forged(conn, frame):
                        continue
                    self.drain_except(conn)
                self.on_frame(conn, frame)
        finally:
            if batching:
                batch, conn.batch = conn.batch, None
                if batch:
                    conn.write(batch)

    def drain_except(self, skip: Inbound) -> None:
        if self.extra is not None:
            self.extra.drain()
        for conn in list(self.conns.values()):
            while conn is not skip and conn.fd in self.conns:
                frames = self.receive(conn)
                if frames is None:
                    break
                for frame in frames:
                    if not (isinstance(frame, _NOTICES) and self.forged(conn, frame)):
                        self.on_frame(conn, frame)

    def forged(self, conn: Inbound, notice: Down | Exit | GlobalNameConflict) -> bool:
        """A DOWN, EXIT or lost global name that did not come from the node's hub: dropped,
        counted, logged."""
        if self.hub_pid is None or conn.peer_pid == self.hub_pid:
            return False
        self.bad_frames += 1
        self.warn("forged", "dropped a %s notice from pid %d (only the node, pid %d, sends "
                  "them)", type(notice).__name__, conn.peer_pid, self.hub_pid)
        return True

    def close_conn(self, conn: Inbound) -> None:
        if self.conns.pop(conn.fd, None) is not None:
            if self.loop is not None and not self.paused:
                self.loop.remove_reader(conn.fd)
            conn.sock.close()
            conn.frames.release()
            self.admissions.release(conn.peer_pid)

    def pause(self) -> None:
        """Stop reading: the owner's queue is at its high-water mark."""
        if not self.paused and self.loop is not None:
            self.paused = True
            for fd in self.conns:
                self.loop.remove_reader(fd)
            if self.extra is not None:
                self.extra.pause()

    def resume(self) -> None:
        if self.paused and self.loop is not None:
            self.paused = False
            for conn in list(self.conns.values()):
                self.loop.add_reader(conn.fd, self.read, conn)
            if self.extra is not None:
                self.extra.resume()

    def close_in_fork(self) -> None:
        """In a process forked from the owner (a worker's own ``os.fork``): drop the owner's
        listening socket and sender connections. A forked child holding them would keep the
        address alive after the owner died: senders would connect, a cast be lost without a
        dead letter and a call wait for its timeout. Only descriptors are closed: the loop's
        epoll set is shared with the owner, whose registrations must stay."""
        self.listener.close()
        for conn in self.conns.values():
            conn.sock.close()
        self.conns.clear()

    def close(self) -> None:
        if self.loop is not None and self.accepting:
            self.accepting = False
            self.loop.remove_reader(self.listener.fileno())
        for conn in list(self.conns.values()):
            self.close_conn(conn)
        self.listener.close()
