"""A partition in a cluster: one node's network link taken down, then up again.

Runs on a cluster the runner starts in network namespaces (``--cluster N`` as root: each
node in a namespace of its own, their veths on one bridge; :mod:`._netns`). A partition
takes the victim's veth down on the bridge's side: nothing resets, packets vanish, so each
side learns of the other's loss from its probes alone. Skipped, with the reason, where
namespaces cannot be made (not root, no ``ip``).

Before each fault :class:`~._cluster.ClusterWatch` plants marks, monitors across every pair
of nodes, and node 0's claim of a global name. The link goes down; once each side has
declared the other dead, the victim registers the same global name on its side (where the
holder is believed dead: both sides are working clusters, and both succeed); the partition
holds ``hold`` seconds more (from the plan); the link comes back.

Checks: each side declares the other dead within the deadline; after the heal every node
lists every node ``alive`` (convergence: link up to that view); every monitor across the
cut fired exactly once with ``noconnection``, none within a side, none again after the
heal; the global name resolves to the older registration (node 0's) on every node and the
victim's claimant is told once that it lost; no orphan on any node.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._errors import ChaosError
from ._cluster import ClusterWatch, each_fault, others, settle, wait_membership
from ._schedule import Fault, arrivals, scenario_rng
from ._target import ClusterTarget

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "partition"
SUMMARY = ("cuts a member node's link (netns veth down) until both sides declare each other "
           "dead, then heals; checks merge, monitors fire once, one name holder, loser told")
REQUIRES = frozenset({"cluster", "netns"})

_MAX_RATE = 0.2  # detection (~1 s), the hold, the merge and the checks


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    rng = scenario_rng(seed, NAME)
    out = []
    for i, t in enumerate(arrivals(rng, duration, min(rate, _MAX_RATE))):
        victim = f"member{rng.randrange(1, 1 << 16)}"
        out.append(Fault(i + 1, round(t, 4), "partition", victim,
                         f"+{round(rng.uniform(0.2, 2.0), 2)}s"))
    return out


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    need = "the partition scenario needs --cluster N in network namespaces"
    if isinstance(ctx.target, ClusterTarget) and ctx.target.net is None:
        raise ChaosError(need)
    deadline = ctx.settings.deadline
    for fault, v, target in each_fault(ctx, faults, need):
        net = target.net
        assert net is not None
        names = [n.name for n in target.nodes]
        victim = target.nodes[v]
        watch = ClusterWatch(ctx, fault.seq)
        watch.plant(claim_on=0)
        time.sleep(0.01)  # registrations are stamped with wall-clock ns: 0's is the older
        net.link(v, up=False)
        ctx.injected(fault)
        try:
            majority = dict.fromkeys(names, "alive") | {victim.name: "down"}
            minority = {n: ("alive" if n == victim.name else "down") for n in names}
            problem = wait_membership(target, majority, deadline, others(target, v)) or \
                wait_membership(target, minority, deadline, [v])
            if ctx.tally.check("declared_dead", problem):
                watch.claim(v)  # the holder is believed dead over there
                time.sleep(float(str(fault.arg).strip("+s")))
        finally:
            net.link(v, up=True)
        settle(ctx, target, watch, time.monotonic())
