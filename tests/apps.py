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


def small_supervisor_of(w: p.ChildSpec) -> p.SupervisorSpec:
    """root > ``sup`` > ``w``: ``sup`` is small, so it starts dormant; neither supervisor
    gives up."""
    tolerant = p.SupFlags(intensity=1000, period=5)
    return p.SupervisorSpec(flags=tolerant, children=[p.ChildSpec(
        id="sup", start=p.SupervisorSpec(flags=tolerant, children=[w]))])


def small_child_supervisor() -> p.SupervisorSpec:
    """root > ``sup`` (one worker ``w``; small, so it starts dormant), both never give up."""
    return small_supervisor_of(idle("w"))


def small_supervisors_beside_workers() -> p.SupervisorSpec:
    """root > four workers ``f0``..``f3`` and four small supervisors ``s0``..``s3`` (one
    worker ``w`` each, so each starts dormant): the memory of the two kinds of worker."""
    return p.SupervisorSpec(children=[
        *(idle(f"f{i}") for i in range(4)),
        *(p.ChildSpec(id=f"s{i}", type="supervisor",
                      start=p.SupervisorSpec(children=[idle("w")])) for i in range(4))])


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


# ---- pub/sub ---------------------------------------------------------------------------------


class Relay(p.Worker):
    """Subscribes in a plain init; re-publishes every event under ``relay.<topic>``."""

    def init(self, pattern: str = "in.#") -> None:
        self.ref = self.subscribe(pattern)

    def handle_info(self, msg: object) -> None:
        if isinstance(msg, p.Event):
            self.publish(f"relay.{msg.topic}", msg.payload)


class AsyncRelay(p.Worker):
    """Subscribes from an async init (the loop already runs); re-publishes as ``arelay.``."""

    async def init(self, pattern: str = "ain.#") -> None:
        self.subscribe(pattern)

    async def handle_info(self, msg: object) -> None:
        if isinstance(msg, p.Event):
            self.publish(f"arelay.{msg.topic}", msg.payload)


class SelfSubscriber(p.Worker):
    """On ``selftest.go`` with payload i: subscribes to ``self.<i>``, publishes on it at once,
    and reports ``selftest.done`` with i when its own event comes back."""

    def init(self) -> None:
        self.subscribe("selftest.go")
        self.refs: dict[str, int] = {}

    def handle_info(self, msg: object) -> None:
        if not isinstance(msg, p.Event):
            return
        if msg.topic == "selftest.go":
            topic = f"self.{msg.payload}"
            self.refs[topic] = self.subscribe(topic)
            self.publish(topic, msg.payload)
        elif msg.topic in self.refs:
            self.unsubscribe(self.refs.pop(msg.topic))
            self.publish("selftest.done", msg.payload)


