"""Registered supervisor names (OTP's ``supervisor:start_link({local, Name}, ...)``).

A supervisor whose spec has a ``name`` binds a listening ``AF_UNIX`` socket at an abstract
address made of its node and that name. The kernel makes the name unique (a second bind
fails: the second supervisor fails to start, ``already_started``) and drops it the moment
the process exits, however it exits, so a restarted supervisor takes its name back with no
race against the report of its predecessor's death.

Resolving (the node, for a control request addressed ``@name``): connect to the address and
read the listener's pid from ``SO_PEERCRED``; nothing is sent. The supervisor accepts and
closes such connections as they come (:meth:`NameSocket.drain`), so its backlog never fills.
"""

from __future__ import annotations

import os
import socket

from .._errors import RegistryError
from .._nodeinfo import peer_creds

__all__ = ["supervisor_address", "NameSocket", "resolve_name"]

_BACKLOG = 64


def supervisor_address(node: str, name: str) -> bytes:
    return f"\0prismatic/{node}/sup/{name}".encode()


class NameSocket:
    """A supervisor's hold on its name, for as long as the process lives."""

    def __init__(self, node: str, name: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(supervisor_address(node, name))
        except OSError as exc:
            sock.close()
            holder = resolve_name(node, name)
            detail = f"held by pid {holder}" if holder else str(exc)
            raise RegistryError(name, "already_started", detail) from None
        sock.listen(_BACKLOG)
        sock.setblocking(False)
        self.sock = sock

    def drain(self) -> None:
        """Accept and close the connections of name look-ups."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # out of descriptors, say: the look-up still read our pid
            conn.close()


def resolve_name(node: str, name: str) -> int | None:
    """The pid of the supervisor registered as ``name`` on ``node`` under this uid, or None."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError:
        return None
    try:
        sock.setblocking(False)
        sock.connect(supervisor_address(node, name))
        pid, uid = peer_creds(sock)
    except OSError:  # refused: nobody holds it (or its backlog is full: try again)
        return None
    finally:
        sock.close()
    # another user may bind an abstract address of ours: never trust it
    return pid if uid == os.getuid() and pid > 0 else None
