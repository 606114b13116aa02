"""The generic supervisor loop: carries out what :func:`decide` says, and nothing else.

One supervisor is one OS process running :meth:`SupervisorRuntime.run`: a single-threaded
epoll loop (no asyncio: it only waits on fds and one timer) over

* its parent's channel (API requests routed down the tree by path, EOF = parent gone),
* each child's channel (``ready``/``ignored``/``exiting`` frames; child supervisors also pass
  lifecycle events and replies up through it),
* each child's pidfd, which becomes readable when the child dies: exits are reaped at once,
  never polled for,
* a wakeup fd for SIGTERM (an orderly shutdown request from the parent),
* the earliest SIGKILL deadline of a child being stopped.

Fast starts and restarts: children are made ahead of need as *spares*, idle processes that
block on their channel until told which child to become (``become``), so a restart only waits
for the replacement's ``init``. Spares come from the supervisor's *zygote*
(:mod:`._zygote`), so the supervisor itself forks once and never again; one spare waits at
all times, two while children are being started one after another (the next is made while the
current one runs ``init``). A spare only serves specs its zygote knew; a child added later is
forked directly, and the zygote is renewed once the supervisor is idle. Where the zygote's
clone is unsupported (:func:`sibling_support`), the supervisor forks its spares itself.
"""

from __future__ import annotations

import collections
import heapq
import logging
import os
import selectors
import signal
import socket
import time
from typing import Any

import msgspec

from .._childspec import ChildSpec, ChildType, ShutdownKind, SupervisorSpec
from .._clone import sibling_support
from .._exit import ExitReason, reason_from_wait_status
from .._process import fork_child, send_signal
from .._worker_runtime import exit_code_for
from ..transports._channel import Channel, open_channel_pair
from ..transports._frames import (
    Become, ExitingFrame, IgnoredFrame, LifecycleFrame, ReadyFrame, ReplyFrame, RequestFrame,
)
from ._child import knows, proc_name, run_child, spare_main
from ._decide import decide, initial_state
from ._zygote import Zygote, strays
from ._events import (
    Err, Exit, Exited, Ignored, Init, Op, Phase, Ready, Reply, Report, Request, ShutdownRequested,
    StartFailed, StartProc, StartStep, Started, StopMany, StopProc,
)

__all__ = ["SupervisorRuntime"]

log = logging.getLogger(__name__)

_ZYGOTE_DEATHS_TOLERATED = 3  # then the supervisor forks its spares itself, and says so
_PARK_MAX_S = 0.05  # a start waits this long at most for a spare in the making, then forks
_AHEAD = 2  # spares in the making while starts follow one another

_op_decoder = msgspec.msgpack.Decoder(Op)
_encoder = msgspec.msgpack.Encoder()


class _Proc:
    """A child process as the loop sees it. ``key`` is None for an unassigned spare."""

    __slots__ = ("pid", "pidfd", "channel", "key", "ctype", "ready", "ignored", "reason",
                 "specs", "reading")

    def __init__(self, pid: int, channel: Channel, key: str | None, ctype: ChildType) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.channel = channel
        self.key = key
        self.ctype = ctype
        self.ready = False
        self.ignored = False
        self.reason: ExitReason | None = None
        self.specs: dict[str, ChildSpec] = {}
        self.reading = True  # the channel is registered with the selector


