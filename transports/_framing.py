"""Stream framing shared by every ``AF_UNIX`` connection Prismatic speaks on.

A frame on the byte stream is ``u32 big-endian length`` + ``u8 wire version`` + msgpack body;
``length`` counts the version byte and the body. The supervision plane (:mod:`._channel`) and
the messaging plane (:mod:`._messages`) use the same framing with different tagged unions.

:class:`FrameBuffer` is the receiving half, loop-free: feed it bytes, get decoded frames. A
frame with an unknown version or an undecodable body is dropped, counted and logged (at most
once per ten seconds per kind of buffer, node-wide, see :mod:`prismatic._throttle`); a
length out of range breaks the stream beyond resynchronisation, so the buffer marks itself
``broken`` and the owner closes the connection. Nothing here raises on bad input.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import msgspec

from .._throttle import ThrottledWarning, throttle_for

__all__ = ["FrameBuffer", "encode_frame", "MAX_FRAME", "WIRE_VERSION", "HEADER"]

log = logging.getLogger(__name__)

WIRE_VERSION = 1
MAX_FRAME = 64 * 1024 * 1024
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


class FrameBuffer:
    """Reassembles frames from stream reads.

    Invariant: after :meth:`feed` returns, ``buf`` holds no complete frame.
    """

    __slots__ = ("buf", "decoder", "bad_frames", "broken", "what", "_warning")

    def __init__(self, decoder: msgspec.msgpack.Decoder[Any], what: str) -> None:
        self.buf = bytearray()
        self.decoder = decoder
        self.bad_frames = 0
        self.broken = False
        self.what = what
        self._warning: ThrottledWarning | None = None  # made on the first bad frame

    def feed(self, data: bytes) -> list[Any]:
        buf = self.buf
        if not buf and len(data) >= 5:
            # The common case, one whole frame per read, without copying into the buffer.
            length = _unpack_length(data)[0]
            if len(data) == 4 + length and data[4] == WIRE_VERSION and length > 1:
                try:
                    return [self.decoder.decode(memoryview(data)[5:])]
                except _BAD_BODY as exc:
                    self.dropped(f"malformed frame: {exc}")
                    return []
        buf += data
        frames = []
        while len(buf) >= 4:
            length = _unpack_length(buf)[0]
            if length > MAX_FRAME or length == 0:
                self.dropped(f"frame length {length} out of range; closing the connection")
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
        return frames

    def dropped(self, why: str) -> None:
        self.bad_frames += 1
        if self._warning is None:  # one throttle per kind, node-wide: new connections share it
            self._warning = throttle_for(log, self.what)
        self._warning.warn("%s: dropped a %s", self.what, why)
