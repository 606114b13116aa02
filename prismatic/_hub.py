"""The node's hub: registry, monitors and links, exit reasons and dead letters.

Processes reach it over ``AF_UNIX`` at ``\\0prismatic/<node>/hub`` (request/reply frames of
:mod:`.transports._messages`, only from the node's own uid). It runs on the node's loop and
keeps no policy of its own: :mod:`._registry` and :mod:`._links` decide, the hub carries out
their actions.

Credentials are checked here, at the edge, with ``SO_PEERCRED``: a connection from another
uid is refused; a request that acts for a process (``register``, ``unregister``,
``monitor``, ``demonitor``, ``link``, ``unlink``, a dead letter's sender, an emit's source:
:mod:`._emit_source`) is carried out only if that process is the connection's own (the pid
the kernel recorded when it connected), else refused with ``not_permitted``. Only the node
itself (``caller=None``) acts for others.
The listener is capped (connections in all and per process, a descriptor reserve, frame
size, bytes of unfinished frames: :mod:`._local_limits`); every refusal is counted and
logged, throttled.

It learns of starts and exits from the tree's lifecycle events (:meth:`Hub.process_started`,
:meth:`Hub.process_exited`), which carry the authoritative exit reason (a supervisor reaps
its children). A process whose exit is not known yet is alive if its mailbox accepts a
connection: the mailbox socket closes when the process dies, before its supervisor can
report it, so the probe is never wrong about a dead process.

Monitors and links must fire even for a death no supervisor reports: a process killed with
its supervisor (PDEATHSIG) before that supervisor reported it started (it was still in
``init``) is in no tree. So the hub also watches every process it monitors or links with a
pidfd; when one dies and its exit has not been reported ``UNREPORTED_GRACE_S`` later, the
hub takes it as killed by SIGKILL (the only way a process dies unreported), logs it and
counts it (``unreported_exits``).

Every Pid the hub keeps is exact (:mod:`._address`): it learns a process's start time when
the tree reports the start, when the process connects (``SO_PEERCRED``) or when a probe
finds it, and completes a Pid given without one (``Pid(node, ospid)``) to the process that
holds that ospid. A Pid that names an earlier holder of a reused ospid, or an earlier
incarnation of the node, is dead: a monitor of it fires ``Down(NoProc)`` at once, a link
to it sends ``Exit(NoProc)``.

``Down`` and ``Exit`` go to the watcher's mailbox over a connection the hub keeps per
process, written without blocking the loop (a full mailbox buffers in the hub, counted).

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
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import msgspec

from . import _links, _registry
from ._address import Global, Pid, holder_matches, process_start
from ._emit_source import emit_source_permitted
from ._exit import ExitReason, Killed, NoConnection, NoProc
from ._local_limits import Admissions, LocalLimits, hub_limits
from ._nodeinfo import creation_of, mailbox_address, peer_creds
from ._notices import Down, Exit
from ._throttle import ThrottledWarning, throttle_for
from .transports._framing import ByteBudget, FrameBuffer, encode_frame
from .transports._messages import (
    GLOBAL_REQUESTS, DeadLetterNote, DemonitorReq, EmitReq, ExitOfReq, GlobalRegisterReq,
    GlobalUnregisterReq, GlobalWhereisReq, HubReply, HubRequest, LinkReq, MonitorReq,
    RegisterReq, UnlinkReq, UnregisterReq, WhereisReq,
)

__all__ = ["Hub"]

log = logging.getLogger(__name__)

RECENT_EXITS = 10_000  # exit reasons remembered for late monitors and failed calls
UNREPORTED_GRACE_S = 0.5  # a reported exit (with its real reason) normally comes within ms
DEAD_LETTER_REASONS = frozenset({"noproc", "not_registered", "mailbox_full", "noconnection"})
DEAD_LETTER_KINDS = frozenset({"call", "cast", "info"})
_decoder = msgspec.msgpack.Decoder(HubRequest)


class Hub:
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
        self.waiters: dict[Pid, list[tuple[_HubConnection, int, asyncio.TimerHandle]]] = {}
        self.outboxes: dict[Pid, _NoticeWriter] = {}
        self.watched: dict[Pid, int] = {}  # monitored or linked processes: their pidfds
        # Clients' monitors and links (``here``): where their notices go.
        self.client_refs: dict[int, _HubConnection] = {}  # mref -> its client's connection
        self.client_links: dict[tuple[Pid, Pid], _HubConnection] = {}  # (client, other)
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
        self.server = await loop.create_unix_server(lambda: _HubConnection(self), sock=sock)

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

    def handle(self, conn: _HubConnection, req: Any, caller: Pid | None) -> None:
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
        field, acting = _acting_for(req)
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

    def monitor(self, conn: _HubConnection, req: MonitorReq, target: Pid,
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

    def link(self, conn: _HubConnection, req: LinkReq, b: Pid, exited: ExitReason | None) -> None:
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

    def client_gone(self, conn: _HubConnection) -> None:
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

    def identify(self, pid: Pid) -> Pid | None:
        """The exact Pid of the live process ``pid`` names, or None if there is none."""
        if pid.node == self.node:
            live = self.live.get(pid.ospid)
            if live is not None and pid.names(live):
                return live
        holder = self.probe(pid)
        if holder is None:
            return None
        if holder == 0:  # alive, but it could not be asked who it is
            return pid
        # Not kept in ``live``: only the tree's reports are (a process outside the tree
        # would never be reported gone); a Pid stored from here is retired by ``dying``.
        local = pid.node == self.node
        return Pid(pid.node, pid.ospid, (pid.creation or self.creation) if local else pid.creation,
                   pid.start or process_start(holder))

    def probe_alive(self, pid: Pid) -> bool:
        return self.probe(pid) is not None

    def probe(self, pid: Pid) -> int | None:
        """The OS pid listening at ``pid``'s mailbox if that is the process ``pid`` names
        (0: alive, but not known which), or None: dead. Only a refused connection or another
        holder means dead (a full accept queue is a live process); when the probe itself
        fails (out of file descriptors, say) the process is taken as alive, with a log line
        and a count: a wrong "dead" would fire a false DOWN or give its name away."""
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            return 0 if self.cannot_probe(pid, exc) else None
        try:
            s.setblocking(False)  # never wait on the node's loop for a busy process
            s.connect(mailbox_address(pid.node, pid.ospid))
            if not self.trusted_mailbox(s, pid):
                return None
            holder = peer_creds(s)[0]
            return holder if self.holds(pid, holder) else None
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        except BlockingIOError:
            # Alive, its accept queue full: the kernel records the listener's credentials
            # only on a connection, so check the process that has the ospid (an address is
            # held by its own process unless squatted, which an exact Pid never was).
            return 0 if self.holds(pid, pid.ospid) else None
        except OSError as exc:
            return 0 if self.cannot_probe(pid, exc) else None
        finally:
            s.close()

    def holds(self, pid: Pid, holder: int) -> bool:
        """Whether ``holder``, listening at ``pid``'s mailbox, is the process ``pid`` names."""
        return holder_matches(pid, holder, self.creation if pid.node == self.node else 0)

    def trusted_mailbox(self, sock: socket.socket, pid: Pid) -> bool:
        """Whether a mailbox the hub connected to runs under the node's uid: another user
        may bind a dead process's abstract address, and must not make it look alive or
        receive its notices."""
        holder, uid = peer_creds(sock)
        if uid == os.getuid():
            return True
        self.refuse("untrusted_mailbox", "the mailbox address of %s is held by uid %d, pid "
                    "%d (another user): taken as dead", pid, uid, holder)
        return False

    def cannot_probe(self, pid: Pid, exc: OSError) -> bool:
        self.counters["probe_failed"] += 1
        log.error("hub: cannot tell whether %s lives (%s); taken as alive", pid, exc)
        return True

    # ---- deaths no supervisor reports ------------------------------------------------------

    def watch(self, pid: Pid) -> None:
        """Watch a live process of this node (once), so its death is never missed; one of
        another node is watched by its own node, which tells us of its exit."""
        if pid.node != self.node and self.remote is not None:
            self.remote.watch(pid)
            return
        if pid.node != self.node or pid in self.exits or pid in self.watched:
            return
        try:
            fd = os.pidfd_open(pid.ospid)
            if pid.start and process_start(pid.ospid) != pid.start:
                os.close(fd)  # the pidfd holds another process: pid is gone already
                return
        except OverflowError:
            return  # no process can have this pid
        except OSError as exc:
            if exc.errno not in (errno.ESRCH, errno.EINVAL):  # not "gone" or "no such pid"
                self.counters["watch_failed"] += 1
                log.error("hub: cannot watch %s (an unreported death of it would fire no "
                          "monitor or link): %s", pid, exc)
            return
        self.watched[pid] = fd
        asyncio.get_running_loop().add_reader(fd, self.watched_died, pid)

    def unwatch(self, pid: Pid) -> None:
        fd = self.watched.pop(pid, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def watched_died(self, pid: Pid) -> None:
        self.unwatch(pid)
        asyncio.get_running_loop().call_later(UNREPORTED_GRACE_S, self.unreported, pid)

    def unreported(self, pid: Pid) -> None:
        if pid in self.exits:
            return  # reported, with its real reason
        self.counters["unreported_exits"] += 1
        log.warning("hub: the exit of %s was never reported (its supervisor died with it?); "
                    "taken as killed by SIGKILL", pid)
        self.process_exited(pid.ospid, Killed(signal.SIGKILL))

    def waited_out(self, pid: Pid, conn: _HubConnection, ref: int) -> None:
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


def _acting_for(req: Any) -> tuple[str, Pid | None]:
    """The field naming the process a request acts for (which must be its sender's own) and
    that process, if any."""
    if isinstance(req, (RegisterReq, UnregisterReq, GlobalRegisterReq, GlobalUnregisterReq)):
        return "pid", req.pid
    if isinstance(req, (MonitorReq, DemonitorReq)):
        return "watcher", req.watcher
    if isinstance(req, (LinkReq, UnlinkReq)):
        return "a", req.a
    if isinstance(req, DeadLetterNote):
        return "sender", req.sender
    return "", None


class _HubConnection(asyncio.Protocol):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.frames = FrameBuffer(_decoder, "hub", hub.limits.max_frame_bytes, hub.budget,
                                  hub.frame_warning)
        self.transport: asyncio.Transport | None = None
        self.caller: Pid | None = None  # set once admitted
        self.admitted = False
        self.closed = False
        self.monitors: dict[int, Pid] = {}  # a client's monitors (``here``): mref -> watcher
        self.links: set[tuple[Pid, Pid]] = set()  # and its links: (client, other)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        hub = self.hub
        sock = transport.get_extra_info("socket")
        pid, uid = peer_creds(sock)
        if uid != os.getuid():
            hub.refuse("refused_uid", "refused a connection from uid %d, pid %d (another "
                       "user)", uid, pid)
            transport.close()
            return
        refused = hub.admissions.admit(pid, sock.fileno())
        if refused is not None:
            hub.refuse("refused_capacity", "refused a connection from pid %d: %s", pid, refused)
            transport.close()
            return
        self.admitted = True
        self.caller = Pid(hub.node, pid, hub.creation, process_start(pid))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.frames.release()
        if self.monitors or self.links:
            self.hub.client_gone(self)
        if self.admitted and self.caller is not None:
            self.admitted = False
            self.hub.admissions.release(self.caller.ospid)

    def pause_writing(self) -> None:
        # A client that sends requests without reading the replies: stop reading its
        # requests until it does, rather than buffer replies without bound.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return  # refused: closing
        frames, hub = self.frames, self.hub
        bad, too_big, over = frames.bad_frames, frames.too_big, frames.over_budget
        requests = frames.feed(data)
        hub.counters["bad_frames"] += frames.bad_frames - bad
        hub.counters["frames_too_big"] += frames.too_big - too_big
        hub.counters["frames_over_budget"] += frames.over_budget - over
        for req in requests:
            try:
                hub.handle(self, req, self.caller)
            except Exception as exc:  # noqa: BLE001 - one bad request must not take the node down
                hub.counters["errors"] += 1
                throttle_for(log, "hub request failed").warn(
                    "hub: request %r failed", req, exc_info=exc)
        if frames.broken and self.transport is not None:
            self.transport.close()

    def reply(self, reply: HubReply) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(reply))

    def notice(self, to: Pid, frame: Down | Exit) -> None:
        """A client's monitor or link fired (once): the notice goes on its hub connection."""
        if isinstance(frame, Down):
            self.monitors.pop(frame.ref, None)
        else:
            self.links.discard((to, frame.pid))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(frame))

    def answer(self, ref: int, answer: _registry.Accepted | _registry.Refused) -> None:
        if isinstance(answer, _registry.Refused):
            self.reply(HubReply(ref, None, answer.reason, answer.detail))
        else:
            self.reply(HubReply(ref, True))


