"""Reading every worker's mailbox statistics at once, for the node's metrics.

A ``stats`` frame (:mod:`.transports._messages`) is answered by the worker's runtime
straight from its read callback, ahead of its queue: a backlog is what it is there to show.
All requests go out first, then replies are collected until one deadline, so a scrape costs
one round of the slowest worker, bounded; a worker busy in a long handler is left out of
that scrape (and counted as such).
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

import msgspec

from ._address import Pid
from ._latency import LatencyHistogram
from ._nodeinfo import mailbox_address
from .transports._framing import FrameBuffer, encode_frame
from .transports._messages import CallReply, MailboxFrame, StatsReq

__all__ = ["MailboxStats", "collect_stats"]

_decoder = msgspec.msgpack.Decoder(MailboxFrame)
_NO_CALLS = LatencyHistogram()


class MailboxStats(msgspec.Struct, frozen=True):
    """``queue``: messages read but not yet handled; ``received``/``sent``: messages since
    the process started; ``call_latency``: [per-bucket counts, sum, count] of its calls;
    ``bad_frames``/``refused``: frames its mailbox dropped, connections it refused (not the
    node's uid)."""

    queue: int
    received: int
    sent: int
    call_latency: tuple[list[int], float, int]
    bad_frames: int
    refused: int


def collect_stats(targets: dict[str, Pid], timeout: float) -> tuple[dict[str, MailboxStats],
                                                                     int]:
    """``{path: stats}`` of the processes that answered in time, and how many did not."""
    deadline = time.monotonic() + timeout
    pending: dict[int, tuple[str, socket.socket, FrameBuffer]] = {}
    poller = select.poll()
    for path, pid in targets.items():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(mailbox_address(pid.node, pid.ospid))
            sock.sendall(encode_frame(StatsReq(1)))
        except OSError:
            sock.close()  # exited since the tree snapshot: missed
            continue
        pending[sock.fileno()] = (path, sock, FrameBuffer(_decoder, f"stats of {path}"))
        poller.register(sock, select.POLLIN)
    got: dict[str, MailboxStats] = {}
    while pending and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            path, sock, frames = pending[fd]
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            replies = [f for f in frames.feed(data) if isinstance(f, CallReply)] if data else []
            if data and not replies:
                continue
            if replies:
                try:
                    got[path] = msgspec.convert(replies[0].value, MailboxStats)
                except msgspec.ValidationError:
                    pass
            poller.unregister(fd)
            sock.close()
            del pending[fd]
    for _, sock, _ in pending.values():
        sock.close()
    return got, len(targets) - len(got)


def stats_of(ctx: Any) -> MailboxStats:
    """A runtime's answer (see :class:`~prismatic._worker_runtime.WorkerContext`); a process
    that never sent anything has no outbox, and asking must not make one."""
    box = ctx._outbox
    sent, latency = (box.sent, box.latency) if box is not None else (0, _NO_CALLS)
    return MailboxStats(len(ctx.queue), ctx.received, sent,
                        tuple(latency.snapshot()),  # type: ignore[arg-type]
                        ctx.mailbox.bad_frames, ctx.mailbox.refused)
