"""A process that takes over a dead worker's ospid (tests/test_address.py): a real worker
runtime with a real mailbox at ``\\0prismatic/<node>/<ospid>``, of the node's own incarnation,
started outside the tree so that the test decides which ospid it gets.

Run as ``python -m tests.pid_apps NODE DATA_DIR CREATION FD``, its supervision channel on
descriptor FD; it stops when that channel closes.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import msgspec

import prismatic as p
from prismatic._nodeinfo import NodeInfo, set_current
from prismatic._worker_runtime import run_worker
from prismatic.transports._channel import Channel


class Impostor(p.Worker):
    """Answers every call with its own exact Pid and what it was sent so far."""

    def init(self) -> None:
        self.got: list[Any] = []

    def handle_call(self, msg: Any, caller: p.Caller) -> Any:
        return ["impostor", list(msgspec.structs.astuple(self.pid)), self.got]

    def handle_cast(self, msg: Any) -> None:
        self.got.append(["cast", msg])

    def handle_info(self, msg: Any) -> None:
        self.got.append(["info", repr(msg)])


def main() -> int:
    node, data, creation = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    set_current(NodeInfo(node, data, creation))  # as the node does before it forks a tree
    channel = Channel(socket.socket(fileno=int(sys.argv[4])))
    return run_worker(Impostor, (), channel, node, "impostor")


if __name__ == "__main__":
    sys.exit(main())