class MailboxWriter:
    """A non-blocking connection from the node to the mailbox of one of its processes.

    Invariants: it is connected only if the address's holder runs under the node's uid and
    is the process ``to`` names (else ``closed`` from the start: the process is gone, or
    its ospid has a new holder); a write never blocks the loop (what the socket does not
    take at once waits in ``pending``, in order, until the socket drains). Subclasses count
    what their callers need in :meth:`undeliverable` and :meth:`buffered`; one driven by
    something other than the node's loop says how it waits for the socket to drain
    (:meth:`watch_writable`, then calls :meth:`flush`) and what a broken connection means
    (:meth:`broken`).
    """

    def __init__(self, hub: Hub, to: Pid) -> None:
        self.to = to
        self.pending = bytearray()
        self.closed = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.connect(mailbox_address(to.node, to.ospid))
        except OSError:
            self.undeliverable()  # it died (for a notice: the watcher too, nobody to tell)
            self.closed = True
            self.sock.close()
            return
        if not hub.trusted_mailbox(self.sock, to) or not hub.holds(to, peer_creds(self.sock)[0]):
            self.undeliverable()  # another user's address, or its ospid has a new holder
            self.closed = True
            self.sock.close()
            return
        self.sock.setblocking(False)

    def undeliverable(self) -> None:
        """A write that could not be made (no connection, or it broke)."""

    def buffered(self) -> None:
        """A write that had to wait for the socket to drain."""

    def watch_writable(self, on: bool) -> None:
        """Have :meth:`flush` called when the socket can take more (``on``), or no longer."""
        loop = asyncio.get_running_loop()
        if on:
            loop.add_writer(self.sock.fileno(), self.flush)
        else:
            loop.remove_writer(self.sock.fileno())

    def broken(self, writing: bool) -> None:
        """The connection broke, in a :meth:`write` (``writing``) or a :meth:`flush`."""
        if writing:
            self.undeliverable()
        self.close()

    def write(self, data: bytes) -> None:
        if self.closed:
            self.undeliverable()
            return
        if self.pending:
            self.pending += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken(writing=True)
            return
        if sent < len(data):
            self.buffered()
            self.pending += data[sent:]
            self.watch_writable(True)

    def flush(self) -> None:
        try:
            sent = self.sock.send(self.pending)
        except BlockingIOError:
            return
        except OSError:
            self.broken(writing=False)
            return
        del self.pending[:sent]
        if not self.pending:
            self.watch_writable(False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.pending:
                self.watch_writable(False)
            self.sock.close()


class _NoticeWriter(MailboxWriter):
    """The hub's connection to a process it sends DOWN and EXIT notices to."""

    def __init__(self, hub: Hub, to: Pid) -> None:
        self.counters = hub.counters
        super().__init__(hub, to)

    def undeliverable(self) -> None:
        self.counters["notice_undeliverable"] += 1

    def buffered(self) -> None:
        self.counters["notice_buffered"] += 1
