"""The tree's expected shape: every static child's path, type, restart type and, for a
supervisor, its restart intensity. What "the tree converged" is measured against.

Built from the app's :class:`~prismatic.SupervisorSpec` when the runner has it (``--app``,
the demo), else from the running node's tree as first seen (``--node``: every child then
counts as permanent and every supervisor as having OTP's default intensity). Pure apart
from importing a ``module:attr`` start, which the node does too.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from .._childspec import ChildType, RestartType, SupervisorSpec, resolve_start
from .._control import TreeRow

__all__ = ["Slot", "TreeShape", "shape_of_spec", "shape_of_rows"]


class Slot(msgspec.Struct, frozen=True):
    path: str  # "" is the root
    type: str  # "supervisor" | "worker"
    permanent: bool
    intensity: int = 1  # a supervisor's flags; OTP's defaults where unknown
    period: float = 5.0


class TreeShape(msgspec.Struct, frozen=True):
    slots: tuple[Slot, ...]

    def paths(self) -> frozenset[str]:
        return frozenset(s.path for s in self.slots)

    def permanent_paths(self) -> frozenset[str]:
        """Paths that must always be running again once the tree has converged: permanent
        children under permanent ancestors (a transient ancestor that stopped normally takes
        its subtree away, rightly)."""
        by_path = {s.path: s for s in self.slots}
        out = set()
        for s in self.slots:
            parts = s.path.split("/") if s.path else []
            chain = ["/".join(parts[:i]) for i in range(len(parts) + 1)]
            if all(by_path[p].permanent for p in chain if p in by_path):
                out.add(s.path)
        return frozenset(out)

    def supervisor_flags(self) -> dict[str, tuple[int, float]]:
        return {s.path: (s.intensity, s.period) for s in self.slots if s.type == "supervisor"}

    def killable(self) -> tuple[str, ...]:
        """What a storm may kill: every permanent process but the root (whose death ends the
        node: that is the durability scenario's fault), in a stable order."""
        return tuple(sorted(p for p in self.permanent_paths() if p))


def _sup_of(start: object) -> SupervisorSpec | None:
    try:
        obj = resolve_start(start)
    except Exception:  # noqa: BLE001 - an unresolvable start is the node's error to report
        return None
    if isinstance(obj, SupervisorSpec):
        return obj
    if callable(obj) and not isinstance(obj, type):
        try:
            made = obj()
        except Exception:  # noqa: BLE001 - as above
            return None
        return made if isinstance(made, SupervisorSpec) else None
    return None


def shape_of_spec(spec: SupervisorSpec) -> TreeShape:
    slots = [Slot("", "supervisor", True, spec.flags.intensity, spec.flags.period)]

    def walk(sup: SupervisorSpec, prefix: str) -> None:
        if sup.flags.strategy.value == "simple_one_for_one":
            return  # dynamic children: no static shape below
        for c in sup.children:
            path = f"{prefix}/{c.id}" if prefix else c.id
            permanent = c.restart is RestartType.PERMANENT
            if c.type is ChildType.SUPERVISOR:
                nested = _sup_of(c.start)
                flags = nested.flags if nested is not None else None
                slots.append(Slot(path, "supervisor", permanent,
                                  flags.intensity if flags else 1,
                                  flags.period if flags else 5.0))
                if nested is not None:
                    walk(nested, path)
            else:
                slots.append(Slot(path, "worker", permanent))

    walk(spec, "")
    return TreeShape(tuple(slots))


def shape_of_rows(rows: Iterable[TreeRow]) -> TreeShape:
    return TreeShape(tuple(Slot(r.path, r.type, True) for r in rows))
