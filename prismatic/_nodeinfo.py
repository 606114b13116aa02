"""Which node this process belongs to: set once by the node before its one fork.

Every process of a tree is forked (directly or through supervisors) from the node process
after :func:`set_current` ran, so each of them reads the same value without any message.
Plain Python code outside a node (the CLI, an external client) has none: :func:`current`
returns None there, and the messaging API asks for an explicit connection instead.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from pathlib import Path

import msgspec

from ._errors import NodeError
from ._local_limits import fix_mailbox_limits, hub_limits

__all__ = ["NodeInfo", "current", "set_current", "creation_of", "node_pid", "hub_address",
           "mailbox_address", "peer_uid", "peer_creds", "describe_holder", "open_hub_socket"]

_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class NodeInfo(msgspec.Struct, frozen=True):
    """``name`` is the node's name (the ``node`` of every :class:`~prismatic.Pid` on it);
    ``data_dir`` its data directory (ZeroMQ endpoints, cookie, event log); ``creation`` its
    incarnation (start time in ms, the ``creation`` of every Pid on it; 0: unknown)."""

    name: str
    data_dir: Path
    creation: int = 0


_current: NodeInfo | None = None
_node_pid: int | None = None


def set_current(info: NodeInfo) -> None:
    """Called in the node process itself, so its pid is the hub's (see :func:`node_pid`)."""
    global _current, _node_pid
    _current = info
    _node_pid = os.getpid()


def current() -> NodeInfo | None:
    return _current


def creation_of(node: str) -> int:
    """The incarnation of ``node`` if it is this process's own node, else 0 (unknown)."""
    info = _current
    return info.creation if info is not None and info.name == node else 0


def node_pid() -> int | None:
    """The pid of this process's node (the only process that sends DOWN and EXIT notices to
    mailboxes), or None outside a node."""
    return _node_pid


def hub_address(node: str) -> bytes:
    """The node hub's abstract ``AF_UNIX`` address (registry, monitors, links)."""
    return f"\0prismatic/{node}/hub".encode()


def mailbox_address(node: str, ospid: int) -> bytes:
    """A process's mailbox: an abstract ``AF_UNIX`` address that vanishes with the process,
    so connecting to a dead process fails at once (ECONNREFUSED) with nothing to clean up."""
    return f"\0prismatic/{node}/{ospid}".encode()


def peer_creds(sock: socket.socket) -> tuple[int, int]:
    """``(pid, uid)`` of the process at the other end of a connected ``AF_UNIX`` socket, as
    the kernel recorded them when the connection was made (pid 0: a process in another pid
    namespace). The hub and every mailbox accept only the node's own uid, and a client
    trusts a hub or a mailbox only if it runs under its own uid."""
    pid, uid, _ = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                _CREDS.size))
    return pid, uid


def peer_uid(sock: socket.socket) -> int:
    return peer_creds(sock)[1]


def describe_holder(address: bytes) -> str:
    """Who holds an abstract address that could not be bound: "uid U, pid P" of the process
    listening on it, asked of the kernel by connecting to it."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(address)
        pid, uid = peer_creds(probe)
    except OSError as exc:
        if exc.errno == errno.ECONNREFUSED:
            return "a socket that accepts no connections (bound by a process not listening)"
        return f"a process that could not be asked ({exc.strerror or exc})"
    finally:
        probe.close()
    mine = "this user" if uid == os.getuid() else "ANOTHER USER"
    return f"uid {uid} ({mine}), pid {pid or 'unknown (another pid namespace)'}"


def open_hub_socket(node: str) -> socket.socket:
    """The hub's listening socket, bound before the node forks its tree. The caps of the
    hub and of the mailboxes are checked here too, so that a bad value is one line before
    anything starts (NodeError), not a failure in every worker; the mailboxes' are kept for
    the tree, which inherits them."""
    hub_limits()
    fix_mailbox_limits()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(hub_address(node))
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise NodeError(f"cannot bind the hub address of node {node!r}: "
                            f"{exc.strerror}") from None
        raise NodeError(f"the hub address of node {node!r} is held by "
                        f"{describe_holder(hub_address(node))}: a node of that name is already "
                        f"running on this host, or another process took its name (give this "
                        f"one another --name)") from None
    sock.listen(1024)
    return sock
