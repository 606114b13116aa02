"""Workers and trees for the tests of the supervision failure paths."""

from __future__ import annotations

import asyncio
import ctypes
import os
from typing import Any

import prismatic as p
from tests.apps import Idle, note

_PR_SET_PDEATHSIG = 1


def _no_pdeathsig() -> None:
    """Give up this process's PDEATHSIG, so that it outlives its parent long enough to
    see the parent's channel close: the path PDEATHSIG normally pre-empts."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0)


class AsyncCrasher(p.Worker):
    """``handle_call("crash")`` / ``handle_cast("crash")`` raise after an await."""

    async def handle_call(self, msg: Any, caller: p.Caller) -> Any:
        await asyncio.sleep(0)
        if msg == "crash":
            raise ValueError("async handler failed")
        return msg

    async def handle_cast(self, msg: Any) -> None:
        await asyncio.sleep(0)
        if msg == "crash":
            raise KeyError("async cast failed")


class BadTerminate(p.Worker):
    def terminate(self, reason: p.ExitReason) -> None:
        raise RuntimeError("terminate failed")


class AsyncBadTerminate(p.Worker):
    async def terminate(self, reason: p.ExitReason) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("async terminate failed")


class FdStarved(p.Worker):
    """``["starve"]`` lowers its descriptor limit to what it has open, so its mailbox can
    accept no sender; ``["feed"]`` restores it; ``["cpu"]`` its CPU seconds so far."""

    def init(self) -> None:
        import resource

        self.limits = resource.getrlimit(resource.RLIMIT_NOFILE)

    def handle_call(self, msg: Any, caller: p.Caller) -> Any:
        import resource

        if msg == "starve":
            open_now = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_now, self.limits[1]))
            return open_now
        if msg == "feed":
            resource.setrlimit(resource.RLIMIT_NOFILE, self.limits)
            return "fed"
        if msg == "cpu":
            t = os.times()
            return t.user + t.system
        return msg


def not_a_worker(*args: Any) -> Any:
    return {"a": "dict"}


class Outliving(Idle):
    """Gives up its PDEATHSIG: when its supervisor dies, the closed channel stops it."""

    def init(self, name: str = "") -> None:
        super().init(name)
        _no_pdeathsig()


def outliving_supervisor() -> p.SupervisorSpec:
    """Runs in the supervisor's own process before its loop starts (a callable start)."""
    _no_pdeathsig()
    note(f"outliving supervisor {os.getpid()}")
    return p.SupervisorSpec(children=[p.ChildSpec(id="w", start=Idle, args=("under-sup",))])


def failing() -> p.SupervisorSpec:
    return p.SupervisorSpec(
        flags=p.SupFlags(intensity=20, period=5),
        children=[p.ChildSpec(id="ac", start=AsyncCrasher),
                  p.ChildSpec(id="bt", start=BadTerminate),
                  p.ChildSpec(id="abt", start=AsyncBadTerminate),
                  p.ChildSpec(id="fd", start=FdStarved)])


def orphaned() -> p.SupervisorSpec:
    return p.SupervisorSpec(children=[
        p.ChildSpec(id="o", start=Outliving, args=("outliving",)),
        p.ChildSpec(id="s", start=outliving_supervisor, type="supervisor")])
