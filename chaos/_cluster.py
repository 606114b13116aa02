"""What every cluster scenario (node loss, a stopped node, a partition) plants on the
cluster before a fault and checks once it healed.

Before the fault (:meth:`ClusterWatch.plant`), on every node: a ``chaos_mark_<n>`` (an idle
worker) and a ``chaos_watch_<n>`` (:class:`~._apps.Watcher`) that monitors the marks of
every *other* node; and a ``chaos_claim_<n>`` (:class:`~._apps.Claimant`) that registers a
fresh global name on one node. During the fault the scenario may make a second claim
(:meth:`ClusterWatch.claim`) on the other side, where the first holder's node is believed
dead. Watchers and claimants log what they get (``chaos.monitor``, ``chaos.global``) in
their node's event log, which the runner reads back as files: it needs no way into a
node's network namespace for that.

After the heal (:meth:`ClusterWatch.check`):

* :func:`~._invariants.membership_converged`: every node lists every node ``alive``;
* :func:`~._invariants.monitors_fired_once`: each monitor fired once per death or per lost
  link (which links were lost is read from each node's ``cluster.node.<name>.down`` events),
  and never otherwise;
* :func:`~._invariants.global_name_resolved`: every node resolves the name to the same
  live registrant, the loser (if both sides registered it) told once;
* :func:`~._invariants.no_orphans` over every node's processes.

Then :meth:`ClusterWatch.remove` takes the planted children away (watchers first: a mark's
exit is not a fault).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .._childspec import ChildSpec
from .._errors import ChaosError, PrismaticError
from ._invariants import (
    DownSeen, Monitor, global_name_resolved, membership_converged, monitors_fired_once,
    process_alive,
)
from ._observe import members
from ._target import ClusterTarget

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._schedule import Fault

__all__ = ["ClusterWatch", "views", "wait_membership", "others", "victim_of", "each_fault",
           "settle"]

_APPS = "prismatic.chaos._apps"
_SETTLE_S = 0.3  # after the checks held: a duplicate Down or a late conflict shows by then


def views(target: ClusterTarget, observers: Collection[int] | None = None,
          timeout: float = 2.0) -> dict[str, dict[str, tuple[str, int]]]:
    """What each observer node (indices; default every running one) believes of each
    member. One that does not answer is shown as seeing ``unreachable``."""
    out = {}
    for i, n in enumerate(target.nodes):
        if (observers is not None and i not in observers) or not n.running():
            continue
        try:
            with n.connect(timeout=timeout) as conn:
                out[n.name] = members(conn)
        except PrismaticError as exc:
            out[n.name] = {"?": (f"unreachable: {exc}", 0)}
    return out


def wait_membership(target: ClusterTarget, expected: dict[str, str], timeout: float,
                    observers: Collection[int] | None = None,
                    newer: dict[str, int] | None = None) -> str | None:
    """Until the observers see ``expected`` (:func:`~._invariants.membership_converged`);
    what they saw instead at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        problem = membership_converged(views(target, observers), expected, newer)
        if problem is None or time.monotonic() > deadline:
            return problem
        time.sleep(0.05)


def _pid(x: Any) -> tuple[str, int]:
    return str(x[0]), int(x[1])


