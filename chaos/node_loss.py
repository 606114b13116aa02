"""Node loss in a cluster: a member node SIGKILLed, then restarted under its name.

Runs on a cluster the runner starts (``--cluster N``: N nodes of the app in one mesh on
loopback, node 0 the seed). Before each fault, :class:`~._cluster.ClusterWatch` plants
marks, monitors across every pair of nodes and a global name held on the victim. The fault
SIGKILLs one member other than the seed (its node process: its tree dies with it); once
every survivor sees it down, node 0 registers the same global name (the dead holder's is
freed), and the victim is started again on the same data directory and name; it rejoins
through the seed.

Checks (:mod:`._cluster`): within the deadline every survivor sees the killed node
``dead`` (:func:`~._invariants.membership_converged`; a kill is noticed in milliseconds:
its links drop); nothing of its tree is left (:func:`~._invariants.nothing_left`); after
the restart every node sees every other ``alive``, the restarted one at a newer
incarnation (convergence: kill to that view); every survivor's monitor of the victim's mark
fired exactly once (``noconnection`` or its real death), no other monitor fired
(:func:`~._invariants.monitors_fired_once`); the global name resolves to node 0's claimant
on every node (:func:`~._invariants.global_name_resolved`); no orphan on any node.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ._cluster import ClusterWatch, each_fault, others, settle, views, wait_membership
from ._invariants import nothing_left
from ._schedule import Fault, arrivals, scenario_rng

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "node-loss"
SUMMARY = ("SIGKILLs a member node of a --cluster and restarts it; checks survivors see it "
           "dead, nothing left, all see all alive, monitors fire once, one name holder")
REQUIRES = frozenset({"cluster"})

_MAX_RATE = 0.3  # a restart, a rejoin and the checks take a few seconds


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    """Victims by index (``member<i>``, resolved by :func:`~._cluster.victim_of`)."""
    rng = scenario_rng(seed, NAME)
    return [Fault(i + 1, round(t, 4), "node_kill", f"member{rng.randrange(1, 1 << 16)}",
                  "SIGKILL")
            for i, t in enumerate(arrivals(rng, duration, min(rate, _MAX_RATE)))]


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    deadline = ctx.settings.deadline
    for fault, v, target in each_fault(ctx, faults, "the node-loss scenario needs --cluster N"):
        names = [n.name for n in target.nodes]
        victim = target.nodes[v]
        watch = ClusterWatch(ctx, fault.seq)
        watch.plant(claim_on=v)
        before = views(target, [0])[names[0]].get(victim.name, ("?", 0))[1]
        killed_at = time.monotonic()
        victim.kill()
        ctx.injected(fault)
        watch.watcher_lost(v)
        expected = dict.fromkeys(names, "alive") | {victim.name: "down"}
        ctx.tally.check("membership_converged",
                        wait_membership(target, expected, deadline, others(target, v)))
        ctx.tally.check("nothing_left", nothing_left(victim.reap_leftovers(1.0)))
        watch.claim(0)  # the dead holder's name is free on the survivors
        victim.start()
        settle(ctx, target, watch, killed_at, newer={victim.name: before})
