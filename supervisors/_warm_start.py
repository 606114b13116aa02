"""Warming the image a tree is forked from: a child's start, run in the node beforehand.

Why: a process of the tree shares every page of the one it was forked from until it writes
to it, and each first write costs it a copy-on-write fault (~3 µs in a VM). Running Python
code writes to more than the objects it makes: CPython counts a function's first calls and
then rewrites its bytecode in place (quickening and specialization), and fills the types'
attribute caches and the dictionaries' key versions on first use. Code that only ever ran in
the children was rewritten in each of them: every worker paid for its start path's first
run. So the node runs the side-effect-free steps of that path a few times before it forks
its tree (``prismatic/_node.py``), and every process of the tree inherits them done.

What runs, ``WARM_ROUNDS`` times: what a spare does before it is told what to become (its
channel on an inherited descriptor, its worker context and mailbox), the frames a child and
its supervisor exchange (``Become``, ``ready``), and what a plain worker does once ready (the
check for async handlers, its reactor, its mailbox attached and served). Nothing is left
behind: the descriptors are closed, the mailbox too (bound meanwhile at the node process's
own address, which no other process can have), no signal handler is touched.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from .._address import own_pid
from .._errors import NodeError
from .._reactor import Reactor
from .._worker import Worker
from .._worker_runtime import (
    WorkerContext, _has_async_handler, _ready_frame, note_worker_classes,
)
from ..transports._channel import Channel
from ..transports._frames import Become

__all__ = ["warm_start_path", "WARM_ROUNDS"]

log = logging.getLogger(__name__)

# CPython 3.11 quickens a function after 8 calls; a few more let its instructions specialize.
WARM_ROUNDS = 16


def warm_start_path(node: str, creation: int, rounds: int = WARM_ROUNDS) -> None:
    """Run the side-effect-free steps of a child's start ``rounds`` times (module doc)."""
    note_worker_classes()
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent = Channel(parent_end)
    try:
        for _ in range(rounds):
            _one_start(node, creation, parent, child_end)
    except (OSError, NodeError) as exc:  # the mailbox's address taken: only slower starts
        log.warning("node %s: the children's start path was not warmed up: %s", node, exc)
    finally:
        parent.close()
        child_end.close()


def _one_start(node: str, creation: int, parent: Channel, child_end: socket.socket) -> None:
    # A spare: its channel on the descriptor its zygote handed it, its context.
    channel = Channel(socket.socket(fileno=os.dup(child_end.fileno())))
    ctx = WorkerContext(None, own_pid(node, creation), "")
    try:
        parent.send(Become("warm", "warm", ()))
        channel.receive_one()
        # Its worker's init returned: ready, read by the supervisor.
        channel.send(_ready_frame(None))
        parent.receive(block=True)
        # Serving: the loop a plain worker runs on, its mailbox attached.
        ctx.worker = Worker()
        _has_async_handler(ctx.worker)
        reactor = ctx.attach(Reactor())
        try:
            reactor.add_reader(channel.fileno(), channel.receive)
            ctx.serve()
            reactor.call_soon(time.monotonic)
            reactor.run(lambda: not reactor._ready)
            reactor.remove_reader(channel.fileno())
        finally:
            ctx.close_unused()
            reactor.close()
    finally:
        channel.close()
