"""A framed, bidirectional channel between a supervisor and one child process.

The supervision plane never uses ZeroMQ: a supervisor talks to each child over one end of an
``AF_UNIX`` stream socketpair made just before the fork, so nothing of a ZeroMQ context ever
crosses a fork, and the channel closes by itself when either process dies (EOF).

Framing is :mod:`._framing`'s, carrying the tagged union of :mod:`._frames`. A frame with an
unknown version or an undecodable body is dropped, counted and logged; it never raises out of
:meth:`Channel.receive`.
"""

from __future__ import annotations

import socket
from typing import Any

import msgspec

from ._frames import Frame
from ._framing import MAX_FRAME, FrameBuffer, encode_frame

__all__ = ["Channel", "open_channel_pair", "MAX_FRAME"]

_decoder = msgspec.msgpack.Decoder(Frame)


class Channel:
    """One end of a socketpair carrying :data:`Frame` values."""

    __slots__ = ("sock", "_frames", "closed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._frames = FrameBuffer(_decoder, "supervision channel")
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: Any) -> None:
        """Send one frame; raises OSError (BrokenPipe) if the peer is gone."""
        self.sock.sendall(encode_frame(frame))

    def try_send(self, frame: Any) -> bool:
        """Send, or return False if the peer is gone (its exit is reported elsewhere)."""
        try:
            self.send(frame)
            return True
        except OSError:
            return False

    def receive(self, *, block: bool = False) -> list[Any]:
        """Read what is available (or wait for at least one read if ``block``) and return the
        complete frames. Sets ``closed`` on EOF, a reset peer or broken framing."""
        try:
            data = self.sock.recv(1 << 16, 0 if block else socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        return self._feed(data)

    def _feed(self, data: bytes) -> list[Any]:
        if not data:
            self.closed = True
            return []
        frames = self._frames.feed(data)
        if self._frames.broken:
            self.closed = True
        return frames

    @property
    def bad_frames(self) -> int:
        return self._frames.bad_frames

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
            frames += self._feed(data)
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