class SupervisorRuntime:
    """Runs one supervisor in the current process until it exits; see the module doc."""

    def __init__(self, spec: SupervisorSpec, parent: Channel, path: tuple[str, ...],
                 node: str, *, spares: int = 1) -> None:
        self.spec = spec
        self.state = initial_state(spec.flags, spec.children)
        self.parent = parent
        self.path = path
        self.node = node
        self.use_spares = spares > 0
        self.sel = selectors.DefaultSelector()
        self.procs: dict[int, _Proc] = {}
        self.starting: _Proc | None = None
        self.parked: tuple[str, ChildSpec] | None = None  # a start waiting for a spare
        self.parked_until = 0.0
        self.spares: collections.deque[_Proc] = collections.deque()
        self.zygote: Zygote | None = None
        self.zygote_specs: dict[str, ChildSpec] = {}
        self.zygote_stale = False
        self.zygote_deaths = 0
        self.use_zygote = True
        self.deadlines: list[tuple[float, int]] = []
        self.forwarded: dict[int, int] = {}
        self.next_ref = 1
        self.exit_reason: ExitReason | None = None
        self.inbox: list[Any] = []

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, lambda *_: None)  # the wakeup fd carries it
        self.sel.register(wake_r, selectors.EVENT_READ, ("signal", wake_r))
        self.sel.register(self.parent.sock, selectors.EVENT_READ, ("parent", None))
        if self.use_spares:
            self.start_zygote()
            self.request_spares()
        self.feed(Init(time.monotonic()))
        while self.exit_reason is None:
            timeout = None
            if self.deadlines or self.parked is not None:
                timeout = max(0.0, self.next_deadline() - time.monotonic())
            elif self.wants_fork_spare() or self.wants_new_zygote():
                timeout = 0.0
            ready = self.sel.select(timeout)
            for key, _ in ready:
                kind, obj = key.data
                if isinstance(obj, _Proc) and self.procs.get(obj.pid) is not obj:
                    continue  # forgotten earlier in this same batch (its exit came first)
                getattr(self, f"on_{kind}")(obj)
                if self.exit_reason is not None:
                    break
            self.fire_deadlines()
            if self.exit_reason is not None:
                break
            if ready:
                self.request_spares()
            elif self.wants_new_zygote():
                self.renew_zygote()
            elif self.wants_fork_spare():
                self.fork_spare()
        return exit_code_for(self.exit_reason)

    def feed(self, event: Any) -> None:
        """Feed an event and carry out the actions; actions may queue further events.

        Reports of one decision go up after its starts and stops, so a replacement's
        ``become`` is not queued behind telling the node about the death; everything sent
        to the parent (reports, replies, ready, exiting) keeps the decision's order."""
        self.inbox.append(event)
        while self.inbox and self.exit_reason is None:
            self.state, actions = decide(self.state, self.inbox.pop(0))
            reports: list[Report] = []
            for action in actions:
                if isinstance(action, Report):
                    reports.append(action)
                    continue
                if isinstance(action, (Reply, Ready, Exit)):
                    self.send_reports(reports)
                self.carry_out(action)
            self.send_reports(reports)

    def send_reports(self, reports: list[Report]) -> None:
        for report in reports:
            self.carry_out(report)
        reports.clear()

    def carry_out(self, a: Any) -> None:
        if isinstance(a, Report):
            ctype = self.child_type(a.key)
            self.parent.try_send(LifecycleFrame(
                path=self.path, kind=a.kind.value, key=a.key, pid=a.pid, reason=a.reason,
                child_type=ctype, mono=time.monotonic(), wall=time.time()))
        elif isinstance(a, StartProc):
            self.start_proc(a.key, a.spec)
        elif isinstance(a, StopProc):
            self.stop_proc(a.pid, a.shutdown)
        elif isinstance(a, StopMany):
            for pid in a.pids:
                self.stop_proc(pid, a.shutdown)
        elif isinstance(a, Reply):
            self.parent.try_send(ReplyFrame(a.ref, msgspec.Raw(_encoder.encode(a.result))))
        elif isinstance(a, Ready):
            self.parent.try_send(ReadyFrame(pid=os.getpid(), mono=time.monotonic()))
        elif isinstance(a, Exit):
            self.kill_spares()
            self.parent.try_send(ExitingFrame(a.reason))
            self.exit_reason = a.reason

    def name(self) -> str:
        return "/".join(self.path) or "root"

    def child_type(self, key: str) -> str:
        for c in self.state.children:
            if c.key == key:
                return c.spec.type.value  # type: ignore[union-attr]
        return ChildType.WORKER.value

    # ---- starting ---------------------------------------------------------------------------

    def start_proc(self, key: str, spec: ChildSpec) -> None:
        proc = self.take_spare(key, spec)
        if proc is None and self.zygote is not None and self.zygote.pending \
                and knows(self.zygote_specs, key, spec):
            # A spare is on its way, which is quicker than forking here; a zygote that does
            # not answer in time (stopped, hung) is not waited for (see fire_deadlines).
            self.parked = (key, spec)
            self.parked_until = time.monotonic() + _PARK_MAX_S
            return
        self.starting = proc if proc is not None else self.fork_for(key, spec)

    def fork_for(self, key: str, spec: ChildSpec) -> _Proc:
        mine, theirs = open_channel_pair()
        path = (*self.path, key)
        pid = fork_child((theirs.fileno(),), lambda: run_child(spec, theirs, path, self.node),
                         proc_name(spec, key))
        theirs.close()
        proc = _Proc(pid, mine, key, spec.type)  # type: ignore[arg-type]
        self.watch(proc)
        return proc

    def take_spare(self, key: str, spec: ChildSpec) -> _Proc | None:
        while self.spares:
            spare = self.spares[0]
            if not knows(spare.specs, key, spec):
                self.zygote_stale = True  # renewed when idle, so the next restart is fast
                return None
            self.spares.popleft()
            dynamic = key != spec.id
            try:
                spare.channel.send(Become(key, spec.id, spec.args if dynamic else ()))
            except (TypeError, msgspec.EncodeError):
                self.spares.appendleft(spare)
                return None  # args that do not encode take the fork path
            except OSError:
                continue  # a dead spare: reaped when its pidfd says so; try the next
            spare.key = key
            spare.ctype = spec.type  # type: ignore[assignment]
            return spare
        return None

    def static_specs(self) -> dict[str, ChildSpec]:
        return {c.spec.id: c.spec for c in self.state.children if not c.dynamic}

    # ---- spares -----------------------------------------------------------------------------

    def start_zygote(self) -> None:
        why = sibling_support()
        if why is not None:
            # The operator's choice needs no line per supervisor; a platform without it does.
            level = logging.DEBUG if "PRISMATIC_ZYGOTE" in why else logging.INFO
            log.log(level, "supervisor %s forks its own spares (no zygote: %s)", self.name(), why)
            self.use_zygote = False
            return
        self.zygote_specs = self.static_specs()
        specs = self.zygote_specs
        self.zygote = Zygote(lambda channel: spare_main(channel, specs, self.path, self.node),
                             "prism:zygote")
        self.sel.register(self.zygote.sock, selectors.EVENT_READ, ("zygote", None))
        self.sel.register(self.zygote.pidfd, selectors.EVENT_READ, ("zygote_exit", None))
        self.zygote_stale = False

    def request_spares(self) -> None:
        """Keep one spare waiting, two while starts follow one another (the next is made
        while the current one runs ``init``)."""
        zygote = self.zygote
        if zygote is None or self.exit_reason is not None \
                or self.state.phase in (Phase.STOPPING, Phase.STOPPED):
            return
        if self.starting is not None or self.parked is not None:
            job = self.state.job
            more = job is not None and any(isinstance(s, StartStep) for s in job.steps)
            # A lone restart gets its successor spare once it is done: made now, it would
            # take a CPU from the replacement's init.
            want = _AHEAD if more else 0
        else:
            want = 1
        while len(self.spares) + len(zygote.pending) < want:
            if zygote.request() is None:
                return  # the zygote is dead; its pidfd reports it

    def on_zygote(self, _: Any) -> None:
        if self.zygote is None:
            return  # dropped earlier in this same batch of events (its death came first)
        self.adopt(self.zygote.answers(), self.zygote_specs)

    def adopt(self, answers: list[tuple[Channel, int]], specs: dict[str, ChildSpec]) -> None:
        for channel, pid in answers:
            if pid < 0:
                log.error("supervisor %s: its zygote could not make a spare: %s",
                          self.name(), os.strerror(-pid))
                channel.close()
                continue
            proc = _Proc(pid, channel, None, ChildType.WORKER)
            proc.specs = specs
            self.watch(proc)
            self.spares.append(proc)
        if self.parked is not None and (self.spares or not self.zygote
                                        or not self.zygote.pending):
            key, spec = self.parked
            self.parked = None
            self.start_proc(key, spec)

    def on_zygote_exit(self, _: Any) -> None:
        """The zygote died (it never exits by itself while we live): adopt what it answered,
        kill the spares it made but never answered for, and make a new one."""
        zygote = self.zygote
        if zygote is None:
            return  # already dropped (renewed) earlier in this batch
        answered = zygote.answers()
        self.drop_zygote()
        self.adopt(answered, self.zygote_specs)
        self.zygote_deaths += 1
        log.warning("supervisor %s: zygote %d died (%d so far)", self.name(), zygote.pid,
                    self.zygote_deaths)
        for pid in strays(set(self.procs)):
            log.warning("supervisor %s: killing spare %d of the dead zygote", self.name(), pid)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if self.zygote_deaths >= _ZYGOTE_DEATHS_TOLERATED:
            log.error("supervisor %s: zygote died %d times; forking spares here from now on",
                      self.name(), self.zygote_deaths)
            self.use_zygote = False

    def drop_zygote(self) -> None:
        zygote, self.zygote = self.zygote, None
        if zygote is not None:
            self.sel.unregister(zygote.sock)
            self.sel.unregister(zygote.pidfd)
            zygote.kill()

    def wants_new_zygote(self) -> bool:
        return (self.use_spares and self.use_zygote and self.idle()
                and (self.zygote is None or self.zygote_stale))

    def renew_zygote(self) -> None:
        """Replace a zygote whose specs are out of date (or that died): its spares go too."""
        zygote, self.zygote = self.zygote, None
        if zygote is not None:
            self.sel.unregister(zygote.sock)
            self.sel.unregister(zygote.pidfd)
            self.adopt(zygote.close(), self.zygote_specs)
        for spare in list(self.spares):
            self.kill_spare(spare)
        self.start_zygote()
        self.request_spares()

    def idle(self) -> bool:
        return (self.state.job is None and self.exit_reason is None and self.parked is None
                and self.starting is None and self.state.phase is Phase.RUNNING)

    def wants_fork_spare(self) -> bool:
        """Without a zygote, the supervisor forks its one spare itself, when idle."""
        return self.use_spares and not self.use_zygote and not self.spares and self.idle()

    def fork_spare(self) -> None:
        mine, theirs = open_channel_pair()
        specs = self.static_specs()
        pid = fork_child((theirs.fileno(),),
                         lambda: spare_main(theirs, specs, self.path, self.node), "prism:spare")
        theirs.close()
        proc = _Proc(pid, mine, None, ChildType.WORKER)
        proc.specs = specs
        self.watch(proc)
        self.spares.append(proc)

    def kill_spare(self, spare: _Proc) -> None:
        self.spares.remove(spare)
        send_signal(spare.pidfd, signal.SIGKILL)
        os.waitpid(spare.pid, 0)
        self.forget(spare)

    def kill_spares(self) -> None:
        """On the way out: spares and the zygote go first (spares the zygote has not
        answered for die by PDEATHSIG with this process)."""
        for spare in list(self.spares):
            self.kill_spare(spare)
        self.drop_zygote()

    # ---- stopping ---------------------------------------------------------------------------

    def stop_proc(self, pid: int, shutdown: Any) -> None:
        proc = self.procs.get(pid)
        if proc is None:
            return  # already reaped; its exit is in the machine's deferred events
        if shutdown is ShutdownKind.BRUTAL_KILL:
            send_signal(proc.pidfd, signal.SIGKILL)
            return
        send_signal(proc.pidfd, signal.SIGTERM)
        if isinstance(shutdown, float):
            heapq.heappush(self.deadlines, (time.monotonic() + shutdown, pid))

    def next_deadline(self) -> float:
        due = self.deadlines[0][0] if self.deadlines else float("inf")
        return min(due, self.parked_until) if self.parked is not None else due

    def fire_deadlines(self) -> None:
        now = time.monotonic()
        if self.parked is not None and self.parked_until <= now:
            key, spec = self.parked
            self.parked = None
            log.warning("supervisor %s: no spare from the zygote within %.0f ms; forking %r "
                        "directly", self.name(), _PARK_MAX_S * 1000, key)
            self.starting = self.fork_for(key, spec)
        while self.deadlines and self.deadlines[0][0] <= now:
            _, pid = heapq.heappop(self.deadlines)
            proc = self.procs.get(pid)
            if proc is not None:
                send_signal(proc.pidfd, signal.SIGKILL)

    # ---- fd events --------------------------------------------------------------------------

    def watch(self, proc: _Proc) -> None:
        self.procs[proc.pid] = proc
        self.sel.register(proc.pidfd, selectors.EVENT_READ, ("exit", proc))
        self.sel.register(proc.channel.sock, selectors.EVENT_READ, ("child", proc))

    def forget(self, proc: _Proc) -> None:
        self.procs.pop(proc.pid, None)
        self.sel.unregister(proc.pidfd)
        os.close(proc.pidfd)
        if proc.reading:
            self.sel.unregister(proc.channel.sock)
        proc.channel.close()

    def on_signal(self, sock: socket.socket) -> None:
        try:
            sigs = sock.recv(64)
        except BlockingIOError:
            return
        if signal.SIGTERM in sigs:
            self.feed(ShutdownRequested(time.monotonic()))

    def on_exit(self, proc: _Proc) -> None:
        try:
            _, status = os.waitpid(proc.pid, 0)
        except ChildProcessError:
            status = 0
        for frame in proc.channel.drain():  # its exiting frame, if any, is buffered
            self.on_frame(proc, frame)
        self.forget(proc)
        reason = proc.reason or reason_from_wait_status(status)
        now = time.monotonic()
        if proc.key is None:
            # Not a child of the tree: nothing to restart. Another is made when wanted.
            log.warning("supervisor %s: spare process %d died: %s", self.name(), proc.pid,
                        reason)
            self.spares.remove(proc)
        elif proc is self.starting:
            self.starting = None
            if proc.ignored:
                self.feed(Ignored(proc.key, now))  # type: ignore[arg-type]
            else:
                self.feed(StartFailed(proc.key, reason, now))  # type: ignore[arg-type]
        else:
            self.feed(Exited(proc.pid, reason, now))

    def on_child(self, proc: _Proc) -> None:
        for frame in proc.channel.receive():
            self.on_frame(proc, frame)
        if proc.channel.closed and proc.reading:
            self.sel.unregister(proc.channel.sock)
            proc.reading = False

    def on_frame(self, proc: _Proc, frame: Any) -> None:
        if isinstance(frame, LifecycleFrame):
            self.parent.try_send(frame)  # from a child supervisor: pass it up unchanged
        elif isinstance(frame, ReadyFrame):
            if proc is self.starting:
                proc.ready = True
                self.starting = None
                self.feed(Started(proc.key, proc.pid, time.monotonic()))  # type: ignore
        elif isinstance(frame, ExitingFrame):
            proc.reason = frame.reason
        elif isinstance(frame, IgnoredFrame):
            proc.ignored = True
        elif isinstance(frame, ReplyFrame):
            ref = self.forwarded.pop(frame.ref, None)
            if ref is not None:
                self.parent.try_send(ReplyFrame(ref, frame.result))
        else:
            log.warning("supervisor %s: unexpected frame from child %d: %r",
                        "/".join(self.path) or "root", proc.pid, frame)

    def on_parent(self, _: Any) -> None:
        for frame in self.parent.receive():
            if isinstance(frame, RequestFrame):
                self.on_request(frame)
            else:
                log.warning("supervisor: unexpected frame from parent: %r", frame)
        if self.parent.closed:
            # The parent is gone; PDEATHSIG is killing us. Take the subtree down now.
            for proc in list(self.procs.values()):
                send_signal(proc.pidfd, signal.SIGKILL)
            os._exit(1)

    def on_request(self, frame: RequestFrame) -> None:
        if frame.path:
            self.forward(frame)
            return
        try:
            op = _op_decoder.decode(frame.op)
        except (ValueError, RecursionError) as exc:  # undecodable, bad UTF-8, bottomless
            self.parent.try_send(ReplyFrame(frame.ref, msgspec.Raw(_encoder.encode(
                Err("badarg", str(exc))))))
            return
        self.feed(Request(frame.ref, op, time.monotonic()))

    def forward(self, frame: RequestFrame) -> None:
        key = frame.path[0]
        target = next((p for p in self.procs.values()
                       if p.key == key and p.ready and p.ctype is ChildType.SUPERVISOR), None)
        if target is None:
            err = Err("not_found", f"no running supervisor {key!r} under "
                                   f"{'/'.join(self.path) or 'root'}")
            self.parent.try_send(ReplyFrame(frame.ref, msgspec.Raw(_encoder.encode(err))))
            return
        ref, self.next_ref = self.next_ref, self.next_ref + 1
        self.forwarded[ref] = frame.ref
        target.channel.try_send(RequestFrame(ref, frame.path[1:], frame.op))
