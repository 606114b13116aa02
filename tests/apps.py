"""Workers and trees the integration tests run inside real nodes."""

from __future__ import annotations

import os
import time

import prismatic as p

_LOG = os.environ.get("PRISMATIC_TEST_LOG", "")


def note(line: str) -> None:
    """Append one line to the test's log file (O_APPEND: whole lines, any process)."""
    if _LOG:
        with open(_LOG, "a") as f:
            f.write(line + "\n")


class Idle(p.Worker):
    def init(self, name: str = "") -> None:
        self.name = name

    def terminate(self, reason: p.ExitReason) -> None:
        note(f"terminate {self.name or os.getpid()} {p.describe(reason)}")


class CrashSoon(p.Worker):
    """Crashes right after starting: a crash loop."""

    def init(self) -> None:
        self.send_after(0.01, "boom")

    def handle_info(self, msg: object) -> None:
        raise RuntimeError("crash loop")


class FailInit(p.Worker):
    def init(self) -> None:
        raise ValueError("init refuses")


class IgnoreInit(p.Worker):
    def init(self) -> None:
        raise p.Ignore()


class Stubborn(p.Worker):
    """Ignores SIGTERM's request for a long time: must be killed after its shutdown time."""

    def terminate(self, reason: p.ExitReason) -> None:
        time.sleep(30)


class AsyncWorker(p.Worker):
    async def init(self, delay: float = 0.01) -> None:
        import asyncio

        await asyncio.sleep(delay)
        self.send_after(0.01, "done")

    async def handle_info(self, msg: object) -> None:
        note(f"async {msg}")


class StopNormally(p.Worker):
    def init(self) -> None:
        self.send_after(0.05, "stop")

    def handle_info(self, msg: object) -> None:
        raise p.Stop()


def idle(id: str, **kw: object) -> p.ChildSpec:
    return p.ChildSpec(id=id, start=Idle, args=(id,), **kw)  # type: ignore[arg-type]


def flat(strategy: str = "one_for_one", n: int = 3, intensity: int = 10) -> p.SupervisorSpec:
    return p.SupervisorSpec(flags=p.SupFlags(strategy=strategy, intensity=intensity, period=5),
                            children=[idle(f"w{i}") for i in range(1, n + 1)])


def one_for_one() -> p.SupervisorSpec:
    return flat("one_for_one")


def one_for_all() -> p.SupervisorSpec:
    return flat("one_for_all")


def rest_for_one() -> p.SupervisorSpec:
    return flat("rest_for_one")


def nested() -> p.SupervisorSpec:
    """root (one_for_one, generous) > mid (one_for_one) > leaf (one_for_all) > workers."""
    leaf = p.SupervisorSpec(flags=p.SupFlags(strategy="one_for_all", intensity=1, period=5),
                            children=[idle("a"), idle("b")])
    mid = p.SupervisorSpec(flags=p.SupFlags(intensity=1, period=5),
                           children=[p.ChildSpec(id="leaf", start=leaf), idle("m")])
    return p.SupervisorSpec(flags=p.SupFlags(intensity=100, period=5),
                            children=[p.ChildSpec(id="mid", start=mid), idle("top")])


def escalation() -> p.SupervisorSpec:
    """A crash loop two levels down: leaf gives up, then mid gives up, root keeps going."""
    leaf = p.SupervisorSpec(flags=p.SupFlags(intensity=1, period=5),
                            children=[p.ChildSpec(id="crasher", start=CrashSoon)])
    mid = p.SupervisorSpec(flags=p.SupFlags(intensity=1, period=5),
                           children=[p.ChildSpec(id="leaf", start=leaf)])
    return p.SupervisorSpec(flags=p.SupFlags(intensity=1000, period=5),
                            children=[p.ChildSpec(id="mid", start=mid, restart="transient"),
                                      idle("bystander")])


def dynamic() -> p.SupervisorSpec:
    return p.SupervisorSpec(
        flags=p.SupFlags(strategy="simple_one_for_one", intensity=10, period=5),
        children=[p.ChildSpec(id="job", start=Idle, restart="transient")])


def shutdown_order() -> p.SupervisorSpec:
    sub = p.SupervisorSpec(children=[idle("s1"), idle("s2")])
    return p.SupervisorSpec(children=[idle("first"), p.ChildSpec(id="sub", start=sub),
                                      idle("last")])


def significant() -> p.SupervisorSpec:
    inner = p.SupervisorSpec(
        flags=p.SupFlags(auto_shutdown="any_significant"),
        children=[idle("helper"),
                  p.ChildSpec(id="main", start=StopNormally, restart="transient",
                              significant=True)])
    return p.SupervisorSpec(flags=p.SupFlags(intensity=10, period=5),
                            children=[p.ChildSpec(id="inner", start=inner, restart="transient"),
                                      idle("other")])


def stubborn() -> p.SupervisorSpec:
    return p.SupervisorSpec(children=[p.ChildSpec(id="stubborn", start=Stubborn, shutdown=0.3),
                                      p.ChildSpec(id="async", start=AsyncWorker)])


def failing_start() -> p.SupervisorSpec:
    return p.SupervisorSpec(children=[idle("ok"), p.ChildSpec(id="bad", start=FailInit)])


not_a_spec = 42
