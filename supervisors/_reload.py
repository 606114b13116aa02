"""A supervisor's share of a config reload: what changes, as a pure function of its child
table and the new specs (:func:`plan_reload`); :mod:`._decide` carries the plan out as one
job, so the supervisor handles nothing else meanwhile (as for any other operation).

What a reload does at one supervisor (OTP: ``supervisor:code_change/3`` for the flags and
the specs, plus the release handler's ``terminate_child`` / ``delete_child`` /
``start_child`` instructions for what was added, removed or changed):

* the flags (strategy, intensity, period, auto_shutdown) are replaced in place; the
  restart history is kept (OTP's ``set_flags``), so a lower intensity counts the restarts
  already made;
* a child whose spec is unchanged is untouched (same process, same row);
* a removed child is terminated (its shutdown, as ``terminate_child``) and deleted;
* a changed child (any field of its spec) that runs, or waits for a restart, is
  terminated and started again with the new spec; one without a process (terminated, or a
  transient that ended) only gets the new spec, as ``code_change`` does;
* a new child is started;
* a child supervisor whose own spec changed only in its flags or children (not its
  ``ChildSpec`` fields, its registered name, or to or from ``simple_one_for_one``) keeps
  running with the new spec in its row: the caller (the node) then reloads *it* the same
  way (``nested``), so a change deep in the tree touches nothing above it;
* the table takes the new order (children are started in it, stopped in reverse);
* a ``simple_one_for_one`` supervisor whose template changed restarts each of its running
  children with the new template and the extra args it was started with (OTP leaves them
  running the old code until they exit; a reload here means "now").

Stops go first (reverse of the current order), then starts (in the new order). Only the
children that changed are restarted, whatever the strategy (``rest_for_one`` does not
restart the ones after a changed child: no child failed). A start that fails leaves the
child without a process, with its new spec, and is named in the reply's ``failed``; the
rest of the reload goes on. Starts made by a reload are not restarts: they do not count
toward the intensity.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .._childspec import ChildSpec, Strategy, SupervisorSpec, spec_to_wire
from ._events import Child, ChildStatus

__all__ = ["ReloadPlan", "plan_reload", "same_spec", "reloads_in_place", "pool_spec"]


class ReloadPlan(msgspec.Struct, frozen=True):
    """``stop``: keys to terminate, in order. ``table``: the new table as
    (key, spec, keep, dynamic), where keep says the row keeps its process and status (else a
    fresh row without one). ``start``: keys to start, in order. The rest name what happened,
    for the reply."""

    stop: tuple[str, ...] = ()
    table: tuple[tuple[str, ChildSpec, bool, bool], ...] = ()
    start: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()  # changed, and restarted with the new spec
    updated: tuple[str, ...] = ()  # changed, but without a process: the new spec only
    nested: tuple[str, ...] = ()  # child supervisors to reload in turn

    def summary(self) -> dict[str, Any]:
        return {"added": list(self.added), "removed": list(self.removed),
                "restarted": list(self.restarted), "updated": list(self.updated),
                "nested": list(self.nested)}


def same_spec(a: ChildSpec, b: ChildSpec) -> bool:
    """Equal as they cross the wire: a class and the ``module:qualname`` naming it are the
    same start (the running tree holds the former, a reload sends the latter)."""
    return bool(spec_to_wire(a) == spec_to_wire(b))


def _outer(spec: ChildSpec) -> ChildSpec:
    """A supervisor child's spec without its children and flags: what only a restart of the
    supervisor can change."""
    start = spec.start
    assert isinstance(start, SupervisorSpec)
    simple = start.flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE
    return msgspec.structs.replace(spec_to_wire(msgspec.structs.replace(spec, start="x:x")),
                                   start=f"{start.name}:{simple}")


def reloads_in_place(old: ChildSpec, new: ChildSpec) -> bool:
    """Both are supervisors that differ only in what a reload of that supervisor applies."""
    return isinstance(old.start, SupervisorSpec) and isinstance(new.start, SupervisorSpec) \
        and _outer(old) == _outer(new)


def pool_spec(template: ChildSpec, extra: tuple[Any, ...]) -> ChildSpec:
    """A simple_one_for_one child's spec: the template's, its args followed by ``extra``."""
    return ChildSpec(id=template.id, start=template.start, args=(*template.args, *extra),
                     restart=template.restart, shutdown=template.shutdown,
                     type=template.type, significant=template.significant)


def plan_reload(children: tuple[Child, ...] | list[Child], specs: tuple[ChildSpec, ...],
                simple: bool) -> ReloadPlan:
    """What to do so that the table ``children`` runs ``specs`` (see the module doc)."""
    if simple:
        return _plan_pool(list(children), specs[0])
    old = {c.key: c for c in children}
    table: list[tuple[str, ChildSpec, bool, bool]] = []
    start: list[str] = []
    added: list[str] = []
    restarted: list[str] = []
    updated: list[str] = []
    nested: list[str] = []
    for spec in specs:
        c = old.get(spec.id)
        if c is None:
            added.append(spec.id)
            table.append((spec.id, spec, False, False))
            start.append(spec.id)
        elif same_spec(c.spec, spec):
            table.append((c.key, c.spec, True, False))
        elif reloads_in_place(c.spec, spec):
            table.append((c.key, spec, True, False))
            if c.status is ChildStatus.RUNNING:
                nested.append(c.key)
        elif c.status is ChildStatus.UNDEFINED:
            updated.append(c.key)
            table.append((c.key, spec, True, False))
        else:
            restarted.append(c.key)
            table.append((c.key, spec, False, False))
            start.append(c.key)
    ids = {s.id for s in specs}
    removed = [c.key for c in children if c.key not in ids]
    again = set(restarted)
    stop = [c.key for c in reversed(children) if c.status is ChildStatus.RUNNING
            and (c.key in again or c.key not in ids)]
    return ReloadPlan(stop=tuple(stop), table=tuple(table), start=tuple(start),
                      added=tuple(added), removed=tuple(removed),
                      restarted=tuple(restarted), updated=tuple(updated), nested=tuple(nested))


def _plan_pool(children: list[Child], template: ChildSpec) -> ReloadPlan:
    old = children[0].spec
    if same_spec(old, template):
        return ReloadPlan(table=tuple((c.key, c.spec, True, c.dynamic) for c in children))
    table = [("", template, True, False)]
    start: list[str] = []
    for c in children[1:]:
        extra = c.spec.args[len(old.args):]
        again = c.status is not ChildStatus.UNDEFINED
        table.append((c.key, pool_spec(template, extra), not again, True))
        if again:
            start.append(c.key)
    stop = [c.key for c in reversed(children[1:]) if c.status is ChildStatus.RUNNING]
    return ReloadPlan(stop=tuple(stop), table=tuple(table), start=tuple(start),
                      restarted=tuple(start), updated=(template.id,))
