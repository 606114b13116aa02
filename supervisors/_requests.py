"""The supervisor's API requests as one ``decide`` call answers them (OTP's ``handle_call``).

``which_children``, ``count_children``, ``get_childspec``, ``start_child`` (a spec, or
``simple_one_for_one``'s arguments), ``terminate_child``, ``restart_child``,
``delete_child`` and the reload of a new spec (see :mod:`._reload`). A request answers at
once, or starts a :class:`~._events.Job` whose last step answers it; :mod:`._decide` runs
the job. Pure, like the :class:`~._child_table.TableDraft` it builds on.
"""

from __future__ import annotations

from .._childspec import ChildSpec, ChildType, Strategy, SupervisorSpec, check_child_specs
from .._childspec import spec_from_wire, spec_to_wire
from .._errors import ChildSpecError
from ._child_table import TableDraft
from ._events import (
    Child, ChildInfo, ChildStatus, CountChildren, DeleteChild, Err, FailMode, GetChildSpec,
    Job, LifecycleKind, Ok, Phase, Reload, ReloadDoneStep, ReloadTableStep, Reply,
    ReplyStep, Request, RestartChild, StartChild, StartDynamic, StartStep, StopStep,
    TerminateChild, WhichChild, WhichChildren,
)
from ._reload import plan_reload

__all__ = ["RequestDraft"]


class RequestDraft(TableDraft):
    """A :class:`~._child_table.TableDraft` that also answers API requests."""

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

