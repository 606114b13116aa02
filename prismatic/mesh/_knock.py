"""The knock: a plain TCP connect asking a lost peer's kernel whether its listener is gone.

Role: when a link's connection closes (:mod:`._peer_links`), the loop knocks at the peer's
mesh address; a knock that finds nothing listening there confirms the death at once
(:class:`~._events.LinkRefused`), without waiting for a probe to time out.

Protocol (one non-blocking socket, driven by the loop's callbacks, never blocking it):

* the connect is refused (at once on this host, within a round trip on another): nothing
  listens there, :attr:`KnockResult.REFUSED`;
* the connect succeeds: the connection waits in the listener's accept queue. A live node's
  libzmq accepts it and speaks first (its ZMTP greeting): :attr:`KnockResult.ANSWERED`,
  which proves nothing either way and is closed at once (with a reset: the peer counts it as
  one refused handshake). A dying process closes its listening socket *after* its
  connections (the kernel closes a killed process's descriptors last to first), so a knock
  sent when the first connection closed often finds the listener still there; when it
  closes with our connection still queued, never accepted, the kernel resets that
  connection: :attr:`KnockResult.REFUSED` too, the moment the listener is gone;
* anything else (no answer within the timeout: a stopped or partitioned peer; a connection
  closed without a word; another error): :attr:`KnockResult.UNANSWERED`, nothing concluded.

A reset before any greeting means the listener closed without accepting us. One case
makes a live node do that: a full accept queue on a host with
``net.ipv4.tcp_abort_on_overflow=1`` (not the default), where the node's libzmq has not
accepted 100 connections (its backlog); such a node is not answering its members anyway.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import socket
import struct
from collections.abc import Callable

__all__ = ["Knock", "KnockResult"]

_REFUSED = (errno.ECONNREFUSED, errno.ECONNRESET)


class KnockResult(enum.Enum):
    REFUSED = "refused"  # nothing listens there: refused, or reset while still unaccepted
    ANSWERED = "answered"  # something accepted the connection and spoke: alive, or a stranger
    UNANSWERED = "unanswered"  # no answer in time, closed without a word, or another error


class Knock:
    """One knock at ``host:port``; ``done`` is called exactly once with its result (maybe
    from within :meth:`start`), unless :meth:`cancel` comes first."""

    __slots__ = ("loop", "host", "port", "timeout", "done", "sock", "timer", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, timeout: float,
                 done: Callable[[KnockResult], None]) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.timeout = timeout
        self.done = done
        self.sock: socket.socket | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.waiting = ""  # "", "writer" (connecting) or "reader" (connected, for an answer)

    def start(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                                 socket.SOCK_STREAM)
        except OSError:  # no descriptor left: nothing concluded (the probes decide)
            self.done(KnockResult.UNANSWERED)
            return
        self.sock = sock
        try:
            sock.setblocking(False)
            # Closed with a reset, never a FIN: a live peer's libzmq drops it at once.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            err = sock.connect_ex((self.host, self.port))
        except OSError:  # a name that does not resolve (any more), an address it refuses
            self._finish(KnockResult.UNANSWERED)
            return
        if err in (0, errno.EINPROGRESS):
            self.timer = self.loop.call_later(self.timeout, self._finish, KnockResult.UNANSWERED)
            if err == 0:
                self._wait_for_answer()
            else:
                self.waiting = "writer"
                self.loop.add_writer(sock.fileno(), self._connected)
            return
        self._finish(KnockResult.REFUSED if err in _REFUSED else KnockResult.UNANSWERED)

    def cancel(self) -> None:
        self._close()

    def _connected(self) -> None:
        assert self.sock is not None
        self.loop.remove_writer(self.sock.fileno())
        self.waiting = ""
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            self._wait_for_answer()
        else:
            self._finish(KnockResult.REFUSED if err in _REFUSED else KnockResult.UNANSWERED)

    def _wait_for_answer(self) -> None:
        assert self.sock is not None
        self.waiting = "reader"
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(64)
        except BlockingIOError:
            return  # a spurious wake-up
        except OSError as exc:
            self._finish(KnockResult.REFUSED if exc.errno in _REFUSED
                         else KnockResult.UNANSWERED)
            return
        self._finish(KnockResult.ANSWERED if data else KnockResult.UNANSWERED)

    def _close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if self.waiting == "writer":
            self.loop.remove_writer(sock.fileno())
        elif self.waiting == "reader":
            self.loop.remove_reader(sock.fileno())
        self.waiting = ""
        sock.close()

    def _finish(self, result: KnockResult) -> None:
        if self.sock is None:
            return  # finished or cancelled already
        self._close()
        self.done(result)
