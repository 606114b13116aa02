"""The caller's end of one connection to a mailbox: blocking, with kernel-side timeouts.

:class:`Peer` is one ``AF_UNIX`` stream connection from a sending process straight to one
destination's mailbox socket (or, with another address and decoder, to this node's relay),
checked at connect time with ``SO_PEERCRED``: an address held by another user, or by a
process that is not the one the Pid names (its ospid reused), is refused as no process.
The connection keeps the calls in flight on it (``waiting``) and the answers read for
them while another was awaited (``replies``); :func:`sort_answers` is that matching, shared
by the local and the direct-link paths of :mod:`._outbox`. :func:`spin_recv` is a
local call's wait for its reply: a short busy poll (``SPIN_S``), then a blocking ``recv``.

Log lines keep the logger name ``prismatic._outbox``: they are the sender's.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from ._address import Pid, holder_matches
from ._nodeinfo import creation_of, mailbox_address, peer_creds
from ._throttle import ThrottledWarning
from .transports._framing import FrameBuffer
from .transports._messages import CallRefused, CallReply, MailboxFrame
from .transports._remote_frames import CallFailed

__all__ = ["Peer", "spin_recv", "sort_answers", "SPIN_S"]

log = logging.getLogger("prismatic._outbox")  # the sender's log: its lines name the outbox
_decoder = msgspec.msgpack.Decoder(MailboxFrame)
_TIMEVAL = struct.Struct("ll")
# Busy-poll for a reply this long before blocking (see spin_recv); never on one CPU, where
# spinning would only delay the callee.
SPIN_S = 50e-6 if len(os.sched_getaffinity(0)) > 1 else 0.0
_untrusted = ThrottledWarning(log)  # squatted mailbox addresses (each becomes a dead letter)


class Peer:
    """A blocking connection whose timeouts are kernel-side (SO_RCVTIMEO/SO_SNDTIMEO): each
    receive is one system call, where a Python-level timeout costs a poll() before it."""

    __slots__ = ("pid", "sock", "frames", "rcv_timeout", "snd_timeout", "waiting", "replies")

    def __init__(self, pid: Pid, address: bytes | None = None,
                 decoder: msgspec.msgpack.Decoder[Any] = _decoder) -> None:
        self.pid = pid
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(address or mailbox_address(pid.node, pid.ospid))
            holder, uid = peer_creds(self.sock)
            if uid != os.getuid():  # another user bound a dead process's address: no process
                _untrusted.warn("the mailbox address of %s is held by uid %d, pid %d (another "
                                "user): taken as no process", pid, uid, holder)
                raise ConnectionRefusedError(f"{pid}'s mailbox address is another user's")
            if not holder_matches(pid, holder, creation_of(pid.node)):
                # the ospid (or the node's name) was reused: the process pid named is gone
                raise ConnectionRefusedError(f"{pid} is gone (its ospid now names another)")
        except OSError:
            self.sock.close()
            raise
        self.frames = FrameBuffer(decoder, f"connection to {pid}")
        self.rcv_timeout = self.snd_timeout = 0.0
        self.waiting: set[int] = set()  # refs of calls in flight on this connection
        self.replies: dict[int, Any] = {}  # replies read while waiting for another one

    def set_timeouts(self, timeout: float, rcv: bool = True, snd: bool = True) -> None:
        if timeout == self.rcv_timeout and timeout == self.snd_timeout:
            return  # the same timeout call after call: the hot path, no system call
        timeout = max(timeout, 0.000001)  # 0 would mean "wait forever" to the kernel
        value = _TIMEVAL.pack(int(timeout), int(timeout % 1 * 1e6))
        if rcv and timeout != self.rcv_timeout:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
            self.rcv_timeout = timeout
        if snd and timeout != self.snd_timeout:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
            self.snd_timeout = timeout


def spin_recv(sock: socket.socket, spin: float) -> bytes:
    """Poll for a reply for up to ``spin`` seconds before sleeping in ``recv``: a reply that
    comes that fast (the callee runs on another core) then costs the caller no wake-up,
    which under virtualisation is most of a round trip's latency (measured: -5 to -9 µs
    at p50 and -10 to -15 µs at p99 of a ~25 µs round trip)."""
    end = time.perf_counter() + spin
    while True:
        try:
            return sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if time.perf_counter() > end:
                return sock.recv(1 << 16)


def sort_answers(frames: Iterable[Any], ref: int, waiting: set[int],
                  replies: dict[int, Any]) -> CallReply | CallRefused | CallFailed | None:
    """The answer to call ``ref`` among ``frames`` (None: not among them). Answers to other
    calls in flight on the connection (``waiting``) are kept in ``replies`` for them; the
    rest (not answers, or late answers to calls that timed out) are dropped, as OTP 24+
    drops a late reply."""
    found = None
    for frame in frames:
        if not isinstance(frame, (CallReply, CallRefused, CallFailed)):
            continue
        if frame.ref == ref:
            found = frame
        elif frame.ref in waiting:
            replies[frame.ref] = frame
    return found
