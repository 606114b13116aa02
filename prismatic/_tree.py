"""The node's live picture of its supervision tree, built only from lifecycle events.

Every supervisor reports each child start and exit up the tree; the node folds them into a
:class:`TreeView`. Invariant: an entry exists for every child that has started at least once,
whose supervisor still holds its row (``child_deleted`` removes it: a temporary or dynamic
child that ended, or ``delete_child``), and whose supervisor is alive; when a supervisor
exits its whole subtree is dropped (its children are dead: they never outlive it). So the
picture matches the supervisors' own tables and does not grow with every job a pool ran.
"""

from __future__ import annotations

import time

import msgspec

from ._exit import ExitReason, describe, is_abnormal
from .transports._frames import LifecycleFrame

__all__ = ["TreeEntry", "TreeView"]


class TreeEntry(msgspec.Struct):
    path: tuple[str, ...]
    type: str
    pid: int | None = None
    restarts: int = 0
    started_mono: float = 0.0
    last_exit: ExitReason | None = None

    @property
    def running(self) -> bool:
        return self.pid is not None


class TreeView:
    def __init__(self, root_pid: int) -> None:
        self.entries: dict[tuple[str, ...], TreeEntry] = {
            (): TreeEntry(path=(), type="supervisor", pid=root_pid, started_mono=time.monotonic())
        }
        self.last_event = ""
        self._order: list[TreeEntry] | None = None  # rows(), until an entry comes or goes
        # Each supervisor's path -> the paths of the entries below it (at any depth, in
        # insertion order), so a supervisor's exit drops its subtree without a scan of every
        # entry (O(N) per exit: a node stopping 5,000 supervisors paid O(N^2), ~1 s). Kept
        # under every ancestor, present or not: a child supervisor's children are reported
        # before it is.
        self._under: dict[tuple[str, ...], dict[tuple[str, ...], None]] = {}
        # exits and errors since take_header(), oldest first: (abnormal?, line)
        self.batch: list[tuple[bool, str]] = []

    def apply(self, ev: LifecycleFrame) -> list[int]:
        """Fold one event in; return the pids of the running processes that died with an
        exited supervisor (PDEATHSIG), which no supervisor is left to report."""
        path = (*ev.path, ev.key)
        self.last_event = f"{'/'.join(path)}: {ev.kind}" + (
            f" ({describe(ev.reason)})" if ev.reason is not None else "")
        if ev.kind not in ("child_started", "child_deleted"):
            self.batch.append((ev.reason is None or is_abnormal(ev.reason), self.last_event))
        entry = self.entries.get(path)
        if ev.kind == "child_started":
            if entry is None:
                self._order = None
                self.entries[path] = TreeEntry(path=path, type=ev.child_type, pid=ev.pid,
                                               started_mono=ev.mono)
                for k in range(1, len(path)):
                    self._under.setdefault(path[:k], {})[path] = None
            else:
                entry.restarts += 1
                entry.pid = ev.pid
                entry.started_mono = ev.mono
        elif ev.kind in ("child_exited", "child_stopped") and entry is not None:
            if entry.pid == ev.pid:
                entry.pid = None
                entry.last_exit = ev.reason
                if entry.type == "supervisor":  # a worker has nothing below it
                    return self._drop_below(path)
        elif ev.kind == "child_deleted" and entry is not None:
            self._order = None
            self._remove(path)  # a row is deleted only once its process is gone
            return self._drop_below(path)
        return []

    def take_header(self, limit: int = 5, crash_limit: int = 20) -> str:
        """What happened since the last call, for the live tree's header: every crash or
        error of the batch (up to ``crash_limit``) and normal exits up to ``limit`` in all,
        then how many more; not only the last event, which would hide a crash followed by
        its restart."""
        batch, self.batch = self.batch, []
        if not batch:
            return self.last_event
        bad = [i for i, (abnormal, _) in enumerate(batch) if abnormal][:crash_limit]
        fine = [i for i, (abnormal, _) in enumerate(batch) if not abnormal]
        shown = sorted(bad + fine[:max(0, limit - len(bad))])  # in the order they happened
        lines = [batch[i][1] for i in shown]
        more = len(batch) - len(lines)
        return "; ".join(lines) + (f" (+{more} more)" if more else "")

    def _drop_below(self, path: tuple[str, ...]) -> list[int]:
        dead = list(self._under.get(path, ()))
        if dead:
            self._order = None
        return [pid for p in dead if (pid := self._remove(p).pid) is not None]

    def _remove(self, path: tuple[str, ...]) -> TreeEntry:
        for k in range(1, len(path)):
            below = self._under[path[:k]]
            del below[path]
            if not below:
                del self._under[path[:k]]
        return self.entries.pop(path)

    def rows(self) -> list[TreeEntry]:
        """Entries depth-first, siblings in first-start order (the caller must not change the
        list: it is kept until an entry comes or goes, so a ``tree`` of a steady node of
        thousands does not sort it out again)."""
        if self._order is None:
            self._order = self._depth_first()
        return self._order

    def _depth_first(self) -> list[TreeEntry]:
        kids: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        for p in self.entries:  # a dict keeps first-insertion order
            if p:
                kids.setdefault(p[:-1], []).append(p)
        out: list[TreeEntry] = []
        stack: list[tuple[str, ...]] = [()]
        while stack:
            p = stack.pop()
            out.append(self.entries[p])
            stack.extend(reversed(kids.get(p, [])))
        return out

    def render(self) -> str:
        now = time.monotonic()
        lines = []
        for e in self.rows():
            name = e.path[-1] if e.path else "root"
            state = f"pid {e.pid}" if e.pid else "stopped"
            up = f" up {now - e.started_mono:6.1f}s" if e.pid else ""
            extra = f" restarts {e.restarts}" if e.restarts else ""
            kind = "sup" if e.type == "supervisor" else "wrk"
            lines.append(f"{'  ' * len(e.path)}{name:<{max(1, 24 - 2 * len(e.path))}} "
                         f"{kind} {state:<11}{up}{extra}")
        return "\n".join(lines)
