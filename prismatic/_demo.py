"""The built-in demo tree that ``python -m prismatic.node`` runs with no ``--app``.

Nested supervisors with different strategies, and one worker that crashes now and then so
the printed tree shows restarts (and, every so often, a one_for_all / rest_for_one restart).
"""

from __future__ import annotations

import random

from ._childspec import ChildSpec, SupervisorSpec, SupFlags
from ._exit import ExitReason
from ._worker import Worker

__all__ = ["demo_tree", "Ticker", "Flaky"]


class Ticker(Worker):
    """Counts ticks; never crashes."""

    def init(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.ticks = 0
        self.send_after(interval, "tick")

    def handle_info(self, msg: object) -> None:
        self.ticks += 1
        self.send_after(self.interval, "tick")

    def handle_call(self, msg: object, caller: object) -> object:
        return self.ticks


class Flaky(Worker):
    """Crashes after a random few seconds, as real code does."""

    def init(self, low: float = 2.0, high: float = 8.0) -> None:
        self.send_after(random.uniform(low, high), "crash")

    def handle_info(self, msg: object) -> None:
        raise RuntimeError("flaky worker hit a (simulated) bug")

    def terminate(self, reason: ExitReason) -> None:
        pass


def demo_tree() -> SupervisorSpec:
    frontends = SupervisorSpec(
        flags=SupFlags(strategy="one_for_all", intensity=5, period=30),
        children=[ChildSpec(id="listener", start=Ticker),
                  ChildSpec(id="sessions", start=Ticker),
                  ChildSpec(id="flaky_cache", start=Flaky, args=(6.0, 15.0))])
    pipeline = SupervisorSpec(
        flags=SupFlags(strategy="rest_for_one", intensity=5, period=30),
        children=[ChildSpec(id="source", start=Ticker),
                  ChildSpec(id="transform", start=Flaky),
                  ChildSpec(id="sink", start=Ticker)])
    return SupervisorSpec(
        flags=SupFlags(strategy="one_for_one", intensity=10, period=60),
        children=[ChildSpec(id="frontends", start=frontends),
                  ChildSpec(id="pipeline", start=pipeline),
                  ChildSpec(id="clock", start=Ticker, args=(0.5,))])
