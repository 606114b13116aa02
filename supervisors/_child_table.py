"""The child table as one ``decide`` call works on it: a mutable draft of the state.

:class:`TableDraft` is the working copy of a :class:`~._events.SupervisorState` (frozen again
at the call's end) with the edits OTP's ``supervisor.erl`` makes to its children (set a row,
add one, ``del_child``) and the lifecycle reports they make. Rows are found by key and by
live pid through :class:`_Rows`, an index kept from one decision to the next, so a start,
restart or row deletion under a supervisor of N children costs O(1) lookups (amortized), not
O(N) in Python (a decision still copies the row tuple once, in C). API requests build on
it in :mod:`._requests`, the restart policy and the jobs in :mod:`._decide`. Pure: no I/O.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Any

from .._childspec import RestartType, Strategy
from .._exit import ExitReason
from ._events import Child, ChildStatus, LifecycleKind, Report, SupervisorState

__all__ = ["TableDraft"]


class TableDraft:
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
        rows = self.lookup()
        slot = rows.by_key.get(key)
        return None if slot is None else rows.at(slot)

    def index_running(self, pid: int) -> int | None:
        rows = self.lookup()
        slot = rows.by_pid.get(pid)
        return None if slot is None else rows.at(slot)

    def put(self, i: int, status: ChildStatus, pid: int | None) -> None:
        c = self.children[i]
        self.children[i] = new = Child(key=c.key, spec=c.spec, status=status, pid=pid,
                                       dynamic=c.dynamic)
        if self.rows is not None:
            self.rows.replaced(c, new)

    def add_row(self, c: Child) -> None:
        self.children.append(c)
        if self.rows is not None:
            self.rows.added(c, len(self.children) - 1)

    def drop_row(self, i: int) -> None:
        c = self.children[i]
        self.report(LifecycleKind.CHILD_DELETED, c, None)
        del self.children[i]
        if self.rows is not None and not self.rows.dropped(c, len(self.children)):
            self.rows = None  # many rows went since it was built: rebuilt when next needed

    def del_child(self, i: int) -> None:
        """OTP's ``del_child``: temporary and dynamic rows go, others keep their spec."""
        c = self.children[i]
        if c.dynamic or c.spec.restart is RestartType.TEMPORARY:
            self.drop_row(i)
        else:
            self.put(i, ChildStatus.UNDEFINED, None)

    def report(self, kind: LifecycleKind, c: Child, reason: ExitReason | None) -> None:
        assert c.spec.type is not None  # ChildSpec.__post_init__ resolved it
        self.actions.append(Report(kind, c.key, c.pid, reason, c.spec.type))


class _Rows:
    """Where each child's row is: ``by_key`` (every row) and ``by_pid`` (rows RUNNING a
    live pid), for one children tuple.

    Both map to a *slot*, the row's index when the index was built (rows added since get the
    next slots); ``gone`` lists, sorted, the slots of rows deleted since. A row's index is
    its slot less the deleted slots before it, so a deletion updates no other row (a pool
    of N dynamic children that all stop, or whose jobs end one by one, would otherwise pay
    O(N) in Python per exit: O(N^2) in all). Once deletions outnumber a quarter of the
    rows, the index is rebuilt: O(1) amortized per deletion.

    Invariant: a _Rows describes exactly one tuple of rows, the one it was made or kept for.
    The decision that froze a state keeps its _Rows for the next decision on that state
    (``keep``); the next draft takes it over (``take``) and updates it in place as it edits
    rows, so no other draft can see it half-edited. A draft of any other state (a test
    replaying an old state, say) finds nothing to take and builds its own: the memo changes
    how fast a decision is made, never what is decided.
    """

    __slots__ = ("by_key", "by_pid", "gone")
    _kept: tuple[tuple[Child, ...], _Rows] | None = None

    def __init__(self, rows: list[Child]) -> None:
        self.by_key = {c.key: i for i, c in enumerate(rows)}
        self.by_pid = {c.pid: i for i, c in enumerate(rows)
                       if c.status is ChildStatus.RUNNING and c.pid is not None}
        self.gone: list[int] = []

    def at(self, slot: int) -> int:
        """The row index of a slot that holds a row."""
        return slot - bisect_left(self.gone, slot) if self.gone else slot

    def replaced(self, old: Child, new: Child) -> None:
        slot = self.by_key[old.key]
        if old.status is ChildStatus.RUNNING and self.by_pid.get(old.pid) == slot:  # type: ignore
            del self.by_pid[old.pid]  # type: ignore[arg-type]
        if new.status is ChildStatus.RUNNING and new.pid is not None:
            self.by_pid[new.pid] = slot

    def added(self, c: Child, i: int) -> None:
        self.by_key[c.key] = i + len(self.gone)  # the next slot: every slot below is taken

    def dropped(self, c: Child, left: int) -> bool:
        """Row ``c`` was deleted, ``left`` rows remain; False if the index is best rebuilt."""
        slot = self.by_key.pop(c.key)
        if self.by_pid.get(c.pid) == slot:  # type: ignore[arg-type]
            del self.by_pid[c.pid]  # type: ignore[arg-type]
        insort(self.gone, slot)
        return len(self.gone) <= max(16, left // 4)

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

