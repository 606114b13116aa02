"""Kill storm: SIGKILL random workers and supervisors at every depth, at ``--rate`` kills
a second (a Poisson process), never more than the tree's restart intensity allows
(:class:`~._schedule.IntensityBudget`): the tree must then always come back.

Checks: after each kill the tree converges to its spec shape (every permanent child
running) within the deadline; every kill is reported once by the killed process's
supervisor (or its supervisor died with it) and no SIGKILL is reported that nobody sent
(:func:`~._invariants.kills_accounted`); the node's restart, exit and escalation counters
agree with its event log (:func:`~._invariants.restarts_consistent`); no process ends up
outside the tree (looked for every second, and at the end). The root is not a target:
its death ends the node, which is the durability scenario's fault.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ._invariants import kills_accounted, restarts_consistent
from ._observe import metric_sum
from ._schedule import Fault, IntensityBudget, arrivals, parent_path, scenario_rng

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "kill-storm"
SUMMARY = ("SIGKILLs random workers and supervisors at every depth at --rate, within each "
           "supervisor's intensity; checks convergence, each kill reported once, metrics = "
           "log, no orphans")
NEEDS_OWNED_NODE = False

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


def _counters(text: str) -> dict[str, float]:
    return {"killed": metric_sum(text, _COUNTERS[0], 'reason="killed"'),
            "restarts": metric_sum(text, _COUNTERS[1]),
            "escalations": metric_sum(text, _COUNTERS[2])}


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    before = _counters(ctx.conn.metrics())
    next_look = time.monotonic() + 1.0
    for fault in faults:
        if not ctx.wait_offset(fault.offset):
            break
        ctx.kill(fault)
        if time.monotonic() >= next_look:
            ctx.look_for_orphans()
            next_look = time.monotonic() + 1.0
    ctx.wait_offset(ctx.settings.duration)
    ctx.probe.wait_converged(ctx.settings.deadline)
    time.sleep(0.2)  # the last exits' log records are group-committed a moment later
    exits = ctx.exits()
    after = _counters(ctx.conn.metrics())
    ctx.tally.check("kills_accounted", kills_accounted(ctx.kills, exits))
    ctx.tally.check("restarts_consistent", restarts_consistent(
        exits, after["killed"] - before["killed"], after["restarts"] - before["restarts"],
        after["escalations"] - before["escalations"]))
