"""Process addresses: every process is named by (node, OS pid) from the start.

A multi-node mesh routes on ``node``; on one node ``ospid`` alone is unique among live
processes. Addresses are plain frozen Structs so they cross the wire unchanged.
"""

from __future__ import annotations

import socket

import msgspec

__all__ = ["Pid", "Global", "default_node_name"]


class Pid(msgspec.Struct, frozen=True, order=True, array_like=True):
    """The address of one process: the node it lives on and its OS process id."""

    node: str
    ospid: int

    def __str__(self) -> str:
        return f"<{self.node}.{self.ospid}>"


class Global(msgspec.Struct, frozen=True, array_like=True):
    """A destination by global name (OTP's ``{global, Name}``): resolved cluster-wide at each
    send or call (see :meth:`Worker.register_global`)."""

    name: str

    def __str__(self) -> str:
        return f"{{global, {self.name}}}"


def default_node_name() -> str:
    """``prismatic@<short host name>``, as Erlang's ``name@host``."""
    return f"prismatic@{socket.gethostname().split('.')[0]}"
