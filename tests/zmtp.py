"""A raw ZMTP 3.0 peer for tests: speaks to a node's ZeroMQ endpoints byte by byte, so a test
can send what no well-behaved ZeroMQ socket would (a frame header promising 100 MiB, a frame
cut short, a message of a thousand frames)."""

from __future__ import annotations

import socket
import struct

GREETING = (b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0"
            + b"\0" * 31)
MORE, LONG, COMMAND = 0x01, 0x02, 0x04


def frame_header(size: int, more: bool = False) -> bytes:
    flags = MORE if more else 0
    if size > 255:
        return bytes((flags | LONG,)) + struct.pack(">Q", size)
    return bytes((flags, size))


def message(frames: list[bytes]) -> bytes:
    return b"".join(frame_header(len(f), i < len(frames) - 1) + f for i, f in enumerate(frames))


def connect(path: str, socket_type: str, timeout: float = 5.0) -> socket.socket:
    """A connected, handshaken peer of type ``socket_type`` (``DEALER``, ``PUSH``, ``XSUB``)
    to the ``ipc://`` endpoint at ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall(GREETING)
    got = b""
    while len(got) < len(GREETING):
        chunk = s.recv(len(GREETING) - len(got))
        if not chunk:
            raise ConnectionError("the endpoint closed during the greeting")
        got += chunk
    name = socket_type.encode()
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(name)) + name
    s.sendall(bytes((COMMAND, len(body))) + body)
    return s


def send_until_dropped(s: socket.socket, data_size: int, chunk: int = 1 << 20) -> int:
    """Send ``data_size`` zero bytes; the count sent before the peer dropped the connection
    (``data_size`` if it never did)."""
    buf = b"\0" * chunk
    sent = 0
    try:
        while sent < data_size:
            sent += s.send(buf[:data_size - sent])
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent
