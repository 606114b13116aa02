"""A dormant supervisor's side of the node's shared spare (:mod:`._lender`): taking the spare,
reading a lent child's exit status, the wire messages, and the supervisor's link to the
lender.

Protocol (every socket is ``AF_UNIX`` at an abstract address of the node's; each end checks the
other runs under its own uid):

* **Taking the spare** (:func:`take_spare`): the spare listens at :func:`spare_address`
  (``SOCK_STREAM``, backlog 0, so at most one connection waits at a time). The supervisor
  connects without blocking, reads the spare's pid from the connection (``SO_PEERCRED``), and
  at once sends ``BecomeAt`` on it: the connection is the supervisor's channel to its new
  child. Nothing on this path waits for the lender, or for the spare to be scheduled.
* **The spare tells the lender** who took it (:class:`Taken`, on the pair they share), once
  its ``ready`` is sent: the lender, long asleep, would otherwise take the CPU from the start
  the supervisor waits for. The lender then watches that supervisor (a pidfd).
* **The exit of a lent child**: the lender kills its group and leaves it a zombie; the
  supervisor, woken by the same death, reads its status from ``/proc/PID/stat``
  (:func:`zombie_status`), kills its group itself (before it decides, as for a child it
  forked: the lender may not have had a CPU yet), and tells the lender to reap it
  (:class:`Reap`, on the supervisor's
  *link*, a ``SOCK_SEQPACKET`` connection to :func:`lender_address`). Waiting for the lender
  to reap and send it instead cost the next restart ~0.5 ms (the lender's wake-up). A
  supervisor that finds it reaped already (it was stopped for ``REAP_GRACE_S``, or the lender
  died), or may not read it (the kernel shows a 0 to a reader ptrace would not let look),
  asks (:class:`ExitOf`) and waits for the :class:`LentExit`; -1: unknown.

Invariants: the spare accepts one connection, from its own uid, then closes its listening
socket, and exits (let go) if not told what to become within ``TOLD_WITHIN_S``; a
connection that was queued behind it meanwhile is reset, and its supervisor, which saw its
channel close before any frame while the process lives on, forks its child itself
(:meth:`~._runtime.SupervisorRuntime.on_child`). When a supervisor dies, the lender kills
every child it lent it: a lent child dies with its supervisor, as every child does. Before
the lender knows (during the child's ``init``), the child's channel stands in for it: its
EOF, the supervisor gone, ends the child by SIGIO, whatever its ``init`` is doing
(``_shared_spare``). A lent child whose ``init`` fails or is ignored tells the lender who
took it on its way out.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import msgspec

from .._nodeinfo import peer_creds
from .._process import kill_group, send_signal
from ..transports._channel import Channel

__all__ = ["Taken", "ExitOf", "Reap", "LentExit", "LenderMessage", "LenderLink", "take_spare",
           "zombie_status", "spare_address", "lender_address", "EXIT_TIMEOUT_S", "encode",
           "decode"]

log = logging.getLogger(__name__)

# How long a supervisor waits for the wait status of a lent child that it saw die: the lender
# reaps it at once, so this is reached only if the lender is gone or hung.
EXIT_TIMEOUT_S = 1.0
_MAX_PACKET = 1 << 16
_STAT_EXIT_CODE = 49  # field 52 of /proc/PID/stat, counted from field 3 (the state)


class Taken(msgspec.Struct, frozen=True, tag="taken"):
    owner: int  # the pid of the supervisor that took the spare


class ExitOf(msgspec.Struct, frozen=True, tag="exit_of"):
    pid: int  # a lent child the supervisor saw die, whose status it has not been told


class Reap(msgspec.Struct, frozen=True, tag="reap"):
    pid: int  # a dead lent child whose status the supervisor has read: reap it


class LentExit(msgspec.Struct, frozen=True, tag="lent_exit"):
    pid: int
    status: int  # as os.waitpid gives it; -1: the lender has no such child


LenderMessage = Taken | ExitOf | Reap | LentExit
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(LenderMessage)


def lender_address(node: str) -> bytes:
    return f"\0prismatic/{node}/lender".encode()


def spare_address(node: str) -> bytes:
    return f"\0prismatic/{node}/shared-spare".encode()


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> Any:
    """One message; raises ``msgspec.DecodeError``/``ValueError`` if malformed."""
    return _decoder.decode(data)


def zombie_status(pid: int) -> int | None:
    """The wait status of ``pid`` if it is a zombie (dead, not reaped), from
    ``/proc/PID/stat``'s ``exit_code``; None if it is not one (reaped, or alive), or if this
    process may not read it. The kernel shows ``exit_code`` only to a reader ptrace would let
    look (the same uid *and* gids, or CAP_SYS_PTRACE), and ``0`` to any other: a normal exit,
    misread. A worker that changed its group (a root node without CAP_SYS_PTRACE, as in a
    container) is such a case; a 0 is trusted only if ``/proc/PID/io``, which the kernel
    guards with the same check but refuses outright (EACCES), is readable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] != b"Z" or len(fields) < _STAT_EXIT_CODE + 1:
        return None
    status = int(fields[_STAT_EXIT_CODE])
    if status == 0:
        try:
            with open(f"/proc/{pid}/io", "rb") as f:
                f.read(1)
        except OSError:  # EACCES: the 0 was the kernel's mask (ENOENT: reaped meanwhile)
            return None
    return status


