"""Which node this process belongs to: set once by the node before its one fork.

Every process of a tree is forked (directly or through supervisors) from the node process
after :func:`set_current` ran, so each of them reads the same value without any message.
Plain Python code outside a node (the CLI, an external client) has none: :func:`current`
returns None there, and the messaging API asks for an explicit connection instead.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import msgspec

from ._errors import NodeError

__all__ = ["NodeInfo", "current", "set_current", "hub_address", "mailbox_address", "peer_uid",
           "open_hub_socket"]

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class NodeInfo(msgspec.Struct, frozen=True):
    """``name`` is the node's name (the ``node`` of every :class:`~prismatic.Pid` on it);
    ``data_dir`` its data directory (ZeroMQ endpoints, cookie, event log)."""

    name: str
    data_dir: Path


_current: NodeInfo | None = None


def set_current(info: NodeInfo) -> None:
    global _current
    _current = info


def current() -> NodeInfo | None:
    return _current


def hub_address(node: str) -> bytes:
    """The node hub's abstract ``AF_UNIX`` address (registry, monitors, links)."""
    return f"\0prismatic/{node}/hub".encode()


def mailbox_address(node: str, ospid: int) -> bytes:
    """A process's mailbox: an abstract ``AF_UNIX`` address that vanishes with the process,
    so connecting to a dead process fails at once (ECONNREFUSED) with nothing to clean up."""
    return f"\0prismatic/{node}/{ospid}".encode()


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected ``AF_UNIX`` socket: the hub
    and every mailbox accept only the node's own uid."""
    return _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                         _CREDS.size))[1]


def open_hub_socket(node: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(hub_address(node))
    except OSError:
        sock.close()
        raise NodeError(f"a node named {node!r} is already running on this host "
                        f"(give this one another --name)") from None
    sock.listen(1024)
    return sock
