"""Node loss in a cluster: a member node SIGKILLed, then restarted under its name.

Runs on a cluster the runner starts (``--cluster N``: N nodes of the app in one mesh, node
0 the seed). Each fault SIGKILLs one member other than the seed (its node process: its tree
dies with it), waits until every survivor sees it down, checks nothing of its tree is left,
and starts it again on the same data directory and name; it rejoins through the seed.

Checks (:func:`~._invariants.membership_converged`): within the deadline every survivor
sees the killed node ``dead`` (a kill is noticed in milliseconds: its links drop); nothing
of its tree is left (:func:`~._invariants.nothing_left`); after the restart, within the
deadline, every node sees every other ``alive``, the restarted one at a newer incarnation.
Convergence is from the kill to that last view. Plus every scenario's checks on node 0.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._errors import ChaosError, PrismaticError
from ._invariants import membership_converged, nothing_left
from ._observe import members
from ._schedule import Fault, arrivals, scenario_rng
from ._target import ClusterTarget

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "node-loss"
SUMMARY = ("SIGKILLs a member node of a --cluster and restarts it; checks every survivor "
           "sees it dead, nothing left, then all see all alive (newer incarnation)")
REQUIRES = frozenset({"cluster"})

_MAX_RATE = 0.5  # a restart and a rejoin take a second or two
_MEMBERS = 3  # victims are drawn among members 1.. of a cluster of at least this size


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    """Victims by index (``member<i>``), resolved against the cluster's size at run time
    (an index past it wraps), so the plan needs only the seed."""
    rng = scenario_rng(seed, NAME)
    return [Fault(i + 1, round(t, 4), "node_kill", f"member{rng.randrange(1, 1 << 16)}",
                  "SIGKILL")
            for i, t in enumerate(arrivals(rng, duration, min(rate, _MAX_RATE)))]


def _views(target: ClusterTarget, timeout: float) -> dict[str, dict[str, tuple[str, int]]]:
    out = {}
    for n in target.nodes:
        if not n.running():
            continue
        try:
            with n.connect(timeout=timeout) as conn:
                out[n.name] = members(conn)
        except PrismaticError as exc:
            out[n.name] = {"?": (f"unreachable: {exc}", 0)}
    return out


def _until(target: ClusterTarget, expected: dict[str, str], newer: dict[str, int] | None,
           timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        problem = membership_converged(_views(target, 2.0), expected, newer)
        if problem is None or time.monotonic() > deadline:
            return problem
        time.sleep(0.05)


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    target = ctx.target
    if not isinstance(target, ClusterTarget):
        raise ChaosError("the node-loss scenario needs --cluster N")
    names = [n.name for n in target.nodes]
    deadline = ctx.settings.deadline
    ctx.tally.check("membership_converged",
                    _until(target, dict.fromkeys(names, "alive"), None, deadline))
    for fault in faults:
        if not ctx.wait_offset(fault.offset):
            break
        victim = target.nodes[1 + int(fault.target.removeprefix("member")) %
                              (len(target.nodes) - 1)]
        before = _views(target, 2.0)[target.nodes[0].name].get(victim.name, ("?", 0))[1]
        killed_at = time.monotonic()
        victim.kill()
        ctx.injected(fault)
        expected = dict.fromkeys(names, "alive") | {victim.name: "down"}
        ctx.tally.check("membership_converged", _until(target, expected, None, deadline))
        ctx.tally.check("nothing_left", nothing_left(victim.reap_leftovers(1.0)))
        victim.start()
        problem = _until(target, dict.fromkeys(names, "alive"), {victim.name: before},
                         deadline)
        if ctx.tally.check("membership_converged", problem):
            ctx.tally.convergence_s.append(time.monotonic() - killed_at)
