"""The supervisor's restart policy as a pure state machine: ``decide(state, event)``.

This is OTP's ``supervisor.erl`` with the I/O taken out. The generic loop
(:mod:`._runtime`) owns processes and sockets; this module only decides. OTP's supervisor is
synchronous: while it terminates or starts a child it handles nothing else. Here the same
holds through :class:`Job`: a job runs steps one at a time, and while a step awaits its
effect every unrelated event is *deferred*, then handled in arrival order once the job ends.
When a job starts awaiting an exit it first looks in the deferred events (a selective
receive), so an exit that arrived early is never waited for twice.

Differences from OTP, forced or chosen (documented in the README):
* times are float monotonic seconds (see :mod:`._intensity`);
* ``which_children`` lists in OTP's order (last started first) with OS pids;
* ``terminate_child(pid)`` of an unknown pid answers ``not_found``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._childspec import AutoShutdown, ChildType, RestartType, ShutdownKind, Strategy, SupFlags
from .._childspec import ChildSpec, SupervisorSpec, check_child_specs, spec_from_wire
from .._childspec import spec_to_wire
from .._errors import ChildSpecError
from .._exit import ExitReason, Killed, Normal, Shutdown, describe, is_abnormal
from ._events import (
    Child, ChildInfo, ChildStatus, CountChildren, DeleteChild, Err, Exit, ExitStep, Exited,
    FailMode, GetChildSpec, Ignored, Init, Job, LifecycleKind, Ok, Phase, Ready, ReadyStep,
    Reload, ReloadDoneStep, ReloadTableStep,
    Reply, ReplyStep, Report, Request, RestartChild, ShutdownRequested, StartChild,
    StartDynamic, StartFailed, StartProc, StartStep, Started, StopAllStep, StopMany, StopProc,
    StopStep,
    SupervisorState, TerminateChild, TryAgain, WhichChild, WhichChildren,
)
from ._intensity import add_restart
from ._reload import plan_reload

__all__ = ["decide", "initial_state"]


def initial_state(flags: SupFlags, specs: tuple[ChildSpec, ...]) -> SupervisorState:
    """The state before ``Init``: static children known, none started."""
    if flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE:
        return SupervisorState(flags=flags, children=(Child(key="", spec=specs[0]),))
    return SupervisorState(flags=flags, children=tuple(Child(key=s.id, spec=s) for s in specs))


def decide(state: SupervisorState, event: Any) -> tuple[SupervisorState, list[Any]]:
    """Consume one event; return the next state and the actions to carry out, in order."""
    m = _Draft(state)
    m.feed(event)
    return m.freeze(), m.actions


class _Draft:
    """A mutable working copy of one state for the duration of one ``decide`` call."""

    def __init__(self, s: SupervisorState) -> None:
        self.flags = s.flags
        self.children = list(s.children)
        self.restarts = s.restarts
        self.phase = s.phase
        self.job = s.job
        self.deferred = list(s.deferred)
        self.next_dynamic = s.next_dynamic
        self.now = 0.0  # the time of the event being handled; OTP reads the clock instead
        self.actions: list[Any] = []
        # Row lookups by key and by live pid, taken over from the decision that made
        # ``s`` (see _Rows): O(1) instead of a scan, so a start or restart under a
        # supervisor of N children costs O(1) lookups, not O(N).
        self.rows = _Rows.take(s.children)

    def freeze(self) -> SupervisorState:
        children = tuple(self.children)
        if self.rows is not None:
            _Rows.keep(children, self.rows)
        return SupervisorState(flags=self.flags, children=children,
                               restarts=self.restarts, phase=self.phase, job=self.job,
                               deferred=tuple(self.deferred), next_dynamic=self.next_dynamic)

    # ---- the table --------------------------------------------------------------------------

    @property
    def simple(self) -> bool:
        return self.flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE

    def lookup(self) -> _Rows:
        if self.rows is None:
            self.rows = _Rows(self.children)
        return self.rows

    def index(self, key: str) -> int | None:
        return self.lookup().by_key.get(key)

    def index_running(self, pid: int) -> int | None:
        return self.lookup().by_pid.get(pid)

    def put(self, i: int, status: ChildStatus, pid: int | None) -> None:
        c = self.children[i]
        self.children[i] = new = Child(key=c.key, spec=c.spec, status=status, pid=pid,
                                       dynamic=c.dynamic)
        if self.rows is not None:
            self.rows.replaced(i, c, new)

    def add_row(self, c: Child) -> None:
        self.children.append(c)
        if self.rows is not None:
            self.rows.by_key[c.key] = len(self.children) - 1

    def drop_row(self, i: int) -> None:
        self.report(LifecycleKind.CHILD_DELETED, self.children[i], None)
        del self.children[i]
        self.rows = None  # the rows after it moved up: rebuilt when next needed

    def del_child(self, i: int) -> None:
        """OTP's ``del_child``: temporary and dynamic rows go, others keep their spec."""
        c = self.children[i]
        if c.dynamic or c.spec.restart is RestartType.TEMPORARY:
            self.drop_row(i)
        else:
            self.put(i, ChildStatus.UNDEFINED, None)

    # ---- event intake -----------------------------------------------------------------------

    def feed(self, event: Any) -> None:
        self.now = max(self.now, event.now)
        if self.phase is Phase.STOPPED:
            if isinstance(event, Request):
                self.actions.append(Reply(event.ref, Err("noproc", "supervisor has stopped")))
            return
        if self.job is not None and (self.job.await_start or self.job.await_exits):
            if not self.resumes_job(event):
                self.deferred.append(event)
                return
            self.resume(event)
        else:
            self.handle(event)
        self.run()

    def resumes_job(self, event: Any) -> bool:
        job = self.job
        assert job is not None
        if isinstance(event, (Started, StartFailed, Ignored)):
            return event.key == job.await_start
        return isinstance(event, Exited) and event.pid in job.await_exits

    def run(self) -> None:
        """Advance the job until it awaits an effect or ends; then drain deferred events."""
        while True:
            while self.job is not None and not (self.job.await_start or self.job.await_exits):
                if not self.job.steps:
                    self.job = None
                    break
                step, rest = self.job.steps[0], self.job.steps[1:]
                self.job = _replace(self.job, steps=rest)
                self.step(step)
            if self.job is not None or not self.deferred or self.phase is Phase.STOPPED:
                return
            event = self.deferred.pop(0)
            self.now = max(self.now, event.now)
            self.handle(event)

    def step(self, step: Any) -> None:
        if isinstance(step, StartStep):
            i = self.index(step.key)
            if i is None:
                return
            self.job = _replace(self.job, await_start=step.key)
            self.actions.append(StartProc(step.key, self.children[i].spec))
        elif isinstance(step, StopStep):
            i = self.index(step.key)
            if i is None:
                return
            c = self.children[i]
            if c.status is ChildStatus.RUNNING and c.pid is not None:
                self.actions.append(StopProc(c.key, c.pid, c.spec.shutdown))
                self.await_exits(frozenset((c.pid,)))
            else:
                self.del_child(i)
        elif isinstance(step, StopAllStep):
            pids = tuple(c.pid for c in self.children
                         if c.dynamic and c.status is ChildStatus.RUNNING and c.pid is not None)
            if pids:
                self.actions.append(StopMany(pids, self.children[0].spec.shutdown))
                self.await_exits(frozenset(pids))
        elif isinstance(step, ReadyStep):
            self.phase = Phase.RUNNING
            self.actions.append(Ready())
        elif isinstance(step, ReplyStep):
            self.actions.append(Reply(step.ref, Ok()))
        elif isinstance(step, ReloadTableStep):
            self.retable(step)
        elif isinstance(step, ReloadDoneStep):
            assert self.job is not None
            self.actions.append(Reply(step.ref, Ok({**step.summary,
                                                    "failed": list(self.job.failed)})))
        elif isinstance(step, ExitStep):
            self.phase = Phase.STOPPED
            self.job = None
            self.actions.append(Exit(step.reason))
            for ev in self.deferred:
                if isinstance(ev, Request):
                    self.actions.append(Reply(ev.ref, Err("noproc", "supervisor has stopped")))
            self.deferred.clear()

    def await_exits(self, pids: frozenset[int]) -> None:
        # Selective receive: exits that already arrived are taken from the deferred queue.
        early = [e for e in self.deferred if isinstance(e, Exited) and e.pid in pids]
        self.job = _replace(self.job, await_exits=pids)
        for e in early:
            self.deferred.remove(e)
            self.resume(e)

    # ---- resuming a job ---------------------------------------------------------------------

    def resume(self, event: Any) -> None:
        job = self.job
        assert job is not None
        if isinstance(event, Exited):
            self.job = _replace(job, await_exits=job.await_exits - {event.pid})
            i = self.index_running(event.pid)
            if i is not None:
                c = self.children[i]
                if not _clean_stop(c, event.reason):
                    self.report(LifecycleKind.SHUTDOWN_ERROR, c, event.reason)
                self.report(LifecycleKind.CHILD_STOPPED, c, event.reason)
                self.del_child(i)
            return
        self.job = _replace(job, await_start=None)
        i = self.index(event.key)
        assert i is not None
        if isinstance(event, Started):
            self.put(i, ChildStatus.RUNNING, event.pid)
            self.report(LifecycleKind.CHILD_STARTED, self.children[i], None)
            if job.ref is not None:
                self.actions.append(Reply(job.ref, Ok(event.pid, event.info)))
        elif isinstance(event, Ignored):
            # OTP: an ignored start keeps the spec with pid undefined (even for start_child),
            # except for temporary children and simple_one_for_one's dynamic children.
            c = self.children[i]
            if c.dynamic or c.spec.restart is RestartType.TEMPORARY:
                self.drop_row(i)
            else:
                self.put(i, ChildStatus.UNDEFINED, None)
            if job.ref is not None:
                self.actions.append(Reply(job.ref, Ok(None)))
        else:
            self.start_failed(i, event.reason, job)

    def start_failed(self, i: int, reason: ExitReason, job: Job) -> None:
        c = self.children[i]
        self.report(LifecycleKind.START_ERROR, c, reason)
        if job.on_start_fail is FailMode.REPLY:
            if job.remove_on_fail:
                self.drop_row(i)
            else:
                self.put(i, ChildStatus.UNDEFINED, None)
            if job.ref is not None:
                self.actions.append(Reply(job.ref, Err("failed_to_start_child", c.key, reason)))
            self.job = _replace(job, await_start=None)
        elif job.on_start_fail is FailMode.RELOAD:
            if c.dynamic:
                self.drop_row(i)
            else:
                self.put(i, ChildStatus.UNDEFINED, None)
            self.job = _replace(job, await_start=None, failed=(*job.failed, c.key))
        elif job.on_start_fail is FailMode.TRY_AGAIN:
            self.put(i, ChildStatus.RESTARTING, c.pid)
            self.job = None  # the rest of the restart is abandoned, as OTP's children_map abort
            self.deferred.append(TryAgain(c.key, self.now))
        else:
            detail = f"failed_to_start_child {c.key}: {describe(reason)}"
            self.put(i, ChildStatus.UNDEFINED, None)
            self.job = None
            self.shut_down(Shutdown(detail))

    def report(self, kind: LifecycleKind, c: Child, reason: ExitReason | None) -> None:
        assert c.spec.type is not None  # ChildSpec.__post_init__ resolved it
        self.actions.append(Report(kind, c.key, c.pid, reason, c.spec.type))

    # ---- events when idle -------------------------------------------------------------------

    def handle(self, event: Any) -> None:
        if isinstance(event, Init):
            steps: list[Any] = [] if self.simple else [StartStep(c.key) for c in self.children]
            self.job = Job(steps=(*steps, ReadyStep()), on_start_fail=FailMode.ABORT_INIT)
        elif isinstance(event, Exited):
            self.child_exited(event)
        elif isinstance(event, TryAgain):
            i = self.index(event.key)
            if i is not None and self.children[i].status is ChildStatus.RESTARTING:
                self.restart(i, event.now)
        elif isinstance(event, ShutdownRequested):
            if self.phase is not Phase.STOPPING:
                self.shut_down(Shutdown())
        elif isinstance(event, Request):
            self.request(event)
        # Started/StartFailed/Ignored that resume nothing are stale: dropped.

    def child_exited(self, ev: Exited) -> None:
        """OTP's ``restart_child/3`` and ``do_restart/3``."""
        i = self.index_running(ev.pid)
        if i is None:
            return  # not ours any more (already stopped, or an old pid): OTP ignores it too
        c = self.children[i]
        restart = c.spec.restart
        if restart is RestartType.PERMANENT:
            self.report(LifecycleKind.CHILD_EXITED, c, ev.reason)
            self.restart(i, ev.now)
        elif not is_abnormal(ev.reason):
            self.report(LifecycleKind.CHILD_EXITED, c, ev.reason)
            self.del_child(i)
            self.auto_shutdown(c)
        elif restart is RestartType.TRANSIENT:
            self.report(LifecycleKind.CHILD_EXITED, c, ev.reason)
            self.restart(i, ev.now)
        else:
            self.report(LifecycleKind.CHILD_EXITED, c, ev.reason)
            self.del_child(i)
            self.auto_shutdown(c)

    def auto_shutdown(self, c: Child) -> None:
        mode = self.flags.auto_shutdown
        if mode is AutoShutdown.NEVER or not c.spec.significant:
            return
        # simple_one_for_one never gets here: it cannot auto_shutdown (SupFlags refuses it)
        if mode is AutoShutdown.ALL_SIGNIFICANT and any(
                x.spec.significant and x.status is not ChildStatus.UNDEFINED
                for x in self.children):
            return
        self.report(LifecycleKind.AUTO_SHUTDOWN, c, None)
        self.shut_down(Shutdown("auto_shutdown"))

    def restart(self, i: int, now: float) -> None:
        """OTP's ``restart/2``: count the restart, then restart per strategy."""
        c = self.children[i]
        self.restarts, exceeded = add_restart(self.restarts, now, self.flags.intensity,
                                              self.flags.period)
        if exceeded:
            self.report(LifecycleKind.INTENSITY_EXCEEDED, c, None)
            self.del_child(i)
            self.shut_down(Shutdown("reached_max_restart_intensity"))
            return
        strategy = self.flags.strategy
        if strategy in (Strategy.ONE_FOR_ONE, Strategy.SIMPLE_ONE_FOR_ONE):
            self.put(i, ChildStatus.UNDEFINED, c.pid)
            self.job = Job(steps=(StartStep(c.key),), on_start_fail=FailMode.TRY_AGAIN)
            return
        self.put(i, ChildStatus.UNDEFINED, None)
        group = self.children if strategy is Strategy.ONE_FOR_ALL else self.children[i:]
        keys = [x.key for x in group]
        stops = [StopStep(k) for k in reversed(keys)]
        # Temporary children are dropped by the stops, so StartStep skips them (index None).
        starts = [StartStep(k) for k in keys]
        self.job = Job(steps=(*stops, *starts), on_start_fail=FailMode.TRY_AGAIN)

    def shut_down(self, reason: ExitReason) -> None:
        """Terminate every child in reverse start order (all at once if dynamic), then exit."""
        self.phase = Phase.STOPPING
        steps: list[Any]
        if self.simple:
            steps = [StopAllStep()]
        else:
            steps = [StopStep(c.key) for c in reversed(self.children)]
        self.job = Job(steps=(*steps, ExitStep(reason)), on_start_fail=FailMode.REPLY)

    # ---- API requests -----------------------------------------------------------------------

    def request(self, req: Request) -> None:
        op, ref = req.op, req.ref
        if self.phase is Phase.STOPPING:
            self.reply(ref, Err("noproc", "supervisor is shutting down"))
        elif isinstance(op, WhichChildren):
            self.reply(ref, Ok(self.which_children()))
        elif isinstance(op, CountChildren):
            self.reply(ref, Ok(self.count_children()))
        elif isinstance(op, (GetChildSpec, WhichChild)):
            i = self.index_of(op.target)
            if i is None:
                self.reply(ref, Err("not_found", str(op.target)))
            elif isinstance(op, GetChildSpec):
                self.reply(ref, Ok(spec_to_wire(self.children[i].spec)))
            else:
                self.reply(ref, Ok(self.child_info(self.children[i])))
        elif isinstance(op, StartDynamic):
            self.start_dynamic(ref, op)
        elif isinstance(op, StartChild):
            self.start_child(ref, op.spec)
        elif isinstance(op, TerminateChild):
            self.terminate_child(ref, op.target)
        elif isinstance(op, Reload):
            self.reload(ref, op)
        elif self.simple:
            self.reply(ref, Err("simple_one_for_one"))
        elif isinstance(op, RestartChild):
            i = self.index(op.id)
            if i is None:
                self.reply(ref, Err("not_found", op.id))
            elif self.children[i].status is ChildStatus.UNDEFINED:
                self.job = Job(steps=(StartStep(op.id),), on_start_fail=FailMode.REPLY, ref=ref)
            else:
                self.reply(ref, Err(self.children[i].status.value, op.id))
        elif isinstance(op, DeleteChild):
            i = self.index(op.id)
            if i is None:
                self.reply(ref, Err("not_found", op.id))
            elif self.children[i].status is ChildStatus.UNDEFINED:
                self.drop_row(i)
                self.reply(ref, Ok())
            else:
                self.reply(ref, Err(self.children[i].status.value, op.id))

    def reply(self, ref: int, result: Ok | Err) -> None:
        self.actions.append(Reply(ref, result))

    def which_children(self) -> list[ChildInfo]:
        # OTP lists the last started first
        return [self.child_info(c) for c in reversed(self.children)
                if c.dynamic or not self.simple]

    def child_info(self, c: Child) -> ChildInfo:
        restarting = c.status is ChildStatus.RESTARTING
        pid = c.pid if c.status is ChildStatus.RUNNING else None
        return ChildInfo(None if c.dynamic else c.key, pid, restarting,
                         c.spec.type.value)  # type: ignore[union-attr]

    def index_of(self, target: str | int) -> int | None:
        """The row a request names: a child id, or (simple_one_for_one) a running pid."""
        if self.simple:
            i = self.index_running(target) if isinstance(target, int) else None
            return i if i is not None and self.children[i].dynamic else None
        return self.index(target) if isinstance(target, str) else None

    def count_children(self) -> dict[str, int]:
        rows = [c for c in self.children if c.dynamic] if self.simple else self.children
        sups = sum(1 for c in rows if c.spec.type is ChildType.SUPERVISOR)
        return {"specs": 1 if self.simple else len(rows),
                "active": sum(1 for c in rows if c.status is ChildStatus.RUNNING),
                "supervisors": sups, "workers": len(rows) - sups}

    def start_dynamic(self, ref: int, op: StartDynamic) -> None:
        if not self.simple:
            self.reply(ref, Err("badarg", "start_child with args needs simple_one_for_one"))
            return
        template = self.children[0].spec
        key = f"{template.id}-{self.next_dynamic}"  # topic-safe, unique: no static siblings
        self.next_dynamic += 1
        spec = ChildSpec(id=template.id, start=template.start, args=(*template.args, *op.args),
                         restart=template.restart, shutdown=template.shutdown,
                         type=template.type, significant=template.significant)
        self.add_row(Child(key=key, spec=spec, dynamic=True))
        self.job = Job(steps=(StartStep(key),), on_start_fail=FailMode.REPLY, ref=ref,
                       remove_on_fail=True)

    def start_child(self, ref: int, spec: ChildSpec) -> None:
        if self.simple:
            self.reply(ref, Err("badarg", "simple_one_for_one takes start_child(args)"))
            return
        try:
            check_child_specs([spec], self.flags.auto_shutdown)
        except ChildSpecError as exc:
            self.reply(ref, Err("bad_child_spec", str(exc)))
            return
        i = self.index(spec.id)
        if i is not None:
            c = self.children[i]
            if c.status is ChildStatus.RUNNING:
                self.reply(ref, Err("already_started", f"{c.key} pid {c.pid}"))
            else:
                self.reply(ref, Err("already_present", c.key))
            return
        self.add_row(Child(key=spec.id, spec=spec))
        self.job = Job(steps=(StartStep(spec.id),), on_start_fail=FailMode.REPLY, ref=ref,
                       remove_on_fail=True)

    def terminate_child(self, ref: int, target: str | int) -> None:
        if self.simple:
            if isinstance(target, str):
                self.reply(ref, Err("simple_one_for_one", "terminate_child needs a pid"))
                return
            i = next((n for n, c in enumerate(self.children)
                      if c.dynamic and c.pid == target), None)
        else:
            i = self.index(target) if isinstance(target, str) else None
        if i is None:
            self.reply(ref, Err("not_found", str(target)))
            return
        key = self.children[i].key
        self.job = Job(steps=(StopStep(key), ReplyStep(ref)), on_start_fail=FailMode.REPLY)


    def reload(self, ref: int, op: Reload) -> None:
        """A new spec for this supervisor (see ``_reload``): flags now, children by a job."""
        try:
            specs = tuple(c if isinstance(c, ChildSpec) else spec_from_wire(c)
                          for c in op.children)
            SupervisorSpec(flags=op.flags, children=specs)  # the checks of a new supervisor
        except ChildSpecError as exc:
            self.reply(ref, Err("bad_child_spec", str(exc)))
            return
        simple = op.flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE
        if simple != self.simple:
            self.reply(ref, Err("badarg", "strategy: to or from simple_one_for_one needs a "
                                          "restart of the supervisor, not a reload"))
            return
        plan = plan_reload(self.children, specs, simple)
        summary = {**plan.summary(), "flags": op.flags != self.flags}
        self.flags = op.flags  # OTP's set_flags: the restart history is kept
        self.job = Job(steps=(*(StopStep(k) for k in plan.stop), ReloadTableStep(plan.table),
                              *(StartStep(k) for k in plan.start),
                              ReloadDoneStep(ref, summary)),
                       on_start_fail=FailMode.RELOAD)

    def retable(self, step: ReloadTableStep) -> None:
        """The reload's table: rows kept as they are (their spec replaced), fresh rows, and
        whatever is left of the old table deleted."""
        old = {c.key: c for c in self.children}
        rows: list[Child] = []
        for key, spec, keep, dynamic in step.table:
            c = old.pop(key, None)
            if keep and c is not None:
                rows.append(Child(key=key, spec=spec, status=c.status, pid=c.pid,
                                  dynamic=c.dynamic))
            else:
                rows.append(Child(key=key, spec=spec, dynamic=dynamic))
        for c in old.values():
            self.report(LifecycleKind.CHILD_DELETED, c, None)
        self.children = rows
        self.rows = None


