"""A non-blocking connection from the node to the mailbox of one of its processes.

The hub writes its DOWN and EXIT notices through one (:mod:`._hub`), distribution the
messages of other nodes' processes (:mod:`.mesh._remote`, :mod:`.mesh._direct`). It connects
only to the process a Pid names, under the node's uid, as the hub judges it
(:class:`MailboxCheck`); a write never blocks the node's loop.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

from ._address import Pid
from ._nodeinfo import mailbox_address, peer_creds

__all__ = ["MailboxWriter", "MailboxCheck"]


class MailboxCheck(Protocol):
    """What a writer asks of the hub before it writes (see :class:`~._hub.Hub`)."""

    def trusted_mailbox(self, sock: socket.socket, pid: Pid) -> bool:
        """Whether the mailbox at the other end of ``sock`` runs under the node's uid."""
        ...

    def holds(self, pid: Pid, holder: int) -> bool:
        """Whether ``holder``, listening at ``pid``'s mailbox, is the process ``pid`` names."""
        ...


class MailboxWriter:
    """A non-blocking connection from the node to the mailbox of one of its processes.

    Invariants: it is connected only if the address's holder runs under the node's uid and
    is the process ``to`` names (else ``closed`` from the start: the process is gone, or
    its ospid has a new holder); a write never blocks the loop (what the socket does not
    take at once waits in ``pending``, in order, until the socket drains). Subclasses count
    what their callers need in :meth:`undeliverable` and :meth:`buffered`; one driven by
    something other than the node's loop says how it waits for the socket to drain
    (:meth:`watch_writable`, then calls :meth:`flush`) and what a broken connection means
    (:meth:`broken`).
    """

    def __init__(self, hub: MailboxCheck, to: Pid) -> None:
        self.to = to
        self.pending = bytearray()
        self.closed = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(mailbox_address(to.node, to.ospid))
        except OSError:
            self.undeliverable()  # it died (for a notice: the watcher too, nobody to tell)
            self.closed = True
            self.sock.close()
            return
        if not hub.trusted_mailbox(self.sock, to) or not hub.holds(to, peer_creds(self.sock)[0]):
            self.undeliverable()  # another user's address, or its ospid has a new holder
            self.closed = True
            self.sock.close()
            return
        self.sock.setblocking(False)

    def undeliverable(self) -> None:
        """A write that could not be made (no connection, or it broke)."""

    def buffered(self) -> None:
        """A write that had to wait for the socket to drain."""

    def watch_writable(self, on: bool) -> None:
        """Have :meth:`flush` called when the socket can take more (``on``), or no longer."""
        loop = asyncio.get_running_loop()
        if on:
            loop.add_writer(self.sock.fileno(), self.flush)
        else:
            loop.remove_writer(self.sock.fileno())

    def broken(self, writing: bool) -> None:
        """The connection broke, in a :meth:`write` (``writing``) or a :meth:`flush`."""
        if writing:
            self.undeliverable()
        self.close()

    def write(self, data: bytes) -> None:
        if self.closed:
            self.undeliverable()
            return
        if self.pending:
            self.pending += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken(writing=True)
            return
        if sent < len(data):
            self.buffered()
            self.pending += data[sent:]
            self.watch_writable(True)

    def flush(self) -> None:
        try:
            sent = self.sock.send(self.pending)
        except BlockingIOError:
            return
        except OSError:
            self.broken(writing=False)
            return
        del self.pending[:sent]
        if not self.pending:
            self.watch_writable(False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.pending:
                self.watch_writable(False)
            self.sock.close()

