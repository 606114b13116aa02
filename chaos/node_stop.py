"""A stopped node in a cluster: a member node SIGSTOPped, then SIGCONTed.

A stopped node resets nothing: its links stay open, its probes just go unanswered, as
with a node hung in the kernel or paused by its hypervisor. Two kinds of faults, in turn:

* ``brief``: stopped for 0.2 s (about two probe periods). Lifeguard's refinements (see
  docs/cluster.md) are meant to keep such a node alive; whether or not it was declared
  dead, what every node saw must be consistent (the checks below follow each node's own
  log of what it declared);
* ``long``: stopped until every other node has declared it dead, held there ``hold``
  seconds (from the plan) while node 0 registers the global name the stopped node holds
  (its holder is believed dead), then resumed: the two registrations meet when it
  rejoins, the older (the stopped node's) wins and node 0's claimant is told once.

Before each fault :class:`~._cluster.ClusterWatch` plants marks, monitors across every
pair of nodes and the victim's claim of a global name. Checks after the resume (within the
deadline): every node lists every node ``alive`` (convergence: resume to that view); every
monitor across a link a node saw go down fired exactly once with ``noconnection``, no
other monitor fired (a late notice after the resume must not fire one twice); the global
name has exactly one holder, the same on every node, the loser told once; no orphan on any
node. Runs on loopback (``--cluster N``); no root needed.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

from ._cluster import ClusterWatch, each_fault, others, settle, wait_membership
from ._schedule import Fault, arrivals, scenario_rng

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "node-stop"
SUMMARY = ("SIGSTOPs a member node briefly or until declared dead, then SIGCONTs it; checks "
           "all see all alive, monitors fire once (noconnection), one name holder")
REQUIRES = frozenset({"cluster"})

BRIEF_S = 0.2
_MAX_RATE = 0.25  # a long stop, its hold, the rejoin and the checks take several seconds


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    """Victims by index (``member<i>``), ``brief`` and ``long`` in turn (the first drawn),
    a long stop's hold (0.2-2 s) drawn too."""
    rng = scenario_rng(seed, NAME)
    first = rng.randrange(2)
    out = []
    for i, t in enumerate(arrivals(rng, duration, min(rate, _MAX_RATE))):
        victim = f"member{rng.randrange(1, 1 << 16)}"
        hold = round(rng.uniform(0.2, 2.0), 2)
        kind = ("brief", "long")[(first + i) % 2]
        out.append(Fault(i + 1, round(t, 4), "node_stop", victim,
                         f"brief {BRIEF_S}s" if kind == "brief" else f"long +{hold}s"))
    return out


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    deadline = ctx.settings.deadline
    for fault, v, target in each_fault(ctx, faults, "the node-stop scenario needs --cluster N"):
        names = [n.name for n in target.nodes]
        victim = target.nodes[v]
        watch = ClusterWatch(ctx, fault.seq)
        watch.plant(claim_on=v)
        os.kill(victim.node_pid, signal.SIGSTOP)
        ctx.injected(fault)
        try:
            if str(fault.arg).startswith("brief"):
                time.sleep(BRIEF_S)
            else:
                expected = dict.fromkeys(names, "alive") | {victim.name: "down"}
                problem = wait_membership(target, expected, deadline, others(target, v))
                if ctx.tally.check("declared_dead", problem):
                    watch.claim(0)  # the stopped holder's name is free on the others
                    time.sleep(float(str(fault.arg).split("+")[1].rstrip("s")))
        finally:
            os.kill(victim.node_pid, signal.SIGCONT)
        settle(ctx, target, watch, time.monotonic())