class _Rows:
    """Where each child's row is: ``by_key`` (every row) and ``by_pid`` (rows RUNNING a
    live pid), for one children tuple.

    Invariant: a _Rows describes exactly one tuple of rows, the one it was made or kept for.
    The decision that froze a state keeps its _Rows for the next decision on that state
    (``keep``); the next draft takes it over (``take``) and updates it in place as it edits
    rows, so no other draft can see it half-edited. A draft of any other state (a test
    replaying an old state, say) finds nothing to take and builds its own: the memo changes
    how fast a decision is made, never what is decided.
    """

    __slots__ = ("by_key", "by_pid")
    _kept: tuple[tuple[Child, ...], _Rows] | None = None

    def __init__(self, rows: list[Child]) -> None:
        self.by_key = {c.key: i for i, c in enumerate(rows)}
        self.by_pid = {c.pid: i for i, c in enumerate(rows)
                       if c.status is ChildStatus.RUNNING and c.pid is not None}

    def replaced(self, i: int, old: Child, new: Child) -> None:
        if old.status is ChildStatus.RUNNING and self.by_pid.get(old.pid) == i:  # type: ignore
            del self.by_pid[old.pid]  # type: ignore[arg-type]
        if new.status is ChildStatus.RUNNING and new.pid is not None:
            self.by_pid[new.pid] = i

    @classmethod
    def take(cls, children: tuple[Child, ...]) -> _Rows | None:
        kept = cls._kept
        if kept is None or kept[0] is not children:
            return None
        cls._kept = None
        return kept[1]

    @classmethod
    def keep(cls, children: tuple[Child, ...], rows: _Rows) -> None:
        cls._kept = (children, rows)


def _clean_stop(c: Child, reason: ExitReason) -> bool:
    """OTP's ``shutdown/1`` check: did the child stop the way it was told to?"""
    if isinstance(reason, Killed) and reason.signal == 9:
        return c.spec.shutdown is ShutdownKind.BRUTAL_KILL
    if isinstance(reason, Shutdown):
        return True
    return isinstance(reason, Normal) and c.spec.restart is not RestartType.PERMANENT


def _replace(job: Job | None, **changes: Any) -> Job:
    assert job is not None
    return msgspec.structs.replace(job, **changes)
