"""Stream framing shared by every ``AF_UNIX`` connection Prismatic speaks on.

A frame on the byte stream is ``u32 big-endian length`` + ``u8 wire version`` + msgpack body;
``length`` counts the version byte and the body. The supervision plane (:mod:`._channel`) and
the messaging plane (:mod:`._messages`) use the same framing with different tagged unions.

:class:`FrameBuffer` is the receiving half, loop-free: feed it bytes, get decoded frames. A
frame with an unknown version or an undecodable body is dropped, counted and logged (at most
once per ten seconds per kind of buffer, node-wide, see :mod:`prismatic._throttle`); a
length out of range breaks the stream beyond resynchronisation, so the buffer marks itself
``broken`` and the owner closes the connection. Nothing here raises on bad input.

A receiver that many peers can reach bounds its memory: ``max_frame`` caps one frame, and a
:class:`ByteBudget` shared by all of a listener's buffers caps the bytes of unfinished frames
they hold together. A frame over either cap is dropped (counted in ``too_big`` or
``over_budget``, logged) and breaks its stream, which the owner closes; closing must call
:meth:`FrameBuffer.release` to give the bytes back.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import msgspec

from .._throttle import ThrottledWarning, throttle_for

__all__ = ["FrameBuffer", "ByteBudget", "encode_frame", "MAX_FRAME", "WIRE_VERSION", "HEADER"]

log = logging.getLogger(__name__)

WIRE_VERSION = 1
MAX_FRAME = 64 * 1024 * 1024
SMALL_FRAME = 8192  # decoded from a copy; larger ones from a view of the read
HEADER = struct.Struct(">IB")
_encoder = msgspec.msgpack.Encoder()
_unpack_length = struct.Struct(">I").unpack_from
# What decoding a bad body raises: msgspec's DecodeError (ValidationError included), a
# string that is not UTF-8 (UnicodeDecodeError, not a DecodeError), and msgpack nested
# deeper than the interpreter's recursion limit (RecursionError; one byte per level).
_BAD_BODY = (ValueError, RecursionError)


def encode_frame(frame: Any) -> bytes:
    body = _encoder.encode(frame)
    return HEADER.pack(len(body) + 1, WIRE_VERSION) + body


class ByteBudget:
    """Bytes of unfinished frames that the buffers of one listener may hold together.

    Invariant: ``used`` is the sum of the ``charged`` of the buffers sharing it.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class FrameBuffer:
    """Reassembles frames from stream reads.

    Invariant: after :meth:`feed` returns, ``buf`` holds no complete frame, and ``charged``
    is ``len(buf)`` when a budget is shared (else 0).
    """

    __slots__ = ("buf", "decoder", "bad_frames", "broken", "what", "_warning", "max_frame",
                 "budget", "charged", "too_big", "over_budget")

    def __init__(self, decoder: msgspec.msgpack.Decoder[Any], what: str,
                 max_frame: int = MAX_FRAME, budget: ByteBudget | None = None,
                 warning: ThrottledWarning | None = None) -> None:
        self.buf = bytearray()
        self.decoder = decoder
        self.bad_frames = 0
        self.broken = False
        self.what = what
        # Made on the first bad frame; a listener shares one across its connections, so that
        # opening a new connection does not get round the throttle.
        self._warning = warning
        self.max_frame = max_frame
        self.budget = budget
        self.charged = 0
        self.too_big = 0
        self.over_budget = 0

    def feed(self, data: bytes) -> list[Any]:
        buf = self.buf
        if self.broken:
            return []
        if not buf and len(data) >= 5:
            # The common case, one whole frame per read, without copying into the buffer.
            length = _unpack_length(data)[0]
            if len(data) == 4 + length and data[4] == WIRE_VERSION and 1 < length <= \
                    self.max_frame:
                try:
                    # A slice copies, a memoryview does not, but below a few KiB the
                    # copy is cheaper than making the view (measured ~0.1-0.4 us).
                    body = data[5:] if length < SMALL_FRAME else memoryview(data)[5:]
                    return [self.decoder.decode(body)]
                except _BAD_BODY as exc:
                    self.dropped(f"malformed frame: {exc}")
                    return []
        buf += data
        frames = []
        while len(buf) >= 4:
            length = _unpack_length(buf)[0]
            if length > self.max_frame or length == 0:
                if length > self.max_frame:
                    self.too_big += 1
                self.dropped(f"frame length {length} out of range (cap {self.max_frame}); "
                             f"closing the connection")
                self.broken = True
                buf.clear()
                break
            if len(buf) < 4 + length:
                break
            version = buf[4]
            body = bytes(buf[5:4 + length])
            del buf[:4 + length]
            if version != WIRE_VERSION:
                self.dropped(f"frame with wire version {version} (want {WIRE_VERSION})")
                continue
            try:
                frames.append(self.decoder.decode(body))
            except _BAD_BODY as exc:
                self.dropped(f"malformed frame: {exc}")
        budget = self.budget
        if budget is not None:
            grown = len(buf) - self.charged
            if grown > 0 and budget.used + grown > budget.limit:
                self.over_budget += 1
                self.dropped(f"frame: {budget.used + grown} bytes of unfinished frames would be "
                             f"buffered, over the cap of {budget.limit}; closing the connection")
                self.broken = True
                self.release()
            else:
                budget.used += grown
                self.charged = len(buf)
        return frames

    def release(self) -> None:
        """Give this buffer's bytes back to the shared budget (its connection is closing)."""
        if self.budget is not None:
            self.budget.used -= self.charged
        self.charged = 0
        self.buf.clear()

    def dropped(self, why: str) -> None:
        self.bad_frames += 1
        if self._warning is None:  # one throttle per kind, node-wide: new connections share it
            self._warning = throttle_for(log, self.what)
        self._warning.warn("%s: dropped a %s", self.what, why)
