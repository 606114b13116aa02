"""Trees the CLI tests run: one whose children have exited in every way OTP knows."""

from __future__ import annotations

import os
import signal

import prismatic as p
from tests.apps import IgnoreInit, Idle, StopNormally, _LOG


class Once(p.Worker):
    """Does ``how`` once per node (a flag file beside the test's log remembers it), then
    idles: so a restarted child shows a fixed restart count and its last exit."""

    def init(self, key: str, how: str, name: str | None = None) -> None:
        if name:
            self.register(name)
        flag = f"{_LOG}.{key}"
        if how == "never" or os.path.exists(flag):
            return
        with open(flag, "w"):
            pass
        self.how = how
        self.send_after(0.01, "go")

    def handle_info(self, msg: object) -> None:
        if self.how == "crash":
            raise RuntimeError("golden crash")
        if self.how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.how == "exit3":
            os._exit(3)
        raise p.Stop()  # "normal"


def once(id: str, how: str, **kw: object) -> p.ChildSpec:
    return p.ChildSpec(id=id, start=Once, args=(id, how), **kw)  # type: ignore[arg-type]


def golden() -> p.SupervisorSpec:
    """root: a running child, one restarted after each kind of exit, a transient one done,
    one the test stops, one whose init ignores, a temporary one gone, a job pool, a nested
    supervisor."""
    pool = p.SupervisorSpec(flags=p.SupFlags(strategy="simple_one_for_one", intensity=10,
                                             period=5),
                            children=[p.ChildSpec(id="job", start=StopNormally,
                                                  restart="transient")])
    sub = p.SupervisorSpec(children=[p.ChildSpec(id="leaf", start=Idle, args=("leaf",))])
    return p.SupervisorSpec(flags=p.SupFlags(intensity=100, period=5), children=[
        p.ChildSpec(id="steady", start=Once, args=("steady", "never", "golden-steady")),
        once("crashy", "crash"),
        once("killy", "kill"),
        once("coded", "exit3", restart="transient"),
        once("finished", "normal", restart="transient"),
        p.ChildSpec(id="stopped", start=Idle, args=("stopped",)),
        p.ChildSpec(id="ignored", start=IgnoreInit),
        once("temp", "normal", restart="temporary"),
        p.ChildSpec(id="pool", start=pool),
        p.ChildSpec(id="sub", start=sub),
    ])


def doomed() -> p.SupervisorSpec:
    """A root that gives up: its only child crash-loops past intensity 1."""
    from tests.apps import CrashSoon

    return p.SupervisorSpec(flags=p.SupFlags(intensity=1, period=5),
                            children=[p.ChildSpec(id="crasher", start=CrashSoon)])