class ClusterWatch:
    def __init__(self, ctx: ScenarioContext, seq: int) -> None:
        assert isinstance(ctx.target, ClusterTarget)
        self.ctx = ctx
        self.target: ClusterTarget = ctx.target
        self.seq = seq
        self.since_ns = time.time_ns()
        self.gname = f"chaos_g{seq}_{uuid.uuid4().hex[:6]}"
        self.marks: dict[str, int] = {}  # node -> ospid
        self.monitors: list[Monitor] = []
        self.claims: list[int] = []  # node indices that made a claim
        self.void: set[str] = set()  # nodes whose watcher died with them

    def _start(self, index: int, cid: str, start: str, args: tuple[Any, ...]) -> int:
        with self.target.nodes[index].connect(timeout=10.0) as conn:
            pid = conn.start_child("", ChildSpec(id=cid, start=f"{_APPS}:{start}", args=args,
                                                 restart="temporary"))
        if pid is None:
            raise PrismaticError(f"{cid} did not start on {self.target.nodes[index].name}")
        return pid

    def plant(self, claim_on: int) -> None:
        """Marks and watchers on every node, then the first claim on node ``claim_on``."""
        nodes = self.target.nodes
        with ThreadPoolExecutor(len(nodes)) as pool:  # a start is a process spawn: side by side
            pids = list(pool.map(lambda i: self._start(i, f"chaos_mark_{self.seq}", "Idle", ()),
                                 range(len(nodes))))
            self.marks = {n.name: pid for n, pid in zip(nodes, pids, strict=True)}
            theirs = [[(m, pid) for m, pid in self.marks.items() if m != n.name] for n in nodes]
            list(pool.map(lambda i: self._start(i, f"chaos_watch_{self.seq}", "Watcher", (
                self.seq, [list(t) for t in theirs[i]])), range(len(nodes))))
        for n, mine in zip(nodes, theirs, strict=True):
            self.monitors += [Monitor(n.name, m, pid) for m, pid in mine]
        # A remote monitor is set up asynchronously (a frame to the other node): give it a
        # moment to arrive before the fault cuts the link.
        time.sleep(0.3)
        self.claim(claim_on)

    def claim(self, index: int) -> None:
        """A claimant of this fault's global name on node ``index``."""
        self._start(index, f"chaos_claim_{self.seq}_{len(self.claims)}", "Claimant",
                    (self.gname, self.seq))
        self.claims.append(index)

    def watcher_lost(self, index: int) -> None:
        """Node ``index``'s watcher died with its node: its monitors are void."""
        self.void.add(self.target.nodes[index].name)

    # ---- reading back -------------------------------------------------------------------------

    def _records(self, pattern: str) -> list[Any]:
        out: list[Any] = []
        for n in self.target.nodes:
            with n.connect(timeout=5.0) as conn:
                conn.replay(out.append, pattern=pattern, since_ns=self.since_ns)
        return [r.payload for r in out if isinstance(r.payload, dict)]

    def _downs(self) -> list[DownSeen]:
        out = []
        for p in self._records("chaos.monitor"):
            if p.get("fault") == self.seq:
                node, ospid = _pid(p["target"])
                out.append(DownSeen(Monitor(str(p["watcher"]), node, ospid), str(p["reason"])))
        return out

    def _lost(self) -> set[tuple[str, str]]:
        """(observer, member) for every ``down`` or ``left`` a node logged since the plant."""
        out = set()
        for p in self._records("cluster.node.#"):
            if p.get("state") in ("dead", "left") and p.get("seen_by"):
                out.add((str(p["seen_by"]), str(p["node"])))
        return out

    def _monitor_problem(self) -> str | None:
        monitors = [m for m in self.monitors if m.watcher not in self.void]
        died = {(n, pid) for n, pid in self.marks.items() if not process_alive(pid)}
        downs = [d for d in self._downs() if d.monitor.watcher not in self.void]
        return monitors_fired_once(monitors, downs, died, self._lost())

    def _global_problem(self) -> str | None:
        events = [p for p in self._records("chaos.global")
                  if p.get("fault") == self.seq and p.get("name") == self.gname]
        holders = [_pid(p["pid"]) for p in events if p["event"] == "registered"
                   and process_alive(int(p["pid"][1]))]
        conflicts: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for p in events:
            if p["event"] == "conflict":
                conflicts.setdefault(_pid(p["pid"]), []).append(_pid(p["winner"]))
        resolved: dict[str, tuple[str, int] | None] = {}
        for i, n in enumerate(self.target.nodes):
            pid = self.target.on_node(i, lambda c: c.whereis_global(self.gname))
            resolved[n.name] = None if pid is None else (pid.node, pid.ospid)
        return global_name_resolved(self.gname, resolved, holders, conflicts)

    def check(self, deadline_s: float) -> None:
        """The heal's checks, each retried until it holds or ``deadline_s`` passed (notices
        and merges travel asynchronously), then once more ``_SETTLE_S`` later (what must
        not happen twice shows by then)."""
        ctx = self.ctx
        names = [n.name for n in self.target.nodes]
        ctx.tally.check("membership_converged",
                        wait_membership(self.target, dict.fromkeys(names, "alive"),
                                        deadline_s))
        for name, probe in (("monitors_fired_once", self._monitor_problem),
                            ("global_name_resolved", self._global_problem)):
            deadline = time.monotonic() + deadline_s
            while (problem := _safely(probe)) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if problem is None:
                time.sleep(_SETTLE_S)
                problem = _safely(probe)
            ctx.tally.check(name, problem)
        ctx.check_orphans()
        ctx.tally.notes.append(self._summary())

    def _summary(self) -> str:
        """One line on what the fault did to monitors and the name (the report's note)."""
        try:
            downs = [d for d in self._downs() if d.monitor.watcher not in self.void]
            events = [p["event"] for p in self._records("chaos.global")
                      if p.get("fault") == self.seq]
        except PrismaticError as exc:
            return f"fault #{self.seq}: {exc}"
        reasons = sorted({d.reason for d in downs})
        return (f"fault #{self.seq}: {len(downs)} of {len(self.monitors)} monitors fired "
                f"({', '.join(reasons) or 'none'}); global name: "
                f"{events.count('registered')} registered, {events.count('refused')} "
                f"refused, {events.count('conflict')} told they lost")

    def remove(self) -> None:
        """Take the planted children away, watchers first."""
        for prefix in ("chaos_watch_", "chaos_claim_", "chaos_mark_"):
            for n in self.target.nodes:
                if not n.running():
                    continue
                try:
                    with n.connect(timeout=5.0) as conn:
                        for c in conn.which_children(""):
                            cid = str(c.id)
                            if cid == f"{prefix}{self.seq}" or \
                                    cid.startswith(f"{prefix}{self.seq}_"):
                                conn.terminate_child("", cid)
                except PrismaticError as exc:
                    self.ctx.tally.check("cluster_cleanup", f"{n.name}: {exc}")


