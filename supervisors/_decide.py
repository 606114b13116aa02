"""The supervisor's restart policy as a pure state machine: ``decide(state, event)``.

This is OTP's ``supervisor.erl`` with the I/O taken out. The generic loop
(:mod:`._runtime`) owns processes and sockets; this module only decides. OTP's supervisor is
synchronous: while it terminates or starts a child it handles nothing else. Here the same
holds through :class:`Job`: a job runs steps one at a time, and while a step awaits its
effect every unrelated event is *deferred*, then handled in arrival order once the job ends.
When a job starts awaiting an exit it first looks in the deferred events (a selective
receive), so an exit that arrived early is never waited for twice.

This module keeps the policy: the jobs, what an exit means per restart type, restart
intensity (:mod:`._intensity`), the child set each strategy restarts, shutdown. The draft it
works on is built in layers below it: the child table and its edits
(:mod:`._child_table`), the API requests (:mod:`._requests`); the vocabulary of events,
steps and actions is :mod:`._events`.

Differences from OTP, forced or chosen (documented in the README):
* times are float monotonic seconds (see :mod:`._intensity`);
* ``which_children`` lists in OTP's order (last started first) with OS pids;
* ``terminate_child(pid)`` of an unknown pid answers ``not_found``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._childspec import AutoShutdown, ChildSpec, RestartType, ShutdownKind, Strategy, SupFlags
from .._exit import ExitReason, Killed, Normal, Shutdown, describe, is_abnormal
from ._events import (
    Child, ChildStatus, Err, Exit, Exited, ExitStep, FailMode, Ignored, Init, Job,
    LifecycleKind, Ok, Phase, Ready, ReadyStep, ReloadDoneStep, ReloadTableStep, Reply,
    ReplyStep, Request, ShutdownRequested, Started, StartFailed, StartProc, StartStep,
    StopAllStep, StopMany, StopProc, StopStep, SupervisorState, TryAgain,
)
from ._intensity import add_restart
from ._requests import RequestDraft

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


class _Draft(RequestDraft):
    """The restart policy and the jobs that carry it out (see the module's docstring)."""

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
