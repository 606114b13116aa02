"""The fault schedule: which fault, when, against what, all drawn from one seed.

Pure. A scenario's faults are planned before the first one is injected, from a
``random.Random`` seeded with ``"<seed>:<scenario>"`` (string seeds hash the same in every
run and on every machine), so a run is reproducible from ``--seed``: the same faults in the
same order at the same offsets. Targets are *tree paths* (``pipeline/sink``), never pids:
the pid at a path differs from run to run, the path does not, and the runner looks the pid
up at the moment it injects.

Arrivals are a Poisson process at ``rate`` per second (exponential gaps), the usual model
for independent failures.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import msgspec

__all__ = ["Fault", "scenario_rng", "arrivals", "IntensityBudget", "parent_path"]


class Fault(msgspec.Struct, frozen=True):
    """One planned fault. ``arg`` is the scenario's own parameter (a signal, a number of
    failing starts, a kind of hang)."""

    seq: int  # 1-based, in injection order
    offset: float  # seconds after the scenario started
    kind: str
    target: str  # a tree path ("" the root), or "node" for the node process
    arg: int | str | None = None

    def describe(self) -> str:
        where = self.target or "root"
        extra = f" ({self.arg})" if self.arg is not None else ""
        return f"fault #{self.seq} at +{self.offset:.3f}s: {self.kind} {where}{extra}"


def scenario_rng(seed: int, scenario: str) -> random.Random:
    """The scenario's own random stream: adding a scenario never shifts another's faults."""
    return random.Random(f"{seed}:{scenario}")


def arrivals(rng: random.Random, duration: float, rate: float) -> Iterator[float]:
    """Offsets in [0, duration) of a Poisson process at ``rate`` per second; at least one
    (uniform in the duration) even when the process draws none, so that a short run of a
    slow scenario still injects something."""
    if rate <= 0 or duration <= 0:
        return
    t = rng.expovariate(rate)
    if t >= duration:
        yield rng.uniform(0, duration)
        return
    while t < duration:
        yield t
        t += rng.expovariate(rate)


class IntensityBudget:
    """How many kills each supervisor may absorb, so that a storm stays within what the
    tree's restart intensity allows (a tree pushed past it is *meant* to give up, which is
    the crash-loop scenario's business, not the storm's).

    A supervisor with ``intensity`` restarts per ``period`` seconds is given at most
    ``max(1, intensity // 2)`` planned kills of its children in any window of ``period``
    seconds: half, because the tree's own crashes (the demo's flaky workers) draw on the
    same allowance. A supervisor whose flags are unknown is assumed to have OTP's defaults
    (1 restart in 5 s).
    """

    def __init__(self, flags: dict[str, tuple[int, float]]) -> None:
        self.flags = flags
        self.spent: dict[str, list[float]] = {}

    def allow(self, parent: str, now: float) -> bool:
        intensity, period = self.flags.get(parent, (1, 5.0))
        window = [t for t in self.spent.get(parent, []) if t > now - period]
        self.spent[parent] = window
        return len(window) < max(1, intensity // 2)

    def spend(self, parent: str, now: float) -> None:
        self.spent.setdefault(parent, []).append(now)


def parent_path(path: str) -> str:
    """``a/b/c`` -> ``a/b``; a child of the root -> ``""``."""
    return path.rpartition("/")[0]
