"""A dormant supervisor's side of the node's shared spare (:mod:`._lender`): the wire messages,
and the supervisor's link to the lender.

Protocol, on an ``AF_UNIX`` ``SOCK_SEQPACKET`` connection per supervisor to the lender's
abstract address (:func:`lender_address`; both ends check the other runs under their uid), one
msgpack message per packet:

* supervisor -> lender: :class:`Lend` (which child the spare is to become, by its path in the
  node's tree);
* lender -> supervisor: :class:`Lent` with one descriptor (``SCM_RIGHTS``): the supervisor's
  end of the channel to the spare, which the supervisor tells what to become (``BecomeAt``)
  once it has decided to restart, or closes if it decided otherwise (the spare exits at the
  EOF); or :class:`NotLent`, and the supervisor forks the child itself;
* lender -> supervisor: :class:`LentExit` when a process it lent has died and been reaped
  (the lender is its parent: only it can read the wait status).

Invariants: the lender answers each :class:`Lend` before anything else on that connection, and
sends one :class:`LentExit` per lent process that died while the connection was open, after
killing the dead process's group. When the connection closes (the supervisor died), the
lender kills every process it lent over it: a lent child dies with its supervisor, as every
child does.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import msgspec

from .._nodeinfo import peer_creds
from ..transports._channel import Channel

__all__ = ["Lend", "Lent", "NotLent", "LentExit", "LenderMessage", "LenderLink",
           "lender_address", "LEND_TIMEOUT_S"]

log = logging.getLogger(__name__)

# The lender answers in well under a millisecond; one that takes this long is stopped or hung,
# and the start forks its child instead (as it would without a lender).
LEND_TIMEOUT_S = 0.05
# How long a supervisor waits for the wait status of a lent child that it saw die: the lender
# reaps it at once, so this is reached only if the lender is gone or hung.
EXIT_TIMEOUT_S = 1.0
_MAX_PACKET = 1 << 16


class Lend(msgspec.Struct, frozen=True, tag="lend"):
    path: tuple[str, ...]  # the supervisor's path in the node's tree
    key: str  # the child's key (its id, or a dynamic child's own key)
    spec_id: str  # the spec (or template) it starts from
    args: tuple[Any, ...] = ()  # a dynamic child's args


class Lent(msgspec.Struct, frozen=True, tag="lent"):
    pid: int  # comes with the supervisor's end of the channel to it


class NotLent(msgspec.Struct, frozen=True, tag="not_lent"):
    why: str


class LentExit(msgspec.Struct, frozen=True, tag="lent_exit"):
    pid: int
    status: int  # as os.waitpid gives it


LenderMessage = Lend | Lent | NotLent | LentExit
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(LenderMessage)


def lender_address(node: str) -> bytes:
    return f"\0prismatic/{node}/lender".encode()


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> Any:
    """One message; raises ``msgspec.DecodeError``/``ValueError`` if malformed."""
    return _decoder.decode(data)


class LenderLink:
    """A supervisor's connection to the lender, opened at its first use and again after it
    broke. Every call blocks for at most its timeout; none raises."""

    def __init__(self, node: str, name: str) -> None:
        self.node = node
        self.name = name  # the supervisor's, for log lines
        self.sock: socket.socket | None = None
        self.exits: dict[int, int] = {}  # LentExit read while waiting for something else
        self.reserved = False  # a Lend sent, its answer not read yet
        self.released: set[int] = set()  # spares reserved and let go: their exits are not ours

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(lender_address(self.node))
            if peer_creds(sock)[1] != os.geteuid():
                raise OSError("the lender's address is held by another user's process")
        except OSError as exc:
            sock.close()
            log.debug("supervisor %s: no lender: %s", self.name, exc)
            return None
        self.sock = sock
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.reserved = False
        self.released.clear()

    def reserve(self, path: tuple[str, ...], key: str, spec_id: str,
                args: tuple[Any, ...]) -> bool:
        """Ask for a spare for child ``key`` without waiting: :meth:`take` reads the answer.
        Sent as soon as a child is seen dead, so the lender's turn runs while this process
        reaps it and decides (on another CPU). False if it could not be asked."""
        if self.reserved:
            return True
        sock = self.sock or self._connect()
        if sock is None:
            return False
        try:
            sock.send(encode(Lend(path, key, spec_id, args)))
        except (TypeError, msgspec.EncodeError):
            return False  # args that do not encode: the start forks its child
        except OSError:
            self.close()  # the lender died: a new one may be up next time
            return False
        self.reserved = True
        return True

    def take(self) -> tuple[int, Channel] | None:
        """The answer to :meth:`reserve`: a process of the lender's waiting to be told what to
        become (``BecomeAt``, on the channel returned), and its pid; None if there is none."""
        if not self.reserved:
            return None
        self.reserved = False
        while True:
            got = self._receive(LEND_TIMEOUT_S)
            if got is None:
                return None  # the link is closed; why is logged
            message, fds = got
            if isinstance(message, LentExit) and not fds:
                self.keep_exit(message)  # an earlier lent child's
                continue
            if isinstance(message, Lent) and len(fds) == 1:
                return message.pid, Channel(socket.socket(fileno=fds[0]))
            for fd in fds:
                os.close(fd)
            if isinstance(message, NotLent):
                return None
            log.warning("supervisor %s: unexpected answer from the lender: %r", self.name,
                        message)
            self.close()
            return None

    def release(self) -> None:
        """A reservation that no start took: its spare is let go (it exits at its channel's
        EOF; the lender reaps it, and its exit is not one of ours)."""
        got = self.take()
        if got is not None:
            pid, channel = got
            channel.close()
            self.released.add(pid)

    def exit_status(self, pid: int) -> int | None:
        """The wait status of lent child ``pid``, which has died; None if the lender cannot
        tell (it is gone, or did not say in time)."""
        if pid in self.exits:
            return self.exits.pop(pid)
        if self.sock is None:
            return None
        while True:
            got = self._receive(EXIT_TIMEOUT_S)
            if got is None:
                return None
            message, fds = got
            for fd in fds:
                os.close(fd)
            if isinstance(message, LentExit):
                if message.pid == pid:
                    return message.status
                self.keep_exit(message)

    def keep_exit(self, message: LentExit) -> None:
        if message.pid in self.released:
            self.released.discard(message.pid)
        else:
            self.exits[message.pid] = message.status

    def _receive(self, timeout: float) -> tuple[Any, list[int]] | None:
        """The next message and the descriptors it carried; None at EOF, a timeout or a
        malformed message (the link is then closed)."""
        sock = self.sock
        if sock is None:
            return None
        sock.settimeout(timeout)
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_PACKET, 1)
        except TimeoutError:
            # An answer that comes late must not be taken for another's: the link goes (and
            # with it, by the lender's rule, what it lent over it: a hung lender's).
            log.warning("supervisor %s: the lender did not answer within %.0f ms; link closed",
                        self.name, timeout * 1000)
            self.close()
            return None
        except OSError:
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            self.close()
            return None
        try:
            message = decode(data)
        except (msgspec.DecodeError, ValueError) as exc:
            for fd in fds:
                os.close(fd)
            log.error("supervisor %s: malformed message from the lender: %s", self.name, exc)
            self.close()
            return None
        return message, fds
