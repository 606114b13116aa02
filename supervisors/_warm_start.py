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

Before those (where the two collide in CPython's type attribute cache, the worker's path,
the many children's, keeps its entries), ``SUPERVISOR_ROUNDS`` times, a small supervisor's
start (:func:`_one_supervisor_start`): its runtime made, its decision to start its one
child, ``Become`` to a spare that is only a socket pair, the child's ``ready``, the reports
that follow, a turn of its idle loop. A supervisor runs its start once, so quickening
matters less there than the type attribute cache: each lookup that misses it writes an
entry and drops the name string the entry held, two pages copied in a fresh fork (often two
new ones each time). Measured, 1,000 dormant supervisors + 1 worker each: ~55 private pages
less in each supervisor, its fork of that path ~395 -> ~290 faults; ~2 ms more in the
node's start.

Tried and left out: rehearsing a dormant supervisor's *restart* too (its dead child let go,
the decision, ``Become``, the reports). In a fork of the image it took that death and
decision from ~25 to ~12 faults, but no restart got measurably faster (~40 µs), and its
entries in the type attribute cache displaced some of the worker's: where the interpreter
imports more at start-up (a ``.pth`` file of the site, here), the worker's warmed start lost
most of its gain. The rest of that first restart is not a cache miss (measured by fault
counts per part): the supervisor's first writes after its fork to pages the new child now
shares (~145), and the child's CPython after-fork work (~180-240; ``threading``'s hook ~125,
which cannot run in the node).
"""

from __future__ import annotations

import logging
import os
import socket
import time

from .._address import own_pid
from .._childspec import ChildSpec, ChildType, SupervisorSpec
from .._errors import NodeError
from .._reactor import Reactor
from .._worker import Worker
from .._worker_runtime import (
    WorkerContext, _has_async_handler, _ready_frame, note_worker_classes,
)
from ..transports._channel import Channel
from ..transports._frames import Become, ReadyFrame
from ._events import Init
from ._procs import Proc
from ._runtime import SupervisorRuntime

__all__ = ["warm_start_path", "WARM_ROUNDS"]

log = logging.getLogger(__name__)

# CPython 3.11 quickens a function after 8 calls; a few more let its instructions specialize.
WARM_ROUNDS = 16


def warm_start_path(node: str, creation: int, rounds: int = WARM_ROUNDS) -> None:
    """Run the side-effect-free steps of a child's start ``rounds`` times (module doc)."""
    # A supervisor's first: where the two collide in the type attribute cache, the entries
    # of the worker's path (the many children's) are the ones left in the image.
    try:
        for _ in range(SUPERVISOR_ROUNDS):
            _one_supervisor_start(node)
    except OSError as exc:  # no pidfd for its record: only more pages in each supervisor
        log.warning("node %s: a supervisor's start path was not warmed up: %s", node, exc)
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


# A supervisor's own start runs once in each small supervisor: what matters is CPython's
# type attribute cache, filled here, so the supervisor's lookups hit it (a miss writes an
# entry and drops the string it held: two pages copied, often, each time); and a function's
# first calls (its bytecode quickened after 8).
SUPERVISOR_ROUNDS = 10


def _one_supervisor_start(node: str) -> None:
    """A small supervisor's start of its one child, that child's ``ready`` and the reports
    that follow, and a turn of its idle loop, over socket pairs: the child is a spare that
    never existed (its record watches this process), nothing is forked."""
    up, parent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent, child = Channel(parent_end), Channel(theirs)
    runtime = SupervisorRuntime(SupervisorSpec(children=[ChildSpec(id="warm", start=Worker)]),
                                Channel(up), ("warm",), node)
    spare = Proc(os.getpid(), Channel(mine), None, ChildType.WORKER)
    try:
        runtime.dormant = True
        spare.specs = runtime.static_specs()
        runtime.watch(spare)
        runtime.spares.append(spare)
        runtime.feed(Init(time.monotonic()))  # the decision, and Become to the spare
        child.receive_one()
        child.send(ReadyFrame(pid=os.getpid(), mono=time.monotonic()))
        for key, _ in runtime.sel.select(1.0):  # as its loop takes the child's ready
            handler, obj = key.data
            getattr(runtime, handler)(obj)
        parent.receive()  # its reports and its own ready
        runtime.fire_deadlines()
        runtime.next_deadline()
        runtime.wants_fork_spare()
        runtime.wants_new_zygote()
        runtime.dormant_at()
        runtime.request_spares()
        runtime.check_worker_logs(time.monotonic())
    finally:
        runtime.forget(spare)
        runtime.sel.close()
        runtime.parent.close()
        parent.close()
        child.close()


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
