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

Fast restarts: after its own start the supervisor forks one *spare*, an idle copy of itself
that blocks on its channel. A restart hands the spare the child's key (``become``), so the
replacement only has to run ``init``; the fork for the next spare happens after the restart
has been reported, off the critical path. A spare only serves specs it inherited at its fork.
"""

from __future__ import annotations

import heapq
import logging
import os
import selectors
import signal
import socket
import time
from typing import Any

import msgspec

from .._address import Pid
from .._childspec import ChildSpec, ChildType, ShutdownKind, SupervisorSpec, resolve_start
from .._errors import ChildSpecError
from .._exit import ExitReason, reason_from_exception, reason_from_wait_status
from .._process import fork_child, send_signal, set_process_name
from .._worker_runtime import WorkerContext, exit_code_for, run_worker
from ..transports._channel import Channel, open_channel_pair
from ..transports._frames import (
    Become, ExitingFrame, IgnoredFrame, LifecycleFrame, ReadyFrame, ReplyFrame, RequestFrame,
)
from ._decide import decide, initial_state
from ._events import (
    Err, Exit, Exited, Ignored, Init, Op, Phase, Ready, Reply, Report, Request, ShutdownRequested,
    StartFailed, StartProc, Started, StopMany, StopProc,
)

__all__ = ["SupervisorRuntime", "run_child"]

log = logging.getLogger(__name__)

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
        self.spare: _Proc | None = None
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
        self.feed(Init(time.monotonic()))
        while self.exit_reason is None:
            timeout = None
            if self.deadlines:
                timeout = max(0.0, self.deadlines[0][0] - time.monotonic())
            elif self.wants_spare():
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
            if not ready and self.wants_spare():
                self.fork_spare()
        return exit_code_for(self.exit_reason)

    def feed(self, event: Any) -> None:
        """Feed an event and carry out the actions; actions may queue further events."""
        self.inbox.append(event)
        while self.inbox and self.exit_reason is None:
            self.state, actions = decide(self.state, self.inbox.pop(0))
            for action in actions:
                self.carry_out(action)

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
            self.kill_spare()
            self.parent.try_send(ExitingFrame(a.reason))
            self.exit_reason = a.reason

    def child_type(self, key: str) -> str:
        for c in self.state.children:
            if c.key == key:
                return c.spec.type.value  # type: ignore[union-attr]
        return ChildType.WORKER.value

    # ---- starting ---------------------------------------------------------------------------

    def start_proc(self, key: str, spec: ChildSpec) -> None:
        proc = self.take_spare(key, spec)
        if proc is None:
            mine, theirs = open_channel_pair()
            path = (*self.path, key)
            pid = fork_child((theirs.fileno(),),
                             lambda: run_child(spec, theirs, path, self.node),
                             _proc_name(spec, key))
            theirs.close()
            proc = _Proc(pid, mine, key, spec.type)  # type: ignore[arg-type]
            self.watch(proc)
        self.starting = proc

    def take_spare(self, key: str, spec: ChildSpec) -> _Proc | None:
        spare = self.spare
        if spare is None:
            return None
        known = spare.specs.get(spec.id)
        if known is None or known.start is not spec.start:
            return None  # a spec added after the spare was forked: the spare cannot know it
        dynamic = key != spec.id
        if not dynamic and known is not spec:
            return None
        try:
            spare.channel.send(Become(key, spec.id, spec.args if dynamic else ()))
        except (OSError, TypeError, msgspec.EncodeError):
            return None  # a dead spare is reaped later; odd args take the fork path
        self.spare = None
        spare.key = key
        spare.ctype = spec.type  # type: ignore[assignment]
        return spare

    def wants_spare(self) -> bool:
        return (self.use_spares and self.spare is None and self.state.job is None
                and self.exit_reason is None and self.state.phase is Phase.RUNNING)

    def fork_spare(self) -> None:
        mine, theirs = open_channel_pair()
        specs = {c.spec.id: c.spec for c in self.state.children if not c.dynamic}
        pid = fork_child((theirs.fileno(),), lambda: self.spare_main(theirs, specs),
                         "prism:spare")
        theirs.close()
        proc = _Proc(pid, mine, None, ChildType.WORKER)
        proc.specs = specs
        self.watch(proc)
        self.spare = proc

    def spare_main(self, channel: Channel, specs: dict[str, ChildSpec]) -> int:
        """Runs in the spare: wait to be told which child to become, then become it.

        What every worker needs whoever it becomes (its mailbox, the runtime's state) is made
        while waiting: a fresh fork pays a copy-on-write fault for each page it first
        writes, and paying them now takes them off the restart's critical path."""
        prepared = WorkerContext(None, Pid(self.node, os.getpid()), "")
        frame = channel.receive_one()
        if not isinstance(frame, Become):
            return 0
        spec = specs[frame.spec_id]
        if frame.key != frame.spec_id:  # a dynamic child: the template with its own args
            spec = msgspec.structs.replace(spec, args=tuple(frame.args))
        set_process_name(_proc_name(spec, frame.key))
        return run_child(spec, channel, (*self.path, frame.key), self.node, prepared)

    def kill_spare(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None:
            send_signal(spare.pidfd, signal.SIGKILL)
            os.waitpid(spare.pid, 0)
            self.forget(spare)

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

    def fire_deadlines(self) -> None:
        now = time.monotonic()
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
        if proc is self.spare:
            # Not a child of the tree: nothing to restart. A new one is forked when idle.
            log.warning("spare process %d died: %s", proc.pid, reason)
            self.spare = None
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


def _proc_name(spec: ChildSpec, key: str) -> str:
    prefix = "prism-sup:" if spec.type is ChildType.SUPERVISOR else "prism:"
    return prefix + key


def run_child(spec: ChildSpec, channel: Channel, path: tuple[str, ...], node: str,
              prepared: WorkerContext | None = None) -> int:
    """The body of a freshly forked (or freshly assigned) child process; ``prepared`` is a
    spare's ready-made worker context (dropped if the child is a supervisor)."""
    try:
        start = resolve_start(spec.start)
        if spec.type is ChildType.SUPERVISOR and not isinstance(start, SupervisorSpec) \
                and callable(start):
            start = start(*spec.args)
        if isinstance(start, SupervisorSpec):
            if spec.type is not ChildType.SUPERVISOR:
                raise ChildSpecError("type", spec.type.value,  # type: ignore[union-attr]
                                     f"start {spec.start!r} is a SupervisorSpec; "
                                     f"declare type='supervisor'")
            if prepared is not None:
                prepared.mailbox.close()
            return SupervisorRuntime(start, channel, path, node).run()
    except BaseException as exc:  # noqa: BLE001 - a start failure is reported as data
        channel.try_send(ExitingFrame(reason_from_exception(exc)))
        return 1
    return run_worker(start, spec.args, channel, node, path[-1] if path else "", prepared)


