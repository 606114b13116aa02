"""The built-in demo tree that ``python -m prismatic.node`` runs with no ``--app``.

Nested supervisors with different strategies, and workers that crash now and then so the
printed tree shows restarts (and, every so often, a one_for_all / rest_for_one restart).
The pipeline passes messages: ``source`` casts a number to the process registered as
``transform`` twice a second, which casts its double to ``sink``; ask the sink from a shell
with ``prismatic call sink total``.

``transform`` crashes now and then and takes a second to warm up before it registers its
name (as a worker that loads a model or fills a cache would). The pipeline is
``rest_for_one`` in the order sink, source, transform: a crashed ``transform`` is restarted
alone, ``source`` keeps casting, and its casts during the warm-up become dead letters
(``deadletter.not_registered``: counted, logged, kept in the event log; watch them with
``prismatic subscribe 'deadletter.#'``). A ``sink`` crash would restart all three.
"""

from __future__ import annotations

import random

from ._childspec import ChildSpec, SupervisorSpec, SupFlags
from ._exit import ExitReason
from ._worker import Worker

__all__ = ["demo_tree", "Ticker", "Flaky", "Source", "Transform", "Sink"]


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


class Source(Worker):
    """Casts 1, 2, 3... to ``transform``, every ``interval`` seconds."""

    def init(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.n = 0
        self.send_after(interval, "tick")

    def handle_info(self, msg: object) -> None:
        self.n += 1
        self.cast("transform", self.n)
        self.send_after(self.interval, "tick")


class Transform(Flaky):
    """Registered as ``transform`` once warmed up (``warmup`` seconds after it started):
    doubles what it gets, for ``sink``; crashes now and then."""

    def init(self, low: float = 2.0, high: float = 8.0, warmup: float = 1.0) -> None:
        super().init(low + warmup, high + warmup)
        self.send_after(warmup, "warm")

    def handle_info(self, msg: object) -> None:
        if msg == "warm":
            self.register("transform")
        else:
            super().handle_info(msg)

    def handle_cast(self, msg: object) -> None:
        self.cast("sink", msg * 2 if isinstance(msg, int) else msg)


class Sink(Worker):
    """Registered as ``sink``: sums what arrives; ``call("sink", "total")`` reports it."""

    def init(self) -> None:
        self.total = self.count = 0
        self.register("sink")

    def handle_cast(self, msg: object) -> None:
        if isinstance(msg, int):
            self.total += msg
            self.count += 1

    def handle_call(self, msg: object, caller: object) -> object:
        return {"total": self.total, "messages": self.count}


def demo_tree() -> SupervisorSpec:
    frontends = SupervisorSpec(
        flags=SupFlags(strategy="one_for_all", intensity=5, period=30),
        children=[ChildSpec(id="listener", start=Ticker),
                  ChildSpec(id="sessions", start=Ticker),
                  ChildSpec(id="flaky_cache", start=Flaky, args=(6.0, 15.0))])
    pipeline = SupervisorSpec(
        flags=SupFlags(strategy="rest_for_one", intensity=5, period=30),
        children=[ChildSpec(id="sink", start=Sink),
                  ChildSpec(id="source", start=Source),
                  ChildSpec(id="transform", start=Transform)])
    return SupervisorSpec(
        flags=SupFlags(strategy="one_for_one", intensity=10, period=60),
        children=[ChildSpec(id="frontends", start=frontends),
                  ChildSpec(id="pipeline", start=pipeline),
                  ChildSpec(id="clock", start=Ticker, args=(0.5,))])
