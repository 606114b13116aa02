"""The node's control protocol: what a client (CLI, tests, ``prismatic.connect``) sends.

Transport: ZeroMQ DEALER (client) -> ROUTER (node) at ``ipc://<data dir>/control.sock``; one
msgpack frame per message. Supervisor operations travel on as ``request`` frames down the
tree to the supervisor at ``path``; ``tree`` and ``status`` are answered by the node itself.
Every request gets exactly one :class:`ControlReply` carrying ``Ok`` or ``Err``.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["SupervisorCall", "TreeCall", "StatusCall", "ControlCall", "ControlReply",
           "TreeRow", "NodeStatus"]


class SupervisorCall(msgspec.Struct, frozen=True, tag="supervisor"):
    ref: int
    path: tuple[str, ...]
    op: msgspec.Raw


class TreeCall(msgspec.Struct, frozen=True, tag="tree"):
    ref: int


class StatusCall(msgspec.Struct, frozen=True, tag="status"):
    ref: int


ControlCall = SupervisorCall | TreeCall | StatusCall


class ControlReply(msgspec.Struct, frozen=True):
    ref: int
    result: msgspec.Raw  # Ok | Err


class TreeRow(msgspec.Struct, frozen=True):
    path: str
    type: str
    pid: int | None
    restarts: int
    uptime: float | None
    last_exit: Any = None


class NodeStatus(msgspec.Struct, frozen=True):
    node: str
    pid: int
    root_pid: int
    ready: bool
    uptime: float
    processes: int
    data_dir: str
