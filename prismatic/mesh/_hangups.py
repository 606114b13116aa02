"""Hang-ups of the links' connections, heard by the mesh loop itself.

Role: the fastest sign that a peer's process died is its kernel closing the connection of
our link to it. libzmq reports that on the link's socket monitor (``DISCONNECTED``), but
only after its I/O thread was scheduled, read the end of stream and passed the event on; on
a busy host each of those wake-ups can wait milliseconds for a CPU. So the loop also holds
a copy of each link's connected descriptor (``CONNECTED`` names it) in one epoll set of
its own, registered for ``EPOLLRDHUP`` only (a hang-up or reset, never data), and reads
that set's descriptor among its others: the peer's close wakes the loop directly.

A hang-up is only the trigger the monitor's ``DISCONNECTED`` was: it starts the knock that
may confirm a death (:mod:`._knock`), never a verdict. A copy that turns out to be another
connection (libzmq closed the reported descriptor and the number was reused before we
copied it; we check the peer's port) wakes the loop for that one instead, which is
harmless: the knock finds the live listener and concludes nothing.

Each copy keeps the connection open after libzmq closes its own descriptor, so it is
closed when the hang-up is read, when the monitor reports the disconnect, and with the
link (:meth:`HangupWatch.unwatch`). Copies are never read from or written to, and never
change the descriptor's flags (which the copy shares with libzmq's).
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["HangupWatch"]

K = TypeVar("K", bound=Hashable)


class HangupWatch(Generic[K]):
    """Copies of connected descriptors, one per key, in an epoll set readable on a hang-up.

    Invariant: ``copies`` and ``keys`` index the same copies; each copy is registered in
    the epoll set while in them and closed as it leaves them."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.copies: dict[K, socket.socket] = {}
        self.keys: dict[int, K] = {}  # the copy's descriptor -> its key

    def fileno(self) -> int:
        """Readable when a watched connection hung up (add it to the loop's readers)."""
        return self.epoll.fileno()

    def watch(self, key: K, fd: int, port: int) -> bool:
        """Watch libzmq's descriptor ``fd`` as ``key``'s connection (replacing the one it
        had), if it is a TCP connection to ``port``; False if it is not (any more)."""
        self.unwatch(key)
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            return False  # closed already (a connection that ended at once)
        try:
            ok = sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == port
        except (OSError, IndexError):
            ok = False  # not connected (any more), or not an INET socket
        if not ok:
            sock.close()
            return False
        self.epoll.register(sock.fileno(), select.EPOLLRDHUP)  # HUP and ERR come anyway
        self.copies[key] = sock
        self.keys[sock.fileno()] = key
        return True

    def unwatch(self, key: K) -> None:
        sock = self.copies.pop(key, None)
        if sock is not None:
            del self.keys[sock.fileno()]
            self.epoll.unregister(sock.fileno())
            sock.close()

    def hung_up(self) -> list[K]:
        """The keys whose connection hung up since the last call (no longer watched)."""
        gone = [self.keys[fd] for fd, _ in self.epoll.poll(0) if fd in self.keys]
        for key in gone:
            self.unwatch(key)
        return gone

    def close(self) -> None:
        for key in list(self.copies):
            self.unwatch(key)
        self.epoll.close()
