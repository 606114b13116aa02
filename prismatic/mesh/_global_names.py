"""The node's global registry: carries out what :func:`._global.decide` decides.

It runs on the node's loop, between the hub (a process's ``g_register``/``g_unregister``/
``g_whereis`` requests; the exits of this node's processes) and the mesh loop (the global
frames of :mod:`prismatic.transports._global_frames`; the members it believes alive, with
their incarnations). A node without the mesh keeps global names too: it is a cluster of one.

A reply to a process is sent when the machine answers (a registration waits for its name's
leader, one round trip on the mesh); a lost name is told to its process as a
:class:`~prismatic.GlobalNameConflict` in its mailbox. Counters for the node's metrics:
``global_conflicts`` (heals that resolved a name twice held), ``global_stale_frames``
(frames from a member this node believes gone, and verdicts from a node no longer the claim's
leader, dropped).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec

from .._address import Pid
from .._notices import GlobalNameConflict
from ..transports._messages import (
    GlobalRegisterReq, GlobalUnregisterReq, GlobalWhereisReq, HubReply,
)
from ._global import (
    Count, GlobalState, NodeDown, NodeUp, Notify, ProcessExited, Received, Register, Reply,
    SendTo, Tick, Unregister, decide, initial_state, next_wake, whereis,
)

__all__ = ["GlobalNames"]

log = logging.getLogger(__name__)


class GlobalNames:
    def __init__(self, node: str, deliver: Callable[[Pid, Any], None],
                 is_dead: Callable[[Pid], bool]) -> None:
        self.node = node
        self.deliver = deliver  # a frame to a local process's mailbox (the hub's writer)
        self.is_dead = is_dead
        self.state: GlobalState = initial_state(node, "", time.monotonic())
        self.send: Callable[[str, Any], None] | None = None  # to a member, by name (mesh)
        self.waiting: dict[int, tuple[Callable[[HubReply], None], int, Pid]] = {}
        self.refs = itertools.count(1)
        self.counts: Counter[str] = Counter()
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def attach(self, addr: str, send: Callable[[str, Any], None]) -> None:
        """The mesh is up: frames go out through ``send``; ``addr`` is our mesh address."""
        self.state = msgspec.structs.replace(self.state, addr=addr)
        self.send = send

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()

    # ---- from the hub ------------------------------------------------------------------------

    def on_request(self, req: Any, reply: Callable[[HubReply], None]) -> None:
        now = time.monotonic()
        if isinstance(req, GlobalWhereisReq):
            reply(HubReply(req.ref, whereis(self.state, req.name)))
            return
        if not isinstance(req.name, str) or not req.name:
            reply(HubReply(req.ref, None, "badarg", "a global name is a non-empty string"))
            return
        ref = next(self.refs)
        self.waiting[ref] = (reply, req.ref, req.pid)
        if isinstance(req, GlobalRegisterReq):
            if self.is_dead(req.pid):
                self.waiting.pop(ref)
                reply(HubReply(req.ref, None, "noproc", f"{req.pid} is not alive"))
                return
            self.feed(Register(now, ref, req.name, req.pid, time.time_ns()))
        elif isinstance(req, GlobalUnregisterReq):
            self.feed(Unregister(now, ref, req.name, req.pid))

    def process_exited(self, pid: Pid) -> None:
        for ref in [r for r, w in self.waiting.items() if w[2] == pid]:
            del self.waiting[ref]  # nobody to answer
        self.feed(ProcessExited(time.monotonic(), pid))

    # ---- from the mesh -----------------------------------------------------------------------

    def members(self, alive: dict[str, int]) -> None:
        """The members the mesh now believes alive (or suspect), with incarnations."""
        now = time.monotonic()
        for node in sorted(self.state.alive):
            if node not in alive:
                self.feed(NodeDown(now, node))
        for node, inc in sorted(alive.items()):
            if self.state.alive.get(node) != inc:
                self.feed(NodeUp(now, node, inc))

    def received(self, frame: Any) -> None:
        self.feed(Received(time.monotonic(), frame))

    # ---- the machine ---------------------------------------------------------------------------

    def feed(self, event: Any) -> None:
        if self.closed:
            return
        self.state, actions = decide(self.state, event)
        for a in actions:
            if isinstance(a, SendTo):
                if self.send is not None:
                    self.send(a.node, a.frame)
            elif isinstance(a, Reply):
                waiting = self.waiting.pop(a.ref, None)
                if waiting is not None:
                    reply, hub_ref, _ = waiting
                    reply(HubReply(hub_ref, True) if a.error is None
                          else HubReply(hub_ref, a.holder, a.error, a.detail))
            elif isinstance(a, Notify):
                log.warning("global name %r: %s lost it to %s when a partition healed",
                            a.name, a.pid, a.winner)
                self.deliver(a.pid, GlobalNameConflict(a.name, a.winner))
            elif isinstance(a, Count):
                self.counts[f"global_{a.what}"] += 1
        self.schedule()

    def schedule(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = max(0.0, next_wake(self.state) - time.monotonic())
        self.timer = loop.call_later(delay, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        self.feed(Tick(time.monotonic()))