def take_spare(node: str) -> tuple[int, Channel] | None:
    """Connect to the node's shared spare, if one waits: its pid and the channel to it (send it
    ``BecomeAt`` at once). None if none waits (none made yet, taken a moment ago, no lender),
    or if another user's process holds its address. Never blocks."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        sock.connect(spare_address(node))  # queued at once, or EAGAIN: one is queued already
        pid, uid = peer_creds(sock)
        if uid != os.geteuid() or pid <= 0:
            raise OSError(f"the shared spare's address is held by uid {uid}, pid {pid}")
        sock.setblocking(True)  # a channel's socket (it reads with MSG_DONTWAIT)
    except OSError as exc:
        sock.close()
        if not isinstance(exc, (BlockingIOError, ConnectionRefusedError, FileNotFoundError)):
            log.warning("no shared spare taken: %s", exc)
        return None
    return pid, Channel(sock)


class LenderLink:
    """A supervisor's link to the lender, for the exits of the children it was lent: opened
    once it has taken a spare, and again after it broke. No call raises; each blocks for at
    most its timeout."""

    def __init__(self, node: str, name: str) -> None:
        self.node = node
        self.name = name  # the supervisor's, for log lines
        self.sock: socket.socket | None = None
        self.exits: dict[int, int] = {}  # LentExit read while waiting for another

    def connect(self) -> bool:
        if self.sock is not None:
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            # Without blocking: a lender whose queue of links is full (stopped, hung, out of
            # descriptors) would hold the supervisor here, in the middle of a restart.
            sock.setblocking(False)
            try:
                sock.connect(lender_address(self.node))
            except BlockingIOError:
                raise OSError("its queue of links is full") from None
            if peer_creds(sock)[1] != os.geteuid():
                raise OSError("the lender's address is held by another user's process")
            sock.settimeout(EXIT_TIMEOUT_S)  # no send or receive blocks for longer
        except OSError as exc:
            sock.close()
            log.warning("supervisor %s: no link to the lender: %s", self.name, exc)
            return False
        self.sock = sock
        return True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exit_status(self, pid: int, pidfd: int) -> int | None:
        """The wait status of lent child ``pid`` (``pidfd``: the supervisor's on it), which
        has died; None if the lender cannot tell (it is gone, or did not say in time)."""
        if pid in self.exits:
            return self.exits.pop(pid)
        status = zombie_status(pid)
        # What /proc showed was this child only if it is still unreaped now (a signal 0
        # through its pidfd fails once it is reaped): reaped after the lender's grace, its
        # pid may be another process's already, a zombie too, with a status of its own.
        if status is not None and not send_signal(pidfd, 0):
            status = None
        if status is not None:  # the usual way: read, and the lender told it may reap
            # Its group dies now, before the supervisor decides on its death, as a forked
            # child's does; not whenever the lender (woken by the same death) gets a CPU.
            # Safe: it was unreaped a moment ago (checked above), and the lender keeps it a
            # zombie (its pid, the group's id, not reused) until told to reap it below, or
            # after its grace, a second from its death.
            kill_group(pid)
            if self.connect():
                try:  # never waited for: it reaps it after its grace anyway
                    self.sock.send(encode(Reap(pid)),  # type: ignore[union-attr]
                                   socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass  # a lender behind on its links
                except OSError:
                    self.close()
            return status
        if not self.connect():
            return None
        sock = self.sock
        assert sock is not None
        try:
            sock.send(encode(ExitOf(pid)))  # reaped already: the lender kept its status
        except OSError:
            self.close()
            return None
        while True:
            message = self._receive(EXIT_TIMEOUT_S)
            if message is None:
                return None
            if message.pid == pid:
                return message.status if message.status >= 0 else None
            self.exits[message.pid] = message.status

    def _receive(self, timeout: float) -> LentExit | None:
        """The next message; None at EOF, a timeout or anything but a LentExit (the link is
        then closed, and the lender's statuses for it are lost: logged)."""
        sock = self.sock
        assert sock is not None
        sock.settimeout(timeout)
        try:
            data = sock.recv(_MAX_PACKET)
        except TimeoutError:
            log.warning("supervisor %s: the lender did not answer within %.0f ms; link closed",
                        self.name, timeout * 1000)
            self.close()
            return None
        except OSError:
            data = b""
        return self._decode(data)

    def _decode(self, data: bytes) -> LentExit | None:
        try:
            message = decode(data) if data else None
        except (msgspec.DecodeError, ValueError) as exc:
            log.error("supervisor %s: malformed message from the lender: %s", self.name, exc)
            message = None
        if not isinstance(message, LentExit):
            self.close()
            return None
        return message
