"""Trees the benchmarks run in real nodes."""

from __future__ import annotations

import os

import prismatic as p


class Idle(p.Worker):
    pass


def one_worker() -> p.SupervisorSpec:
    """One permanent worker under a supervisor that never gives up: the restart bench."""
    return p.SupervisorSpec(flags=p.SupFlags(intensity=10**9, period=1),
                            children=[p.ChildSpec(id="victim", start=Idle)])


def empty() -> p.SupervisorSpec:
    return p.SupervisorSpec(flags=p.SupFlags(intensity=10**9, period=1))


def pool() -> p.SupervisorSpec:
    n = int(os.environ.get("PRISMATIC_BENCH_WORKERS", "1000"))
    return p.SupervisorSpec(children=[p.ChildSpec(id=f"w{i}", start=Idle) for i in range(n)])


def dynamic_pool() -> p.SupervisorSpec:
    return p.SupervisorSpec(flags=p.SupFlags(strategy="simple_one_for_one"),
                            children=[p.ChildSpec(id="w", start=Idle)])
