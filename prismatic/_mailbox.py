"""A process's mailbox: the listening socket every sender connects to, and its readers.

The socket is bound at ``\\0prismatic/<node>/<ospid>`` as the process starts, before
``init``: messages sent meanwhile wait in the kernel, as they wait in an Erlang mailbox
before the process first receives. Only peers of the node's own uid are accepted.

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
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ._nodeinfo import mailbox_address, peer_uid
from ._notices import Down, Exit
from .transports._framing import FrameBuffer, encode_frame
from .transports._messages import MailboxFrame

if TYPE_CHECKING:
    import asyncio

__all__ = ["Mailbox", "Inbound"]

log = logging.getLogger(__name__)
_decoder = msgspec.msgpack.Decoder(MailboxFrame)
READ_SIZE = 1 << 16  # below malloc's mmap threshold: a bigger read buffer costs an mmap per read
ACCEPT_RETRY_S = 0.1  # out of descriptors: how long before accept is tried again


class Inbound:
    """One sender's connection; replies to its calls go back on it."""

    __slots__ = ("sock", "frames", "fd", "batch")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.frames = FrameBuffer(_decoder, "mailbox")
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
    def __init__(self, node: str, ospid: int) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(mailbox_address(node, ospid))
        self.listener.listen(4096)
        self.listener.setblocking(False)
        self.conns: dict[int, Inbound] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.on_frame: Callable[[Inbound, Any], None] = lambda conn, frame: None
        self.paused = False
        self.bad_frames = 0
        self.refused = 0
        self.accept_errors = 0
        self.starved = False  # out of descriptors to accept with (EMFILE/ENFILE)
        self.accept_waiting = False  # the listener is unwatched until a retry

    def attach(self, loop: asyncio.AbstractEventLoop,
               on_frame: Callable[[Inbound, Any], None]) -> None:
        self.loop = loop
        self.on_frame = on_frame
        loop.add_reader(self.listener.fileno(), self.accept)
        self.accept()

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.accept_errors += 1
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self.wait_for_descriptors(exc)
                else:  # the sender gave up before we took it (ECONNABORTED...): next one
                    log.warning("mailbox: a connection failed before it was accepted: %s", exc)
                return
            if self.starved:
                self.starved = False
                log.warning("mailbox: accepting senders again (%d attempts failed)",
                            self.accept_errors)
            if peer_uid(sock) != os.getuid():
                self.refused += 1
                log.warning("mailbox: refused a connection from another user")
                sock.close()
                continue
            sock.setblocking(False)
            conn = Inbound(sock)
            self.conns[conn.fd] = conn
            if not self.paused and self.loop is not None:
                self.loop.add_reader(conn.fd, self.read, conn)

    def wait_for_descriptors(self, exc: OSError) -> None:
        """Out of descriptors: the waiting sender keeps the listener readable, so watching
        it would spin. Look again in ``ACCEPT_RETRY_S``; one log line per shortage."""
        if not self.starved:
            self.starved = True
            log.error("mailbox: cannot accept a sender: %s (trying again every %.1f s)",
                      exc, ACCEPT_RETRY_S)
        if self.loop is not None and not self.accept_waiting:
            self.accept_waiting = True
            self.loop.remove_reader(self.listener.fileno())
            self.loop.call_later(ACCEPT_RETRY_S, self.accept_again)

    def accept_again(self) -> None:
        self.accept_waiting = False
        if self.loop is not None and self.listener.fileno() >= 0:
            self.loop.add_reader(self.listener.fileno(), self.accept)
            self.accept()

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
                if isinstance(frame, (Down, Exit)):
                    self.drain_except(conn)
                self.on_frame(conn, frame)
        finally:
            if batching:
                batch, conn.batch = conn.batch, None
                if batch:
                    conn.write(batch)

    def drain_except(self, skip: Inbound) -> None:
        for conn in list(self.conns.values()):
            while conn is not skip and conn.fd in self.conns:
                frames = self.receive(conn)
                if frames is None:
                    break
                for frame in frames:
                    self.on_frame(conn, frame)

    def close_conn(self, conn: Inbound) -> None:
        if self.conns.pop(conn.fd, None) is not None:
            if self.loop is not None and not self.paused:
                self.loop.remove_reader(conn.fd)
            conn.sock.close()

    def pause(self) -> None:
        """Stop reading: the owner's queue is at its high-water mark."""
        if not self.paused and self.loop is not None:
            self.paused = True
            for fd in self.conns:
                self.loop.remove_reader(fd)

    def resume(self) -> None:
        if self.paused and self.loop is not None:
            self.paused = False
            for conn in list(self.conns.values()):
                self.loop.add_reader(conn.fd, self.read, conn)

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
        if self.loop is not None and not self.accept_waiting:
            self.loop.remove_reader(self.listener.fileno())
        for conn in list(self.conns.values()):
            self.close_conn(conn)
        self.listener.close()
