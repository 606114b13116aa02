"""The hub's listener edge: one connection from a process of the node to its hub.

A connection is admitted here, at the edge, with ``SO_PEERCRED``: one from another uid is
refused; then the listener's caps apply (connections in all and per process, a descriptor
reserve: :mod:`._local_limits`), each refusal counted and logged, throttled. An admitted
connection carries request frames of :mod:`.transports._messages` (a frame over the size
cap, or over the listener's budget of bytes of unfinished frames, closes it) and hands each
to :meth:`Hub.handle <._hub.Hub.handle>` with the caller's Pid, the process the kernel
recorded when it connected. A request that acts for a process (``register``,
``unregister``, ``monitor``, ``demonitor``, ``link``, ``unlink``, a dead letter's sender:
:func:`acting_for`) is carried out only if that process is the connection's own, else
refused with ``not_permitted``; only the node itself (``caller=None``) acts for others.

Replies and a client's notices (its monitors and links with ``here``) go back on the
connection; a client that sends requests without reading the replies is not read until it
does.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Protocol

import msgspec

from . import _registry
from ._address import Pid, process_start
from ._local_limits import Admissions, LocalLimits
from ._nodeinfo import peer_creds
from ._notices import Down, Exit
from ._throttle import ThrottledWarning, throttle_for
from .transports._framing import ByteBudget, FrameBuffer, encode_frame
from .transports._messages import (
    DeadLetterNote, DemonitorReq, GlobalRegisterReq, GlobalUnregisterReq, HubReply, HubRequest,
    LinkReq, MonitorReq, RegisterReq, UnlinkReq, UnregisterReq,
)

__all__ = ["HubConnection", "ConnectionOwner", "acting_for"]

log = logging.getLogger("prismatic._hub")  # the hub's log: its lines name the hub, not its parts
_decoder = msgspec.msgpack.Decoder(HubRequest)


class ConnectionOwner(Protocol):
    """What a connection uses of the hub that listens (:class:`~._hub.Hub`)."""

    node: str
    creation: int
    limits: LocalLimits
    admissions: Admissions
    budget: ByteBudget
    frame_warning: ThrottledWarning
    counters: collections.Counter[str]

    def refuse(self, counter: str, msg: str, *args: object) -> None: ...

    def handle(self, conn: HubConnection, req: Any, caller: Pid | None) -> None: ...

    def client_gone(self, conn: HubConnection) -> None: ...


def acting_for(req: Any) -> tuple[str, Pid | None]:
    """The field naming the process a request acts for (which must be its sender's own) and
    that process, if any."""
    if isinstance(req, (RegisterReq, UnregisterReq, GlobalRegisterReq, GlobalUnregisterReq)):
        return "pid", req.pid
    if isinstance(req, (MonitorReq, DemonitorReq)):
        return "watcher", req.watcher
    if isinstance(req, (LinkReq, UnlinkReq)):
        return "a", req.a
    if isinstance(req, DeadLetterNote):
        return "sender", req.sender
    return "", None


class HubConnection(asyncio.Protocol):
    """One process's connection to the hub (see the module's docstring)."""

    def __init__(self, hub: ConnectionOwner) -> None:
        self.hub = hub
        self.frames = FrameBuffer(_decoder, "hub", hub.limits.max_frame_bytes, hub.budget,
                                  hub.frame_warning)
        self.transport: asyncio.Transport | None = None
        self.caller: Pid | None = None  # set once admitted
        self.admitted = False
        self.closed = False
        self.monitors: dict[int, Pid] = {}  # a client's monitors (``here``): mref -> watcher
        self.links: set[tuple[Pid, Pid]] = set()  # and its links: (client, other)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        hub = self.hub
        sock = transport.get_extra_info("socket")
        pid, uid = peer_creds(sock)
        refused = hub.admissions.admit_peer(pid, uid, sock.fileno())
        if refused is not None:
            hub.refuse(f"refused_{refused[0]}", "refused a connection from pid %d: %s", pid,
                       refused[1])
            transport.close()
            return
        self.admitted = True
        self.caller = Pid(hub.node, pid, hub.creation, process_start(pid))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.frames.release()
        if self.monitors or self.links:
            self.hub.client_gone(self)
        if self.admitted and self.caller is not None:
            self.admitted = False
            self.hub.admissions.release(self.caller.ospid)

    def pause_writing(self) -> None:
        # A client that sends requests without reading the replies: stop reading its
        # requests until it does, rather than buffer replies without bound.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return  # refused: closing
        frames, hub = self.frames, self.hub
        bad, too_big, over = frames.bad_frames, frames.too_big, frames.over_budget
        requests = frames.feed(data)
        hub.counters["bad_frames"] += frames.bad_frames - bad
        hub.counters["frames_too_big"] += frames.too_big - too_big
        hub.counters["frames_over_budget"] += frames.over_budget - over
        for req in requests:
            try:
                hub.handle(self, req, self.caller)
            except Exception as exc:  # noqa: BLE001 - one bad request must not take the node down
                hub.counters["errors"] += 1
                throttle_for(log, "hub request failed").warn(
                    "hub: request %r failed", req, exc_info=exc)
        if frames.broken and self.transport is not None:
            self.transport.close()

    def reply(self, reply: HubReply) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(reply))

    def notice(self, to: Pid, frame: Down | Exit) -> None:
        """A client's monitor or link fired (once): the notice goes on its hub connection."""
        if isinstance(frame, Down):
            self.monitors.pop(frame.ref, None)
        else:
            self.links.discard((to, frame.pid))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(frame))

    def answer(self, ref: int, answer: _registry.Accepted | _registry.Refused) -> None:
        if isinstance(answer, _registry.Refused):
            self.reply(HubReply(ref, None, answer.reason, answer.detail))
        else:
            self.reply(HubReply(ref, True))

