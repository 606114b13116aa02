"""Admission to the mesh's listening socket: the ZAP handler and the refusal count.

Every connection to a node's mesh endpoint is a CurveZMQ handshake (:mod:`._secret`).
libzmq asks this module's ZAP handler (ZeroMQ's authentication protocol, RFC 27, on
``inproc://zeromq.zap.01`` of the mesh's own context) about each client that completed the
cryptographic part; it admits exactly the cluster's key. A client that fails earlier (no
secret, another secret, plain ZeroMQ, random bytes) never reaches ZAP: libzmq drops the
connection and reports it on the socket's monitor. :class:`AdmissionWatch` turns those
monitor events into one refusal per connection that was accepted but never completed a
handshake, with the peer's address (read from the accepted descriptor; libzmq's events
name only our own endpoint). Each refusal is counted by reason and logged, throttled. No
key or secret is ever logged.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils import z85

from .._throttle import ThrottledWarning

__all__ = ["serve_zap", "AdmissionWatch", "ZAP_ENDPOINT", "WATCHED_EVENTS"]

log = logging.getLogger(__name__)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
WATCHED_EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                  | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


async def serve_zap(sock: zmq.asyncio.Socket, public_key: bytes, refusals: Counter[str],
                    warn: ThrottledWarning) -> None:
    """Answer ZAP requests until cancelled: 200 for the cluster's CURVE key, 400 else."""
    allowed = z85.decode(public_key)
    while True:
        msg = await sock.recv_multipart()
        if len(msg) < 6:
            continue  # not a ZAP request: libzmq only ever sends well-formed ones
        version, request_id, _domain, address, _identity, mechanism = msg[:6]
        key = msg[6] if len(msg) > 6 else b""
        ok = mechanism == b"CURVE" and key == allowed
        if not ok:
            refusals["unknown_key"] += 1
            warn.warn("mesh: refused a peer at %s: not the cluster's key (another cluster "
                      "secret?)", address.decode(errors="replace"))
        await sock.send_multipart([version, request_id, b"200" if ok else b"400",
                                   b"OK" if ok else b"not a member of this cluster",
                                   b"", b""])


class AdmissionWatch:
    """Reads the listening socket's monitor events; counts handshakes that never completed.

    It runs on the thread of :class:`prismatic._connection_drops.ConnectionDrops`, which
    reads the listener's monitor (the reason count it shares with the ZAP handler on the
    loop is kept under other keys).

    Invariant: ``unverified`` holds the descriptors accepted and not yet matched to a
    completed handshake, in accept order (libzmq reports a success without a descriptor;
    handshakes complete roughly in accept order, so the oldest is taken)."""

    def __init__(self, refusals: Counter[str], warn: ThrottledWarning) -> None:
        self.refusals = refusals
        self.warn = warn
        self.unverified: dict[int, str] = {}
        self.failed_reason = "bad_handshake"

    def on_event(self, event: int, value: int) -> bool:
        """Take one monitor event; True if it closed a connection that never completed its
        handshake (a refusal, accounted for here: not a connection libzmq cut later, see
        :mod:`prismatic._connection_drops`)."""
        if event == zmq.EVENT_ACCEPTED:
            self.unverified[value] = _peer_of(value)
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if self.unverified:
                self.unverified.pop(next(iter(self.unverified)))
        elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
            self.failed_reason = "bad_handshake"
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.failed_reason = "zap_denied"  # counted by the ZAP handler already
        elif event == zmq.EVENT_DISCONNECTED:
            peer = self.unverified.pop(value, None)
            if peer is None:
                return False
            reason, self.failed_reason = self.failed_reason, "bad_handshake"
            if reason == "zap_denied":
                return True
            self.refusals[reason] += 1
            self.warn.warn("mesh: refused a connection from %s: it did not complete a "
                           "CurveZMQ handshake with this cluster's key (no or another "
                           "cluster secret, or not a Prismatic node)", peer)
            return True
        return False


def _peer_of(fd: int) -> str:
    """The remote address of an accepted descriptor, if it is still open (best effort: the
    event is read after the fact, and libzmq may have closed it meanwhile)."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return "an address gone before it could be read"
    try:
        host, port, *_ = s.getpeername()
        return f"{host}:{port}"
    except (OSError, ValueError):
        return "an address gone before it could be read"
    finally:
        s.detach()


def parse_event(frames: list[Any]) -> tuple[int, int]:
    """A monitor message's (event, value); libzmq's v1 format: u16 event, u32 value."""
    head = bytes(frames[0])
    return int.from_bytes(head[:2], "little"), int.from_bytes(head[2:6], "little")