def _safely(probe: Any) -> str | None:
    try:
        return probe()  # type: ignore[no-any-return]
    except PrismaticError as exc:
        return f"{type(exc).__name__}: {exc}"


def others(target: ClusterTarget, index: int) -> Sequence[int]:
    """Every node's index but ``index``."""
    return [i for i in range(len(target.nodes)) if i != index]


def victim_of(target: ClusterTarget, fault_target: str) -> int:
    """A fault's ``member<k>`` as a node index, never the seed (node 0): ``k`` wraps over
    the others, so a plan needs only the seed, not the cluster's size."""
    return 1 + int(fault_target.removeprefix("member")) % (len(target.nodes) - 1)


def each_fault(ctx: ScenarioContext, faults: list[Fault],
               needs: str) -> Iterator[tuple[Fault, int, ClusterTarget]]:
    """The common frame of a cluster scenario's run: the target must be a cluster (else
    ChaosError naming ``needs``), every member alive first (checked), then each fault at its
    offset (until the run is stopped) with its victim's index."""
    target = ctx.target
    if not isinstance(target, ClusterTarget):
        raise ChaosError(needs)
    names = [n.name for n in target.nodes]
    ctx.tally.check("membership_converged", wait_membership(
        target, dict.fromkeys(names, "alive"), ctx.settings.deadline))
    for fault in faults:
        if not ctx.wait_offset(fault.offset):
            return
        yield fault, victim_of(target, fault.target), target


def settle(ctx: ScenarioContext, target: ClusterTarget, watch: ClusterWatch, since: float,
           newer: dict[str, int] | None = None) -> None:
    """The common end of a fault, once undone: every node lists every node ``alive`` (its
    convergence timed from ``since``), then the watch's checks, then its children go."""
    deadline = ctx.settings.deadline
    problem = wait_membership(target, dict.fromkeys((n.name for n in target.nodes), "alive"),
                              deadline, newer=newer)
    if ctx.tally.check("membership_converged", problem):
        ctx.tally.convergence_s.append(time.monotonic() - since)
    watch.check(deadline)
    watch.remove()
