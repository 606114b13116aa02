"""The scenario registry: each scenario is a module of this package with

* ``NAME``, ``SUMMARY`` (one line: what it does and what it checks), ``NEEDS_OWNED_NODE``
  (it restarts the node, so it runs only on a node the runner starts);
* ``plan(seed, duration, rate, shape) -> list[Fault]``: pure, the whole schedule;
* ``run(ctx, faults)``: inject them through the :class:`~._runner.ScenarioContext` and
  record the scenario's own checks in ``ctx.tally``.

A new scenario (the cluster ones, once nodes form a mesh) is one more module and one more
line below; the runner and the CLI need no change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from . import crash_loop, durability, flood, hang, kill_storm, resources

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._schedule import Fault
    from ._shape import TreeShape

__all__ = ["Scenario", "SCENARIOS"]


class Scenario(Protocol):
    NAME: str
    SUMMARY: str
    NEEDS_OWNED_NODE: bool

    def plan(self, seed: int, duration: float, rate: float,
             shape: TreeShape) -> list[Fault]: ...

    def run(self, ctx: ScenarioContext, faults: list[Fault]) -> None: ...


SCENARIOS: dict[str, Scenario] = {m.NAME: m for m in (kill_storm, crash_loop, hang, flood,
                                                      resources, durability)}