class Burst(p.Worker):
    """On ``burst.go`` with payload n: publishes n events alternating in runs over three
    topics, payload = sequence number, then ``burst.end``."""

    def init(self) -> None:
        self.subscribe("burst.go")

    def handle_info(self, msg: object) -> None:
        if isinstance(msg, p.Event) and msg.topic == "burst.go":
            topics = ("burst.a", "burst.b.x", "burst.c")
            for i in range(msg.payload):
                self.publish(topics[(i // 7) % 3], i)
            self.publish("burst.end", msg.payload)


def pubsub() -> p.SupervisorSpec:
    return p.SupervisorSpec(flags=p.SupFlags(intensity=100, period=5), children=[
        p.ChildSpec(id="relay", start=Relay),
        p.ChildSpec(id="arelay", start=AsyncRelay),
        p.ChildSpec(id="selfsub", start=SelfSubscriber),
        p.ChildSpec(id="burst", start=Burst),
        idle("w1"),
    ])


class SlowInit(p.Worker):
    """Notes its init's start and end (0.15 s apart) and its terminate: the order of starts."""

    def init(self, name: str, extra: int = 0) -> None:
        self.name = name
        note(f"init-begin {name} {extra}")
        print(f"hello from {name}", flush=True)
        time.sleep(0.15)
        note(f"init-end {name} {extra}")

    def terminate(self, reason: p.ExitReason) -> None:
        note(f"terminate {self.name} {p.describe(reason)}")


def small_supervisor_of_every_kind() -> p.SupervisorSpec:
    """root > ``s``, a small supervisor (so it forks its first children ahead) of a worker
    with args ``a``, one whose init ignores ``b``, a supervisor ``c`` of one worker, and a
    worker ``d`` with args: what its pre-forked children become, in order."""
    inner = p.SupervisorSpec(children=[p.ChildSpec(id="w", start=SlowInit, args=("c/w",))])
    return p.SupervisorSpec(flags=p.SupFlags(intensity=100, period=5), children=[
        p.ChildSpec(id="s", type="supervisor", start=p.SupervisorSpec(
            flags=p.SupFlags(intensity=10, period=5), children=[
                p.ChildSpec(id="a", start=SlowInit, args=("a", 7)),
                p.ChildSpec(id="b", start=IgnoreInit),
                p.ChildSpec(id="c", type="supervisor", start=inner),
                p.ChildSpec(id="d", start=SlowInit, args=("d", 9))]))])


def small_supervisor_failing_first() -> p.SupervisorSpec:
    """A small supervisor whose first child's init fails: its start fails, the children
    forked ahead for the rest unused."""
    return p.SupervisorSpec(children=[p.ChildSpec(id="bad", start=FailInit),
                                      idle("x"), idle("y")])


class StopOnCast(p.Worker):
    def handle_cast(self, msg: object) -> None:
        raise p.Stop()


def small_supervisor_stopping_on_cast() -> p.SupervisorSpec:
    """root > ``sup`` (small, so dormant) > ``w``, a permanent worker that stops normally when
    cast anything; neither supervisor gives up."""
    return small_supervisor_of(p.ChildSpec(id="w", start=StopOnCast))


def small_supervisor_of_a_temporary_worker() -> p.SupervisorSpec:
    """root > ``sup`` (small, so dormant) > ``w`` (temporary: never restarted) and ``k``."""
    return p.SupervisorSpec(children=[p.ChildSpec(id="sup", start=p.SupervisorSpec(
        children=[idle("w", restart="temporary"), idle("k")]))])


class InAnotherGroup(p.Worker):
    """Runs under group nobody (set in init; needs root): a process of the node's without
    CAP_SYS_PTRACE may then not read its /proc entries that ptrace guards."""

    def init(self) -> None:
        os.setgid(65534)


def small_supervisor_of_a_transient_in_another_group() -> p.SupervisorSpec:
    """root > ``sup`` (small, so dormant) > ``w``, a transient :class:`InAnotherGroup`."""
    return small_supervisor_of(p.ChildSpec(id="w", start=InAnotherGroup, restart="transient"))


class GroupKeeper(p.Worker):
    """Spawns a ``sleep`` in its own process group and notes ``kid <its pid> <the sleep's>``."""

    def init(self) -> None:
        import subprocess  # noqa: PLC0415

        self.kid = subprocess.Popen(["sleep", "600"])
        note(f"kid {os.getpid()} {self.kid.pid}")


def small_supervisor_of_a_group_keeper() -> p.SupervisorSpec:
    """root > ``sup`` (small, so dormant) > ``w``, a :class:`GroupKeeper`."""
    return small_supervisor_of(p.ChildSpec(id="w", start=GroupKeeper))


def _noted_start() -> int:
    """Note ``started``; how many starts were noted before this one."""
    with open(_LOG, "a+") as f:
        f.seek(0)
        starts = sum(line == "started\n" for line in f)
    note("started")
    return starts


class FailsItsSecondInit(p.Worker):
    """Notes ``started`` at each init; the second one fails (a restart's start failure)."""

    def init(self) -> None:
        starts = _noted_start()
        if starts == 1:
            raise ValueError("the second init refuses")


def small_supervisor_failing_its_second_start() -> p.SupervisorSpec:
    """root > ``sup`` (small, so dormant) > ``w``, a :class:`FailsItsSecondInit`."""
    return small_supervisor_of(p.ChildSpec(id="w", start=FailsItsSecondInit))


class SlowSecondInit(p.Worker):
    """Notes ``started`` at each init; the second one takes 30 s (a restart's slow start)."""

    def init(self) -> None:
        starts = _noted_start()
        if starts == 1:
            time.sleep(30)


def small_supervisor_slow_on_its_second_start() -> p.SupervisorSpec:
    """root > ``sup`` (small, so dormant) > ``w``, a :class:`SlowSecondInit`."""
    return small_supervisor_of(p.ChildSpec(id="w", start=SlowSecondInit))
