"""Reading a multi-part ZeroMQ message without holding more parts than the protocol has.

libzmq caps the size of each frame (``ZMQ_MAXMSGSIZE``), not the number of frames in one
message, and it delivers a message only once its last frame has arrived: a peer that sends a
long multi-part message has libzmq hold every frame (about 64 bytes of node memory per empty
frame, see ``docs/operator.md``, Known limits) before the node sees the first one. That much
the node cannot bound. What it can: not to hold a second copy. ``recv_multipart`` would
turn every frame into a Python object at once (a million 20-byte frames: 60 MiB more);
:func:`read_rest` keeps the parts the protocol has and reads the others one by one, dropping
each (which also frees libzmq's copy as it goes), and says how many there were, so the
caller counts and logs the message as malformed as before.
"""

from __future__ import annotations

from typing import Any

import zmq

__all__ = ["read_rest"]


def read_rest(sock: zmq.Socket[Any], parts: list[Any], keep: int, copy: bool = True) -> int:
    """After the first part(s) of a message were read into ``parts``, read the rest of it
    from ``sock`` (a plain socket, or a plain shadow of an asyncio one): append parts while
    ``parts`` holds fewer than ``keep``, read and drop the others. Returns how many parts the
    message had. Never blocks: libzmq delivers a message whole, and a part missing anyway
    ends the read."""
    n = len(parts)
    while sock.getsockopt(zmq.RCVMORE):
        try:
            part = sock.recv(zmq.NOBLOCK, copy=copy)
        except zmq.Again:  # pragma: no cover - libzmq delivers every part with the first
            break
        n += 1
        if len(parts) < keep:
            parts.append(part)
    return n
