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


class Echo(p.Worker):
    """Replies with what it was sent; counts casts."""

    def init(self, name: str) -> None:
        self.casts = 0
        self.register(name)

    def handle_call(self, msg: object, caller: p.Caller) -> object:
        if msg == "casts":
            return self.casts
        return msg

    def handle_cast(self, msg: object) -> None:
        self.casts += 1


class Driver(p.Worker):
    """Calls another worker in a loop when asked: the worker-to-worker round trip."""

    def init(self) -> None:
        self.register("driver")

    def handle_call(self, msg: list, caller: p.Caller) -> list[float]:
        import time

        _, dest, n, payload = msg
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            self.call(dest, payload)
            lat.append(time.perf_counter() - t)
        return lat


def messaging() -> p.SupervisorSpec:
    return p.SupervisorSpec(children=[p.ChildSpec(id="echo", start=Echo, args=("echo",)),
                                      p.ChildSpec(id="driver", start=Driver)])


class Anchor(p.Worker):
    """What every ``Named`` worker monitors."""

    def init(self) -> None:
        self.register("anchor")


class Named(p.Worker):
    """Registers a name and monitors the anchor: the hub's registry and monitors grow with
    the tree (the scale bench)."""

    def init(self, name: str) -> None:
        self.register(name)
        self.monitor("anchor")


def named_pool() -> p.SupervisorSpec:
    """An anchor and ``PRISMATIC_BENCH_WORKERS`` named, monitoring workers under the root."""
    n = int(os.environ.get("PRISMATIC_BENCH_WORKERS", "1000"))
    return p.SupervisorSpec(children=[
        p.ChildSpec(id="anchor", start=Anchor),
        *(p.ChildSpec(id=f"w{i}", start=Named, args=(f"w{i}",)) for i in range(n))])


def supervised_pool() -> p.SupervisorSpec:
    """``PRISMATIC_BENCH_WORKERS`` supervisors under the root, one idle worker each (none
    gives up: the benches kill their workers)."""
    n = int(os.environ.get("PRISMATIC_BENCH_WORKERS", "1000"))
    tolerant = p.SupFlags(intensity=10**9, period=1)
    return p.SupervisorSpec(flags=tolerant, children=[
        p.ChildSpec(id=f"s{i}", type="supervisor",
                    start=p.SupervisorSpec(flags=tolerant,
                                           children=[p.ChildSpec(id="w", start=Idle)]))
        for i in range(n)])
