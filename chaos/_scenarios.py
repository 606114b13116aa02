"""The scenario registry: each scenario is a module of this package with

* ``NAME``, ``SUMMARY`` (one line: what it does and what it checks), ``REQUIRES``: what the
  target must offer (``{"node"}``: any single node; ``{"node", "owned"}``: one the runner
  started, because the scenario restarts it; the cluster scenarios will want
  ``{"cluster"}``, offered by a target made of several nodes);
* ``plan(seed, duration, rate, shape) -> list[Fault]``: pure, the whole schedule;
* ``run(ctx, faults)``: inject them through the :class:`~._runner.ScenarioContext` and
  record the scenario's own checks in ``ctx.tally``.

A new scenario (the cluster ones, now that nodes form a mesh) is one more module and one
more line below; a new kind of target (a cluster) is one more class in :mod:`._target`
with its ``OFFERS``; the CLI needs no change beyond an option to name that target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from . import (
    crash_loop, disk_full, durability, flood, hang, kill_storm, node_loss, node_stop, partition,
    resources, subscriber_flood,
)

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._schedule import Fault
    from ._shape import TreeShape

__all__ = ["Scenario", "SCENARIOS"]


class Scenario(Protocol):
    NAME: str
    SUMMARY: str
    REQUIRES: frozenset[str]

    def plan(self, seed: int, duration: float, rate: float,
             shape: TreeShape) -> list[Fault]: ...

    def run(self, ctx: ScenarioContext, faults: list[Fault]) -> None: ...


SCENARIOS: dict[str, Scenario] = {m.NAME: m for m in (kill_storm, crash_loop, hang, flood,
                                                      subscriber_flood, resources,
                                                      durability, disk_full, node_loss,
                                                      node_stop, partition)}
