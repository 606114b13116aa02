"""A framed, bidirectional channel between a supervisor and one child process.

The supervision plane never uses ZeroMQ: a supervisor talks to each child over one end of an
``AF_UNIX`` stream socketpair made just before the fork, so nothing of a ZeroMQ context ever
crosses a fork, and the channel closes by itself when either process dies (EOF).

Framing: ``u32 big-endian length`` + ``u8 wire version`` + msgpack body (a tagged union from
:mod:`._frames`). A frame with an unknown version or an undecodable body is dropped, counted
and logged; it never raises out of :meth:`Channel.receive`.
"""

from __future__ import annotations

import logging
import socket
import struct
from typing import Any

import msgspec

from ._frames import WIRE_VERSION, Frame

__all__ = ["Channel", "open_channel_pair", "MAX_FRAME"]

log = logging.getLogger(__name__)

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">IB")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


class Channel:
    """One end of a socketpair carrying :data:`Frame` values.

    Invariant: ``_buf`` never holds a complete frame after :meth:`receive` returns.
    """

    __slots__ = ("sock", "_buf", "bad_frames", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self.bad_frames = 0
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: Any) -> None:
        """Send one frame; raises OSError (BrokenPipe) if the peer is gone."""
        body = _encoder.encode(frame)
        self.sock.sendall(_HEADER.pack(len(body) + 1, WIRE_VERSION) + body)

    def try_send(self, frame: Any) -> bool:
        """Send, or return False if the peer is gone (its exit is reported elsewhere)."""
        try:
            self.send(frame)
            return True
        except OSError:
            return False

    def receive(self, *, block: bool = False) -> list[Any]:
        """Read what is available (or wait for at least one read if ``block``) and return the
        complete frames. Sets ``closed`` on EOF or a reset peer."""
        try:
            data = self.sock.recv(1 << 16, 0 if block else socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return self._parse()
        self._buf += data
        return self._parse()

    def _parse(self) -> list[Any]:
        frames = []
        buf = self._buf
        while len(buf) >= 4:
            (length,) = struct.unpack_from(">I", buf)
            if length > MAX_FRAME or length == 0:
                # A peer that breaks framing cannot be resynchronised: treat as closed.
                self.bad_frames += 1
                log.error("channel fd %d: frame length %d out of range; closing",
                          self.fileno(), length)
                self.closed = True
                buf.clear()
                break
            if len(buf) < 4 + length:
                break
            version = buf[4]
            body = bytes(buf[5:4 + length])
            del buf[:4 + length]
            if version != WIRE_VERSION:
                self.bad_frames += 1
                log.warning("dropped frame with wire version %d (want %d)", version,
                            WIRE_VERSION)
                continue
            try:
                frames.append(_decoder.decode(body))
            except msgspec.DecodeError as exc:
                self.bad_frames += 1
                log.warning("dropped malformed frame: %s", exc)
        return frames

    def drain(self) -> list[Any]:
        """Every frame already buffered in the kernel, without waiting: for a peer known to be
        dead, whose last writes are all there (a grandchild may still hold the fd open, so
        waiting for EOF could wait forever)."""
        frames: list[Any] = []
        while not self.closed:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
            else:
                self._buf += data
            frames += self._parse()
        return frames

    def receive_one(self) -> Any | None:
        """Block until one frame arrives; None on EOF. For a process with nothing else to do
        (a spare waiting to be told what to become)."""
        while True:
            frames = self.receive(block=True)
            if frames:
                if len(frames) > 1:
                    raise RuntimeError("receive_one: more than one frame pending")
                return frames[0]
            if self.closed:
                return None

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def open_channel_pair() -> tuple[Channel, Channel]:
    """A connected pair: (parent's end, child's end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(a), Channel(b)
