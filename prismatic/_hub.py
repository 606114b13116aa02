"""The node's hub: registry, monitors and links, exit reasons and dead letters.

Processes reach it over ``AF_UNIX`` at ``\\0prismatic/<node>/hub`` (request/reply frames of
:mod:`.transports._messages`, only from the node's own uid). It runs on the node's loop and
keeps no policy of its own: :mod:`._registry` and :mod:`._links` decide, the hub carries out
their actions.

Credentials are checked at the edge (:mod:`._hub_connection`): only the node's own uid
connects, within the listener's caps, and a request that acts for a process is carried out
only if that process is the connection's own (an emit's source too:
:mod:`._emit_source`). Only the node itself (``caller=None``) acts
for others.

It learns of starts and exits from the tree's lifecycle events (:meth:`Hub.process_started`,
:meth:`Hub.process_exited`), which carry the authoritative exit reason (a supervisor reaps
its children). A process whose exit is not known yet is alive if its mailbox accepts a
connection; a process it monitors or links is also watched with a pidfd, for a death no
supervisor reports (:mod:`._hub_liveness`).

Every Pid the hub keeps is exact (:mod:`._address`): it learns a process's start time when
the tree reports the start, when the process connects (``SO_PEERCRED``) or when a probe
finds it, and completes a Pid given without one (``Pid(node, ospid)``) to the process that
holds that ospid. A Pid that names an earlier holder of a reused ospid, or an earlier
incarnation of the node, is dead: a monitor of it fires ``Down(NoProc)`` at once, a link
to it sends ``Exit(NoProc)``.

``Down`` and ``Exit`` go to the watcher's mailbox over a connection the hub keeps per
process, written without blocking the loop (:mod:`._mailbox_writer`; a full mailbox buffers
in the hub, counted).

A client (a :class:`~prismatic.NodeConnection`: a process outside the tree, with no mailbox)
monitors and links with ``here``: its notices come back on its hub connection, routed by
monitor ref and by link, and its monitors and links end with that connection (a link is
then removed as by ``unlink``: the other end is not signalled).

A monitor or link by name (``(name, node)``, a name of this node, or a global name) is
resolved by the hub when it is asked, on the name's node (over the mesh, ``whereis``); an
unregistered name fires the monitor at once with ``NoProc()`` (a link: ``Exit(NoProc())``),
an unreachable node with ``NoConnection()``. The reply waits for that answer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Callable
from typing import Any

import msgspec

from . import _links, _registry
from ._address import Global, Pid, process_start
from ._emit_source import emit_source_permitted
from ._exit import ExitReason, NoConnection, NoProc
from ._hub_connection import HubConnection, acting_for
from ._hub_liveness import HubLiveness
from ._local_limits import Admissions, LocalLimits, hub_limits
from ._mailbox_writer import MailboxWriter
from ._nodeinfo import creation_of
from ._notices import Down, Exit
from ._throttle import ThrottledWarning
from .transports._framing import ByteBudget, encode_frame
from .transports._messages import (
    GLOBAL_REQUESTS, DeadLetterNote, DemonitorReq, DirectCountsNote, EmitReq, ExitOfReq,
    GlobalWhereisReq, HubReply, LinkReq, MonitorReq, RegisterReq, UnlinkReq, UnregisterReq,
    WhereisReq,
)

__all__ = ["Hub"]

log = logging.getLogger(__name__)

RECENT_EXITS = 10_000  # exit reasons remembered for late monitors and failed calls
DEAD_LETTER_REASONS = frozenset({"noproc", "not_registered", "mailbox_full", "noconnection"})
DEAD_LETTER_KINDS = frozenset({"call", "cast", "info"})


class Hub(HubLiveness):
    """Invariant: ``exits`` holds each process's exit at most once, newest last."""

    def __init__(self, node: str, on_dead_letter: Callable[[DeadLetterNote], None],
                 on_request: Callable[[str], None] = lambda tag: None,
                 on_emit: Callable[[EmitReq, Callable[[HubReply], None]], None] | None = None,
                 limits: LocalLimits | None = None) -> None:
        self.limits = limits if limits is not None else hub_limits()
        self.admissions = Admissions(self.limits)
        self.budget = ByteBudget(self.limits.max_buffered_bytes)
        self.refusals: dict[str, ThrottledWarning] = {}  # a throttle per kind of refusal
        self.frame_warning = ThrottledWarning(log)  # and one for every dropped frame
        self.on_emit = on_emit
        self.on_request = on_request
        self.node = node
        self.creation = creation_of(node)  # this node's incarnation (0 outside a node)
        self.registry = _registry.Registry()
        self.links = _links.Links()
        self.exits: collections.OrderedDict[Pid, ExitReason] = collections.OrderedDict()
        self.live: dict[int, Pid] = {}  # ospid -> the process that holds it now, if known
        self.last_exit: dict[int, Pid] = {}  # ospid -> its latest holder whose exit is known
        self.waiters: dict[Pid, list[tuple[HubConnection, int, asyncio.TimerHandle]]] = {}
        self.outboxes: dict[Pid, _NoticeWriter] = {}
        self.watched: dict[Pid, int] = {}  # monitored or linked processes: their pidfds
        # Clients' monitors and links (``here``): where their notices go.
        self.client_refs: dict[int, HubConnection] = {}  # mref -> its client's connection
        self.client_links: dict[tuple[Pid, Pid], HubConnection] = {}  # (client, other)
        self.on_dead_letter = on_dead_letter
        self.counters = collections.Counter[str]()
        self.server: asyncio.AbstractServer | None = None
        # The global registry's hooks (prismatic.mesh._global_names), set by the node.
        self.on_global: Callable[[Any, Callable[[HubReply], None]], None] | None = None
        self.on_exit: Callable[[Pid], None] | None = None
        # prismatic.mesh._remote.Distribution on a clustered node: monitors and links of
        # processes of other nodes go through it (None: every pid is taken as local).
        self.remote: Any = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        # The loop accepts every queued connection before the hub can refuse any: a backlog
        # under half the descriptor reserve keeps such a burst from eating the reserve.
        sock.listen(max(8, min(1024, self.limits.fd_reserve // 2)))
        self.server = await loop.create_unix_server(lambda: HubConnection(self), sock=sock)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for box in self.outboxes.values():
            box.close()
        for pid in list(self.watched):
            self.unwatch(pid)

    # ---- what the tree tells the hub ----------------------------------------------------------

    def process_started(self, ospid: int) -> None:
        start = process_start(ospid)
        if start:  # else it is gone already: its exit report follows
            self.live[ospid] = Pid(self.node, ospid, self.creation, start)

    def process_exited(self, ospid: int, reason: ExitReason) -> None:
        pid = self.dying(ospid)
        if pid is None or pid in self.exits:
            return
        self.unwatch(pid)
        self.exits[pid] = reason
        self.last_exit[ospid] = pid
        if len(self.exits) > RECENT_EXITS:
            old, _ = self.exits.popitem(last=False)
            if self.last_exit.get(old.ospid) == old:
                del self.last_exit[old.ospid]
        self.registry, _ = _registry.decide(self.registry, _registry.Exited(pid))
        if self.on_exit is not None:
            self.on_exit(pid)  # its global names go too
        self.apply_links(_links.ProcessExited(pid, reason))
        box = self.outboxes.pop(pid, None)
        if box is not None:
            box.close()
        if self.remote is not None:
            self.remote.exited(pid, reason)
        for conn, ref, timer in self.waiters.pop(pid, ()):
            timer.cancel()
            conn.reply(HubReply(ref, reason))

    def dying(self, ospid: int) -> Pid | None:
        """The process at ``ospid`` whose exit is being reported: the one known to hold it,
        else one the hub keeps (watched or named) whose exit it does not know; None for a
        second report of a known exit."""
        pid = self.live.pop(ospid, None)
        if pid is not None:
            return pid
        for kept in (*self.watched, *self.registry.by_pid):
            if kept.ospid == ospid and kept.node == self.node and kept not in self.exits:
                return kept
        if ospid in self.last_exit:
            return None
        return Pid(self.node, ospid, self.creation)

    def complete(self, pid: Pid, probe: bool = True) -> Pid:
        """``pid`` with what the hub knows filled in: a Pid given without its discriminators
        names the process holding that ospid now (asked of its mailbox if ``probe``), or
        else the last one that held it."""
        if pid.exact or pid.node != self.node:
            return pid
        live = self.live.get(pid.ospid)
        if live is not None and pid.names(live):
            return live
        found = self.identify(pid) if probe else None
        if found is not None:
            return found
        last = self.last_exit.get(pid.ospid)
        return last if last is not None and pid.names(last) else pid

    def status(self, pid: Pid) -> tuple[Pid, ExitReason | None]:
        """``pid`` completed, and None if it lives, else its exit reason (NoProc() if
        unknown: a stale Pid is dead whatever now holds its ospid). A process of another
        node is asked of the distribution, which hears of its exit from its own node."""
        if pid.node != self.node and self.remote is not None:
            return pid, self.remote.exit_of(pid)
        pid = self.complete(pid)
        reason = self.exits.get(pid)
        if reason is not None:
            return pid, reason
        found = self.identify(pid)
        if found is not None:
            return found, None
        return pid, NoProc()

    def exit_of(self, pid: Pid) -> ExitReason | None:
        """None if ``pid`` lives, else its exit reason (NoProc() if unknown)."""
        return self.status(pid)[1]

    def counted(self) -> dict[str, int]:
        """Refusals and drops, for the node's metrics (``prismatic_<key>_total``)."""
        c = self.counters
        return {"hub_refused_capacity": c["refused_capacity"],
                "hub_not_permitted": c["not_permitted"],
                "hub_frames_too_big": c["frames_too_big"],
                "hub_frames_over_budget": c["frames_over_budget"],
                "hub_untrusted_mailboxes": c["untrusted_mailbox"]}

    def refuse(self, counter: str, msg: str, *args: object) -> None:
        self.counters[counter] += 1
        warning = self.refusals.get(counter)
        if warning is None:
            warning = self.refusals[counter] = ThrottledWarning(log)
        warning.warn("hub: " + msg, *args)

    # ---- requests --------------------------------------------------------------------------------

    def handle(self, conn: HubConnection, req: Any, caller: Pid | None) -> None:
        """Carry out ``req`` for ``caller``, the process at the other end of ``conn`` (None:
        the node itself, which may act for any process)."""
        self.on_request(type(req).__struct_config__.tag)
        if isinstance(req, DeadLetterNote) and (req.reason not in DEAD_LETTER_REASONS
                                                or req.kind not in DEAD_LETTER_KINDS):
            # Outside the protocol (it would name a topic and a metric label): a malformed
            # frame, whoever it claims to come from.
            self.counters["bad_frames"] += 1
            self.frame_warning.warn("hub: dropped a dead-letter note with reason %r, kind %r",
                                    req.reason[:40], req.kind[:40])
            return
        field, acting = acting_for(req)
        if caller is not None and acting is not None and not acting.names(caller):
            self.refuse("not_permitted", "refused %s for %s from %s: a process acts only as "
                        "itself", type(req).__struct_config__.tag, acting, caller)
            if not isinstance(req, DeadLetterNote):
                conn.reply(HubReply(req.ref, None, "not_permitted",
                                    f"this connection is {caller}'s; it cannot act for {acting}"))
            return
        if acting is not None and not acting.exact:  # keep only exact Pids
            req = msgspec.structs.replace(req, **{field: caller or self.complete(acting)})
        if isinstance(req, WhereisReq):
            conn.reply(HubReply(req.ref, self.registry.names.get(req.name)))
        elif isinstance(req, RegisterReq):
            holder = self.registry.names.get(req.name)
            if holder is not None and holder != req.pid and self.identify(holder) is None:
                # Its replacement is registering before the old exit came up the tree.
                self.registry, _ = _registry.decide(self.registry, _registry.Exited(holder))
            self.registry, answer = _registry.decide(self.registry,
                                                     _registry.Register(req.name, req.pid))
            conn.answer(req.ref, answer)
        elif isinstance(req, UnregisterReq):
            self.registry, answer = _registry.decide(self.registry,
                                                     _registry.Unregister(req.name, req.pid))
            conn.answer(req.ref, answer)
        elif isinstance(req, MonitorReq):
            if req.name is None:
                self.monitor(conn, req, *self.status(req.target))
            else:
                self.resolve_named(req.target, req.name,
                                   lambda pid, known: self.monitor(conn, req, pid, known))
        elif isinstance(req, DemonitorReq):
            self.apply_links(_links.Demonitor(req.watcher, req.mref))
            if conn.monitors.pop(req.mref, None) is not None:
                self.client_refs.pop(req.mref, None)
            conn.reply(HubReply(req.ref, None))
        elif isinstance(req, LinkReq):
            if req.name is None:
                self.link(conn, req, *self.status(req.b))
            else:
                self.resolve_named(req.b, req.name,
                                   lambda pid, known: self.link(conn, req, pid, known))
        elif isinstance(req, UnlinkReq):
            b = self.complete(req.b, probe=False)
            self.unlink(req.a, b)
            if (req.a, b) in conn.links:
                conn.links.discard((req.a, b))
                del self.client_links[(req.a, b)]
            conn.reply(HubReply(req.ref, None))
        elif isinstance(req, ExitOfReq):
            pid = self.complete(req.pid, probe=False)  # waited_out probes, if it comes to that
            reason = self.exits.get(pid)
            if reason is not None or not req.wait > 0:  # NaN too: call_later refuses it
                conn.reply(HubReply(req.ref, reason or NoProc()))
                return
            if pid.exact and self.live.get(pid.ospid, pid) != pid:
                conn.reply(HubReply(req.ref, NoProc()))  # stale: its ospid has a new holder
                return
            # Dead (or dying) but not reported yet: answer when the tree reports it.
            timer = asyncio.get_running_loop().call_later(
                req.wait, self.waited_out, pid, conn, req.ref)
            self.waiters.setdefault(pid, []).append((conn, req.ref, timer))
        elif isinstance(req, EmitReq):
            if not emit_source_permitted(req.source, caller):  # ._emit_source
                self.refuse("not_permitted", "refused an emit as %r from %s: a process emits "
                            "only as itself", req.source[:80], caller)
                conn.reply(HubReply(req.ref, None, "not_permitted",
                                    f"this connection is {caller}'s; it cannot emit as "
                                    f"{req.source[:80]!r}"))
            elif self.on_emit is None:
                conn.reply(HubReply(req.ref, None, "no_event_log", "this hub keeps no log"))
            else:
                self.on_emit(req, conn.reply)
        elif isinstance(req, DeadLetterNote):
            self.on_dead_letter(req)
        elif isinstance(req, DirectCountsNote):
            if self.remote is not None:  # ._direct_counts: a clustered node adds them up
                self.remote.direct_counts(req.counts)
        elif isinstance(req, GLOBAL_REQUESTS):
            if self.on_global is None:
                conn.reply(HubReply(req.ref, None, "no_global", "this hub keeps no global names"))
            else:
                self.on_global(req, conn.reply)

    # ---- monitors and links ----------------------------------------------------------------

    def resolve_named(self, node_of: Pid, name: str | Global,
                      then: Callable[[Pid, ExitReason | None], None]) -> None:
        """Resolve ``name`` (registered on ``node_of.node``, or global) now, on its node, and
        call ``then(pid, exit)``: the holder and its status, or ``Pid(node, 0)`` with
        ``NoProc()`` (nobody holds it) or ``NoConnection()`` (its node is unreachable)."""
        def found(pid: Pid | None, known: ExitReason | None = None) -> None:
            if pid is None:
                then(Pid(node_of.node, 0), known or NoProc())
            else:
                then(*self.status(pid))

        if isinstance(name, Global):
            if self.on_global is None:
                found(None)
            else:
                self.on_global(GlobalWhereisReq(0, name.name), lambda reply: found(
                    msgspec.convert(reply.value, Pid | None) if reply.error is None else None))
        elif node_of.node == self.node or self.remote is None:
            found(self.registry.names.get(name) if node_of.node == self.node else None,
                  None if node_of.node == self.node else NoConnection())
        else:
            self.remote.whereis(node_of.node, name, found)

    def monitor(self, conn: HubConnection, req: MonitorReq, target: Pid,
                exited: ExitReason | None) -> None:
        if conn.closed:
            return  # it left while the name was resolved: nobody to tell
        if req.here:  # a client's: its Down comes back on this connection
            mref = self.links.next_ref
            self.client_refs[mref] = conn
            conn.monitors[mref] = req.watcher
        actions = self.apply_links(_links.Monitor(req.watcher, target, exited, req.name))
        if exited is None:
            self.watch(target)
        conn.reply(HubReply(req.ref, actions[0].mref))

    def link(self, conn: HubConnection, req: LinkReq, b: Pid, exited: ExitReason | None) -> None:
        if conn.closed:
            return
        if req.here:  # a client's: its Exit comes back here; a client is not watched (no
            # supervisor reports its exit: its connection's end does)
            self.client_links[(req.a, b)] = conn
            conn.links.add((req.a, b))
        self.apply_links(_links.Link(req.a, b, exited))
        if exited is None:
            if not req.here:
                self.watch(req.a)
            self.watch(b)
            if b.node != self.node and self.remote is not None:
                self.remote.linked(req.a, b)
        elif req.here:
            self.client_links.pop((req.a, b), None)
            conn.links.discard((req.a, b))
        conn.reply(HubReply(req.ref, b))  # the process linked (a name: its holder)

    def unlink(self, a: Pid, b: Pid) -> None:
        self.apply_links(_links.Unlink(a, b))
        if b.node != self.node and self.remote is not None:
            self.remote.unlinked(a, b)

    def client_gone(self, conn: HubConnection) -> None:
        """A client's hub connection ended: its monitors and links end with it."""
        for mref, watcher in conn.monitors.items():
            self.client_refs.pop(mref, None)
            self.apply_links(_links.Demonitor(watcher, mref))
        remote = False
        for a, b in conn.links:
            self.client_links.pop((a, b), None)
            self.unlink(a, b)
            remote = remote or b.node != self.node
        if remote and conn.caller is not None and self.remote is not None:
            self.remote.forget(conn.caller)
        conn.monitors.clear()
        conn.links.clear()


    def waited_out(self, pid: Pid, conn: HubConnection, ref: int) -> None:
        waiting = self.waiters.get(pid, [])
        self.waiters[pid] = [w for w in waiting if w[1] != ref or w[0] is not conn]
        if not self.waiters[pid]:
            del self.waiters[pid]
        conn.reply(HubReply(ref, NoProc() if self.identify(pid) is None else None))

    def apply_links(self, event: Any) -> list[Any]:
        self.links, actions = _links.decide(self.links, event)
        for action in actions:
            if isinstance(action, _links.SendDown):
                self.deliver(action.to, action.down)
            elif isinstance(action, _links.SendExit):
                self.deliver(action.to, action.exit)
        return actions

    def deliver(self, to: Pid, frame: Any) -> None:
        if to.node != self.node:
            return  # the remote end's own node holds this link too and delivers its notice
        if self.client_refs or self.client_links:
            client = (self.client_refs.pop(frame.ref, None) if isinstance(frame, Down)
                      else self.client_links.pop((to, frame.pid), None)
                      if isinstance(frame, Exit) else None)
            if client is not None:
                client.notice(to, frame)
                return
        box = self.outboxes.get(to)
        if box is None or box.closed:
            box = self.outboxes[to] = _NoticeWriter(self, to)
        box.write(encode_frame(frame))


class _NoticeWriter(MailboxWriter):
    """The hub's connection to a process it sends DOWN and EXIT notices to."""

    def __init__(self, hub: Hub, to: Pid) -> None:
        self.counters = hub.counters
        super().__init__(hub, to)

    def undeliverable(self) -> None:
        self.counters["notice_undeliverable"] += 1

    def buffered(self) -> None:
        self.counters["notice_buffered"] += 1
