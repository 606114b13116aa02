"""Kill storm: SIGKILL random workers and supervisors at every depth, at ``--rate`` kills
a second (a Poisson process), never more than the tree's restart intensity allows
(:class:`~._schedule.IntensityBudget`): the tree must then always come back.

Convergence times are from the SIGKILL to the next logged start of the killed path (exact:
the event log's monotonic timestamps). Checks: after each kill the subtree it hit runs again
in full within the deadline (the probe); every kill is reported once by the killed
process's supervisor, or its supervisor died with it, and no SIGKILL is reported that
nobody sent (:func:`~._invariants.kills_accounted`); the node's restart, exit and
escalation counters agree with its event log (:func:`~._invariants.restarts_consistent`);
no process ends up outside the tree (looked for every second, and at the end); a watcher
added under the root monitors every process of the tree as it was before the storm, and
each monitor fires exactly once if its process died, never if not
(:func:`~._invariants.monitors_fired_once`). The root is not a target: its death ends the
node, which is the durability scenario's fault.
"""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING

from .._childspec import ChildSpec
from ._invariants import (
    DownSeen, ExitSeen, Kill, Monitor, kills_accounted, monitors_fired_once, process_alive,
    restarts_consistent,
)
from ._observe import exits_in_log, metric_sum, starts_in_log
from ._schedule import Fault, IntensityBudget, arrivals, parent_path, scenario_rng

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "kill-storm"
SUMMARY = ("SIGKILLs random workers and supervisors at every depth at --rate, within each "
           "supervisor's intensity; checks convergence, each kill reported once, metrics = "
           "log, no orphans")
REQUIRES = frozenset({"node"})  # any single node, owned or not

_COUNTERS = ("prismatic_child_exits_total", "prismatic_restarts_total",
             "prismatic_intensity_exceeded_total")


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    rng = scenario_rng(seed, NAME)
    targets = shape.killable()
    if not targets:
        return []
    budget = IntensityBudget(shape.supervisor_flags())
    faults: list[Fault] = []
    for t in arrivals(rng, duration, rate):
        pick = rng.choice(targets)  # drawn even when refused: a refusal shifts nothing after
        parent = parent_path(pick)
        if not budget.allow(parent, t):
            continue
        budget.spend(parent, t)
        faults.append(Fault(len(faults) + 1, round(t, 4), "kill", pick, "SIGKILL"))
    return faults


def restart_times(kills: list[Kill], starts: dict[str, list[float]]) -> list[float]:
    """Per kill, the time from the SIGKILL to the next logged start of its path (for a
    supervisor: once its children run again). Exact, where the probe's view is only as fine
    as its polling; a kill whose path never started again is the probe's to report."""
    out = []
    for k in kills:
        later = starts.get(k.path, [])
        i = bisect.bisect_right(later, k.mono)
        if i < len(later):
            out.append(later[i] - k.mono)
    return out


def _counters(text: str) -> dict[str, float]:
    return {"killed": metric_sum(text, _COUNTERS[0], 'reason="killed"'),
            "restarts": metric_sum(text, _COUNTERS[1]),
            "escalations": metric_sum(text, _COUNTERS[2])}


WATCHER = "chaos_storm_watch"


def _watch(ctx: ScenarioContext) -> list[Monitor]:
    """A watcher under the root that monitors every process of the tree as it runs now
    (each pid once: a restarted one is a new process, not monitored)."""
    node = ctx.conn.status().node
    pids = sorted({pid for path, pid in ctx.probe.rows.items() if path and pid})
    started = ctx.conn.start_child("", ChildSpec(
        id=WATCHER, start="prismatic.chaos._apps:Watcher", args=(0, [[node, p] for p in pids]),
        restart="temporary"))
    return [Monitor(node, node, p) for p in pids] if started else []


def _monitors_problem(ctx: ScenarioContext, monitors: list[Monitor],
                      exits: list[ExitSeen]) -> str | None:
    exited = {e.pid for e in exits if e.pid is not None and e.kind in
              ("child_exited", "child_stopped", "shutdown_error")}
    died = {(m.node, m.ospid) for m in monitors
            if m.ospid in exited or not process_alive(m.ospid)}
    downs = [DownSeen(Monitor(str(p["watcher"]), str(p["target"][0]), int(p["target"][1])),
                      str(p["reason"]))
             for r in ctx.log("chaos.monitor") if isinstance(p := r.payload, dict)]
    return monitors_fired_once(monitors, downs, died, ())


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    before = _counters(ctx.conn.metrics())
    monitors = _watch(ctx)
    next_look = time.monotonic() + 1.0
    for fault in faults:
        if not ctx.wait_offset(fault.offset):
            break
        ctx.kill(fault)
        if time.monotonic() >= next_look:
            ctx.look_for_orphans()
            next_look = time.monotonic() + 1.0
    ctx.wait_offset(ctx.settings.duration)
    if not ctx.target.running():
        return  # the runner reports the node's exit; its counters went with it
    ctx.probe.wait_converged(ctx.settings.deadline)
    # The last exits reach the log a group commit after they happened.
    deadline = time.monotonic() + 2.0
    while True:
        records = ctx.log("supervisor.#")
        exits = exits_in_log(records)
        if kills_accounted(ctx.kills, exits) is None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    ctx.tally.convergence_s.extend(restart_times(ctx.kills, starts_in_log(records)))
    after = _counters(ctx.conn.metrics())
    ctx.tally.check("kills_accounted", kills_accounted(ctx.kills, exits))
    ctx.tally.check("restarts_consistent", restarts_consistent(
        exits, after["killed"] - before["killed"], after["restarts"] - before["restarts"],
        after["escalations"] - before["escalations"]))
    if not ctx.conn.pid_of(WATCHER):  # a one_for_all root took it away: its monitors went
        ctx.tally.notes.append(f"{WATCHER} was stopped by its supervisor: monitors unchecked")
        return
    deadline = time.monotonic() + 3.0  # a Down is logged a group commit after the exit
    while (problem := _monitors_problem(ctx, monitors, exits)) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    ctx.tally.check("monitors_fired_once", problem)
    fired = len(ctx.log("chaos.monitor"))
    ctx.tally.notes.append(f"{fired} of {len(monitors)} monitors of the tree's first "
                           f"processes fired, once each")
    ctx.conn.terminate_child("", WATCHER)
