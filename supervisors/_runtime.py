"""The generic supervisor loop: carries out what :func:`decide` says, and nothing else.

One supervisor is one OS process running :meth:`SupervisorRuntime.run`: a single-threaded
epoll loop (no asyncio: it only waits on fds and one timer) over

* its parent's channel (API requests routed down the tree by path, EOF = parent gone),
* each child's channel (``ready``/``ignored``/``exiting`` frames; child supervisors also pass
  lifecycle events and replies up through it),
* each child's pidfd, which becomes readable when the child dies: exits are reaped at once,
  never polled for,
* a wakeup fd for SIGTERM (an orderly shutdown request from the parent) and SIGCHLD (a
  death among its children, including processes it adopted as a child subreaper: orphans
  are swept once the batch of events is handled, off the restart's path; see :mod:`._procs`),
* the earliest SIGKILL deadline of a child being stopped (none for ``shutdown=0``: SIGKILL
  follows SIGTERM at once, OTP's ``exit(Child, shutdown)`` then ``kill`` on timeout 0),
* its name's listening socket, if its spec registers a name (:mod:`._names`): look-ups are
  accepted and closed.

Fast starts and restarts: children are made ahead of need as *spares*, idle processes that
block on their channel until told which child to become (``become``), so a restart only waits
for the replacement's ``init``. Which spares exist and where they come from (the zygote, or
this process when the zygote's clone is unsupported) is :mod:`._procs`'s business; this loop
adds the zygote's socket and pidfd to what it waits on, and a deadline for a start that waits
for a spare in the making.

Program children (``start=Program(...)``, :mod:`._program_loop`) add, while they run, their
stdout/stderr pipes, and while they start, their readiness check's descriptors (a notify
socket, a connect in progress, a probe's pidfd) and timers (the start deadline, a port
check's retry). Their stop sends the program's own stop signal; SIGKILL at the deadline
goes to the whole process group.
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
from typing import TYPE_CHECKING, Any

import msgspec

from .._childspec import ChildSpec, ChildType, ShutdownKind, Strategy, SupervisorSpec
from .._errors import RegistryError
from .._exit import ExitReason, reason_from_exception, reason_from_wait_status
from .._program import Program
from .._process import become_subreaper, kill_group, send_signal
from .._reactor import open_signal_wakeup, signals_received
from .._worker_runtime import exit_code_for
from ..transports._channel import Channel
from ..transports._frames import (
    ExitingFrame, IgnoredFrame, LifecycleFrame, ReadyFrame, ReplyFrame, RequestFrame,
    TroubleFrame,
)
from ._child import knows, proc_name, run_child
from ._borrowing import Borrowing
from ._lending import LenderLink
from ._decide import decide, initial_state
from ._names import NameSocket
from ._trouble import Trouble
from ._events import (
    Err, Exit, Exited, Ignored, Init, Ok, Op, Phase, Ready, Reply, Report, Request,
    ShutdownRequested,
    StartFailed, StartProc, Started, StopMany, StopProc,
)
from ._logfile import WORKER_LOG_CHECK_S
from ._procs import (
    FEW_CHILDREN, PARK_MAX_S, Proc, SpareKeeping, fork_with_channel, spare_idle_s,
)
from ._program_loop import ProgramKeeping
from ._zygote import Zygote

if TYPE_CHECKING:  # imported by the root alone, when it starts the lender (_borrowing)
    from ._lender import LenderHandle

__all__ = ["SupervisorRuntime"]

log = logging.getLogger(__name__)

# A SIGCHLD's orphan sweep lists this process's children (/proc), O(children) in the
# kernel: ~1 ms at 2,000. Run one per SIGCHLD and a supervisor stopping its N children paid
# O(N^2) (5,000 children: most of a minute). So the next sweep waits this many times the CPU
# the last one took (sweeps stay under ~5% of the loop), and never more than SWEEP_DELAY_MAX_S:
# a small supervisor still sweeps at once; a large one kills an orphan within ~0.1 s.
SWEEP_DUTY = 20
SWEEP_DELAY_MAX_S = 0.25

_op_decoder = msgspec.msgpack.Decoder(Op)
_encoder = msgspec.msgpack.Encoder()


class SupervisorRuntime(SpareKeeping, ProgramKeeping, Borrowing):
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
        self.procs: dict[int, Proc] = {}
        self.probes: dict[int, Proc] = {}
        self.alive_timers: list[tuple[float, int, int]] = []
        self.log_check_at = 0.0  # when the workers' log sizes are looked at next (0: never)
        self.starting: Proc | None = None
        self.parked: tuple[str, ChildSpec] | None = None  # a start waiting for a spare
        self.parked_until = 0.0
        self.spares: collections.deque[Proc] = collections.deque()
        self.zygote: Zygote | None = None
        self.zygote_specs: dict[str, ChildSpec] = {}
        self.zygote_stale = False
        self.zygote_deaths = 0
        self.lender: LenderHandle | None = None  # the root's (see _lender)
        self.lending: LenderLink | None = None  # a link to it, opened at its first use
        self.taken: tuple[int, Channel] | None = None  # the shared spare, not told yet
        self.use_zygote = True
        self.deadlines: list[tuple[float, int]] = []
        self.forwarded: dict[int, int] = {}
        self.next_ref = 1
        self.exit_reason: ExitReason | None = None
        self.inbox: list[Any] = []
        self.sweep_due = False  # a SIGCHLD came: orphans may wait to be killed or reaped
        self.sweep_after = 0.0  # no sweep before (monotonic): see SWEEP_DUTY
        self.spares_after = 0.0
        self.clone_backoff = 0.0
        self.busy_at = time.monotonic()
        self.dormant = False
        self.woken = False
        self.idle_limit = spare_idle_s()

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        wake_r, _wake_w = open_signal_wakeup()  # both ends live as long as this loop
        signal.signal(signal.SIGTERM, lambda *_: None)  # the wakeup fd carries it
        signal.signal(signal.SIGCHLD, lambda *_: None)  # and this one
        try:
            become_subreaper()
        except OSError as exc:
            log.error("supervisor %s: orphans of its children will go to init: %s",
                      self.name(), exc)
            self.trouble(Trouble.NO_SUBREAPER)
        self.sel.register(wake_r, selectors.EVENT_READ, ("on_signal", wake_r))
        self.sel.register(self.parent.sock, selectors.EVENT_READ, ("on_parent", None))
        if self.spec.name is not None:
            try:
                names = NameSocket(self.node, self.spec.name)
            except RegistryError as exc:  # OTP's {error, {already_started, Pid}}
                self.parent.try_send(ExitingFrame(reason_from_exception(exc)))
                return 1
            self.sel.register(names.sock, selectors.EVENT_READ, ("on_name_lookup", names))
        if not self.path and self.use_spares and self.idle_limit != float("inf"):
            self.start_lender()  # before any other fork: each child holds the tree it knows
        if self.use_spares and self.path and len(self.spec.children) <= FEW_CHILDREN \
                and self.spec.flags.strategy is not Strategy.SIMPLE_ONE_FOR_ONE \
                and self.idle_limit != float("inf"):  # PRISMATIC_SPARE_IDLE=never: keep them
            self.dormant = True  # starts its few children itself: see _procs (dormancy)
            self.fork_first_children()
        elif self.use_spares:
            self.start_zygote()
            self.request_spares()
        self.feed(Init(time.monotonic()))
        while self.exit_reason is None:
            timeout = None
            if self.deadlines or self.parked is not None or self.alive_timers \
                    or self.log_check_at or (
                    self.starting is not None and self.starting.program is not None):
                timeout = max(0.0, self.next_deadline() - time.monotonic())
            if self.wants_fork_spare() or self.wants_new_zygote():
                # Now, whatever deadline is due later (a running worker's log check always is):
                # the spare a restart is owed must not wait seconds for it.
                timeout = 0.0
            dormant_at = self.dormant_at()
            if dormant_at != float("inf"):
                wait = max(0.0, dormant_at - time.monotonic())
                timeout = wait if timeout is None else min(timeout, wait)
            if self.spares_after:  # a clone failed: ask for a spare again when it is time
                wait = max(0.0, self.spares_after - time.monotonic())
                timeout = wait if timeout is None else min(timeout, wait)
            if self.sweep_due:
                wait = max(0.0, self.sweep_after - time.monotonic())
                timeout = wait if timeout is None else min(timeout, wait)
            ready = self.sel.select(timeout)
            for key, _ in ready:
                # The handler's name as registered: a literal, so interned. CPython's type
                # attribute cache matches a name by its address: a string made per event
                # would miss it, and each miss writes an entry and drops the string it held
                # (pages copied, event after event).
                handler, obj = key.data
                if isinstance(obj, Proc) and self.procs.get(obj.pid) is not obj:
                    continue  # forgotten earlier in this same batch (its exit came first)
                getattr(self, handler)(obj)
                if self.exit_reason is not None:
                    break
            self.fire_deadlines()
            if self.inbox:  # a start that failed outside a decision (not_forked)
                self.drain_inbox()
            if self.exit_reason is not None:
                break
            if ready or (self.spares_after and time.monotonic() >= self.spares_after):
                self.request_spares()
            if self.sweep_due and time.monotonic() >= self.sweep_after:
                self.sweep_due = False
                cpu = time.thread_time()  # CPU, not wall time: preemption is not its cost
                self.sweep_orphans()
                self.sweep_after = time.monotonic() + min(
                    SWEEP_DUTY * (time.thread_time() - cpu), SWEEP_DELAY_MAX_S)
            elif self.wants_new_zygote():
                self.renew_zygote()
            elif self.wants_fork_spare():
                self.fork_spare()
            elif time.monotonic() >= self.dormant_at():
                self.go_dormant()
        return exit_code_for(self.exit_reason)

    def feed(self, event: Any) -> None:
        """Feed an event and carry out the actions; actions may queue further events.

        Reports of one decision go up after its starts and stops, so a replacement's
        ``become`` is not queued behind telling the node about the death; everything sent
        to the parent (reports, replies, ready, exiting) keeps the decision's order."""
        self.inbox.append(event)
        self.drain_inbox()

    def drain_inbox(self) -> None:
        """Decide on every queued event, in order (see :meth:`feed`)."""
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
            self.parent.try_send(LifecycleFrame(
                path=self.path, kind=a.kind.value, key=a.key, pid=a.pid, reason=a.reason,
                child_type=a.child_type.value, mono=time.monotonic(), wall=time.time()))
        elif isinstance(a, StartProc):
            self.start_proc(a.key, a.spec)
        elif isinstance(a, StopProc):
            self.stop_proc(a.pid, a.shutdown)
        elif isinstance(a, StopMany):
            for pid in a.pids:
                self.stop_proc(pid, a.shutdown)
        elif isinstance(a, Reply):
            self.parent.try_send(ReplyFrame(a.ref, self.encode_result(a.result)))
        elif isinstance(a, Ready):
            self.parent.try_send(ReadyFrame(pid=os.getpid(), mono=time.monotonic()))
        elif isinstance(a, Exit):
            self.kill_spares()
            self.sweep_orphans()  # every child is gone: whatever is left is an orphan
            self.parent.try_send(ExitingFrame(a.reason))
            self.exit_reason = a.reason

    def name(self) -> str:
        return "/".join(self.path) or "root"

    def encode_result(self, result: Ok | Err) -> msgspec.Raw:
        """A reply as it goes up; one that does not encode (a static child's args or a
        start's info that msgpack cannot carry) is answered ``unencodable``, and logged."""
        try:
            return msgspec.Raw(_encoder.encode(result))
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            log.error("supervisor %s: a reply does not encode: %s", self.name(), exc)
            self.trouble(Trouble.UNENCODABLE_REPLY)
            return msgspec.Raw(_encoder.encode(Err("unencodable", str(exc))))

    # ---- starting ---------------------------------------------------------------------------

    def start_proc(self, key: str, spec: ChildSpec) -> None:
        if isinstance(spec.start, Program):  # never a spare: see _program_run
            try:
                self.starting = self.fork_program(key, spec.start, spec.args)
            except OSError as exc:  # neither spawned nor forked (the process limit)
                self.starting = None
                self.not_forked(key, exc)
            return
        dormant = self.dormant
        if self.state.phase is not Phase.STARTING:
            self.wake()  # a dormant supervisor forks this one; its spares come back after
        proc = self.take_spare(key, spec)
        if proc is None and self.zygote is not None and self.zygote.pending \
                and knows(self.zygote_specs, key, spec):
            # A spare is on its way, which is quicker than forking here; a zygote that does
            # not answer in time (stopped, hung) is not waited for (see fire_deadlines).
            self.parked = (key, spec)
            self.parked_until = time.monotonic() + PARK_MAX_S
            return
        if proc is None and dormant and self.state.phase is not Phase.STARTING:
            proc = self.borrow(key, spec)
        self.starting = proc if proc is not None else self.fork_for(key, spec)

    def fork_for(self, key: str, spec: ChildSpec) -> Proc | None:
        """Fork child ``key`` here; None if the fork failed (then it is a start failure)."""
        path = (*self.path, key)
        try:
            pid, mine = fork_with_channel(
                lambda theirs: run_child(spec, theirs, path, self.node), proc_name(spec, key))
        except OSError as exc:  # EAGAIN: the process limit (a pids cgroup), ENOMEM
            self.not_forked(key, exc)
            return None
        # The new child often waits for this CPU: let it run first, its start is what the
        # restart waits for (measured, a dormant supervisor's first restart: the child's first
        # instruction 1.2-1.5 -> 0.6-0.8 ms after the fork returns, p50). The worker yields
        # back once it has sent ready (_worker_runtime.run_worker).
        os.sched_yield()
        proc = Proc(pid, mine, key, spec.type)  # type: ignore[arg-type]
        self.watch(proc)
        return proc

    def not_forked(self, key: str, exc: OSError) -> None:
        """A child that could not even be forked failed to start, as OTP's ``{error,
        Reason}`` from its start function: ``start_child`` answers the error, a restart is
        tried again (within the intensity), the supervisor's own start fails. It must not
        kill the supervisor (and with it every other child)."""
        log.error("supervisor %s: cannot fork child %r: %s", self.name(), key, exc)
        self.trouble(Trouble.CHILD_FORK_FAILED)
        # Decided on after the rest of the decision that started it (or, outside one, by
        # the loop once its caller has recorded that nothing is starting).
        self.inbox.append(StartFailed(key, reason_from_exception(exc), time.monotonic()))

    # ---- stopping ---------------------------------------------------------------------------

    def stop_proc(self, pid: int, shutdown: Any) -> None:
        proc = self.procs.get(pid)
        if proc is None:
            return  # already reaped; its exit is in the machine's deferred events
        if shutdown is ShutdownKind.BRUTAL_KILL:
            send_signal(proc.pidfd, signal.SIGKILL)
            kill_group(proc.pid)
            return
        run = proc.program
        if run is None:
            send_signal(proc.pidfd, signal.SIGTERM)
        else:
            run.stopping = True
            sig = int(run.program.stop_signal)
            if run.program.stop_group:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            else:
                send_signal(proc.pidfd, sig)
        if shutdown == 0:  # OTP's timeout 0: exit(Child, shutdown), then kill at once
            send_signal(proc.pidfd, signal.SIGKILL)
        elif isinstance(shutdown, float):
            heapq.heappush(self.deadlines, (time.monotonic() + shutdown, pid))

    def next_deadline(self) -> float:
        due = self.deadlines[0][0] if self.deadlines else float("inf")
        starting = self.starting
        if starting is not None and starting.program is not None:
            due = min(due, starting.program.deadline)
            if starting.program.retry_at:
                due = min(due, starting.program.retry_at)
        if self.alive_timers:
            due = min(due, self.alive_timers[0][0])
        if self.log_check_at:
            due = min(due, self.log_check_at)
        return min(due, self.parked_until) if self.parked is not None else due

    def fire_deadlines(self) -> None:
        now = time.monotonic()
        self.fire_alive(now)
        if self.log_check_at and self.log_check_at <= now:
            self.check_worker_logs(now)
        if self.parked is not None and self.parked_until <= now:
            key, spec = self.parked
            self.parked = None
            log.warning("supervisor %s: no spare from the zygote within %.0f ms; forking %r "
                        "directly", self.name(), PARK_MAX_S * 1000, key)
            self.trouble(Trouble.NO_SPARE_IN_TIME)
            self.starting = self.fork_for(key, spec)
        starting = self.starting
        if starting is not None and starting.program is not None \
                and starting.program.deadline <= now and starting.reason is None:
            # Not ready in time: a start failure naming the check (reported at its exit).
            starting.reason = starting.program.timeout_reason()
            self.end_program_checks(starting.program)
            send_signal(starting.pidfd, signal.SIGKILL)
            kill_group(starting.pid)
        elif starting is not None and starting.program is not None \
                and starting.program.retry_at and starting.program.retry_at <= now:
            self.retry_check(starting)  # the program's exec not seen yet, or a refused port
        while self.deadlines and self.deadlines[0][0] <= now:
            _, pid = heapq.heappop(self.deadlines)
            proc = self.procs.get(pid)
            if proc is not None:
                send_signal(proc.pidfd, signal.SIGKILL)
                kill_group(pid)  # a program's own children too: shutdown kills the group

    # ---- fd events --------------------------------------------------------------------------

    def watch(self, proc: Proc) -> None:
        self.procs[proc.pid] = proc
        self.sel.register(proc.pidfd, selectors.EVENT_READ, ("on_exit", proc))
        self.sel.register(proc.channel.sock, selectors.EVENT_READ, ("on_child", proc))

    def forget(self, proc: Proc) -> None:
        self.procs.pop(proc.pid, None)
        run = proc.program
        if run is not None:
            self.end_program_checks(run)
            self.end_alive_round(proc)
            for fd in run.open_fds:
                self.sel.unregister(fd)
            run.close()
        self.sel.unregister(proc.pidfd)
        os.close(proc.pidfd)
        if proc.reading:
            self.sel.unregister(proc.channel.sock)
        proc.channel.close()

    def on_signal(self, sock: socket.socket) -> None:
        sigs = signals_received(sock)
        if signal.SIGCHLD in sigs:
            self.sweep_due = True
        if signal.SIGTERM in sigs:
            self.feed(ShutdownRequested(time.monotonic()))

    def on_exit(self, proc: Proc) -> None:
        if self.dormant and proc.key is not None:
            self.take_early(proc)
        if proc.lent is not None:
            status = self.lent_exit_status(proc)
        else:
            # The child is dead but not reaped, so its group id cannot have been reused:
            # whatever it forked or spawned dies with it (reaped here when its SIGCHLD comes).
            kill_group(proc.pid)
            if proc.program is not None:
                proc.program.execed(proc.pid)  # read while a zombie (see program_exec_done)
            try:
                _, status = os.waitpid(proc.pid, 0)
            except ChildProcessError:
                status = 0
        for frame in proc.channel.drain():  # its exiting frame, if any, is buffered
            self.on_frame(proc, frame)
        run = proc.program
        if run is not None and proc.reason is None and proc.channel.closed:
            self.program_exec_done(proc)  # exec'd and died before its EOF was handled
        self.forget(proc)
        reason = proc.reason or reason_from_wait_status(status)
        if run is not None:
            reason = run.exit_reason(reason)
        now = time.monotonic()
        if proc.key is None:
            # Not a child of the tree: nothing to restart. Another is made when wanted.
            log.warning("supervisor %s: spare process %d died: %s", self.name(), proc.pid,
                        reason)
            self.trouble(Trouble.SPARE_DIED)
            if proc in self.spares:  # not if a start took it, found it dead, went on
                self.spares.remove(proc)
        elif proc is self.starting:
            self.starting = None
            if proc.ignored:
                self.feed(Ignored(proc.key, now))  # type: ignore[arg-type]
            else:
                self.feed(StartFailed(proc.key, reason, now))  # type: ignore[arg-type]
        else:
            self.feed(Exited(proc.pid, reason, now))
        if self.taken is not None:  # the decision started nothing that took it
            self.taken[1].close()  # it exits at the EOF, told nothing
            self.taken = None

    def on_name_lookup(self, names: NameSocket) -> None:
        names.drain()

    def on_child(self, proc: Proc) -> None:
        frames = proc.channel.receive()
        if proc.lent is not None and self.lent_on_child(proc, frames):
            self.not_taken(proc)
            return
        for frame in frames:
            self.on_frame(proc, frame)
        if proc.channel.closed and proc.reading:
            self.sel.unregister(proc.channel.sock)
            proc.reading = False
            if proc.program is not None and proc.reason is None:
                self.program_exec_done(proc)

    def on_frame(self, proc: Proc, frame: Any) -> None:
        if isinstance(frame, (LifecycleFrame, TroubleFrame)):
            self.parent.try_send(frame)  # from a child supervisor: pass it up unchanged
        elif isinstance(frame, ReadyFrame):
            if proc is self.starting:
                proc.ready = True
                self.starting = None
                if not self.log_check_at and proc.ctype is ChildType.WORKER:
                    self.log_check_at = time.monotonic() + WORKER_LOG_CHECK_S
                self.feed(Started(proc.key, proc.pid, time.monotonic(),  # type: ignore
                                  frame.info))
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
            self.trouble(Trouble.UNEXPECTED_FRAME)

    def on_parent(self, _: Any) -> None:
        for frame in self.parent.receive():
            if isinstance(frame, RequestFrame):
                self.on_request(frame)
            else:
                log.warning("supervisor: unexpected frame from parent: %r", frame)
                self.trouble(Trouble.UNEXPECTED_FRAME)
        if self.parent.closed:
            # The parent is gone; PDEATHSIG is killing us. Take the subtree down now.
            for proc in list(self.procs.values()):
                send_signal(proc.pidfd, signal.SIGKILL)
                kill_group(proc.pid)
            self.procs.clear()
            self.zygote = None
            self.sweep_orphans()  # with nothing live, every other child is killed
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

