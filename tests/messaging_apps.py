"""Workers and trees for the messaging tests: a scriptable process driven by calls."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import prismatic as p


class Agent(p.Worker):
    """Does what its calls say, and remembers what reached it.

    Calls are lists ``[op, *args]``; pids travel as ``[node, ospid]`` lists.
    """

    def init(self, name: str | None = None, trap: bool = False) -> None:
        self.casts: list[Any] = []
        self.infos: list[Any] = []
        self.notices: list[Any] = []
        self.trap_exit = trap
        if name:
            self.register(name)

    def handle_call(self, msg: Any, caller: p.Caller) -> Any:
        op, *args = msg
        if op == "echo":
            return args[0]
        if op == "seq":  # a call kept in the casts' list: one order for calls, casts, sends
            self.casts.append(msg)
            return args[0]
        if op == "casts":
            return self.casts
        if op == "import":  # [module]: loaded now
            import importlib
            importlib.import_module(args[0])
            return "imported"
        if op == "fdlimit":  # [n or None]: the soft RLIMIT_NOFILE (None: what is open now)
            import resource
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            n = args[0] if args[0] is not None else len(os.listdir("/proc/self/fd")) - 1
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
            return soft
        if op == "infos":
            return self.infos
        if op == "notices":
            return [[type(n).__name__, [n.pid.node, n.pid.ospid], p.describe(n.reason)]
                    for n in self.notices]
        if op == "named_notices":  # the Downs' names too (a monitor by name)
            return [[type(n).__name__, [n.pid.node, n.pid.ospid], p.describe(n.reason),
                     getattr(n, "name", None)] for n in self.notices]
        if op == "whoami":
            return [self.pid.node, self.pid.ospid, caller.pid is not None]
        if op == "sleep":
            time.sleep(args[0])
            return "slept"
        if op == "timer":
            self.send_after(args[0], args[1])
            return "armed"
        if op == "awaitable":  # a plain handler returning an awaitable: moves onto uvloop
            return self._later(args[0])
        if op == "crash":
            raise ValueError("asked to crash")
        if op == "stop":  # exit with reason Normal (a permanent child is restarted)
            raise p.Stop()
        if op == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if op == "monitor":
            return self.monitor(_dest(args[0]))
        if op == "link":
            self.link(_dest(args[0]))
            return "linked"
        if op == "register":
            self.register(args[0])
            return "ok"
        if op == "call":  # worker-to-worker call, with the error's type name on failure
            try:
                return ["ok", self.call(_dest(args[0]), args[1], args[2])]
            except p.CallError as exc:
                return ["error", type(exc).__name__, p.describe(getattr(exc, "reason", None))
                        if getattr(exc, "reason", None) is not None else ""]
        if op == "emit":  # [topic, payloads, correlation id]
            return self.emit_many(args[0], args[1], correlation_id=args[2])
        if op == "replay":  # the payloads logged under a pattern, oldest first
            got: list[Any] = []
            self.replay(lambda rec: got.append(rec.payload), pattern=args[0])
            return got
        if op == "cast":
            return self.cast(_dest(args[0]), args[1])
        if op == "cast_then_stop":  # [dest, n]: n casts, then exit at once (Normal)
            for i in range(args[1]):
                self.cast(_dest(args[0]), ["last", i, "x" * 65536])
            raise p.Stop()
        raise ValueError(f"unknown op {op!r}")

    def handle_cast(self, msg: Any) -> None:
        if isinstance(msg, list) and msg[:1] == ["block"]:
            time.sleep(msg[1])
        if isinstance(msg, list) and msg[:1] == ["flood"]:  # [flood, i, payload]: i is kept
            msg = msg[:2]
        self.casts.append(msg)

    async def _later(self, x: Any) -> Any:
        await asyncio.sleep(0.001)
        return ["later", x]

    def handle_info(self, msg: Any) -> None:
        if isinstance(msg, (p.Down, p.Exit)):
            self.notices.append(msg)
        elif isinstance(msg, list) and msg[:1] == ["seq"]:  # with the casts, in order
            self.casts.append(msg)
        else:
            self.infos.append(msg)


class AsyncAgent(p.Worker):
    async def handle_call(self, msg: Any, caller: p.Caller) -> Any:
        await asyncio.sleep(0.001)
        return ["async", msg]


class SmallMailbox(Agent):
    mailbox_limit = 10  # never reached: a plain worker queues one message at a time


def _dest(x: Any) -> Any:
    """A Pid travels as ``[node, ospid]``; ``[name, node]`` is a name on another node."""
    if isinstance(x, list):
        return p.Pid(*x) if isinstance(x[1], int) else tuple(x)
    return x


def agent(id: str, *args: Any, **kw: Any) -> p.ChildSpec:
    return p.ChildSpec(id=id, start=Agent, args=args, **kw)


def agents() -> p.SupervisorSpec:
    return p.SupervisorSpec(
        flags=p.SupFlags(strategy="one_for_one", intensity=50, period=5),
        children=[agent("a", "alpha"), agent("b", "beta"), agent("c"), agent("u"),
                  agent("t", None, True),
                  p.ChildSpec(id="async", start=AsyncAgent),
                  p.ChildSpec(id="small", start=SmallMailbox, args=("small",))])


class GatedAgent(Agent):
    """Registers its name in ``init``, then stays in ``init`` until the test creates
    ``<test log>.gate`` (or 30 s pass): a live process its supervisor has not reported."""

    def init(self, name: str | None = None, trap: bool = False) -> None:
        super().init(name, trap)
        gate = os.environ.get("PRISMATIC_TEST_LOG", "") + ".gate"
        deadline = time.monotonic() + 30
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)


def gated() -> p.SupervisorSpec:
    return p.SupervisorSpec(children=[p.ChildSpec(id="g", start=GatedAgent, args=("gated",))])


class Recorder(p.Worker):
    """Logs every message it handles, in order, as ``[kind, msg]``. A ``["block", s]`` cast
    holds it up in a plain handler (nothing is read meanwhile: the kernel buffers)."""

    def init(self) -> None:
        self.log: list[Any] = []

    def handle_call(self, msg: Any, caller: p.Caller) -> Any:
        if msg == "log":
            return self.log
        self.log.append(["call", msg])
        return msg

    def handle_cast(self, msg: Any) -> None:
        if isinstance(msg, list) and msg[:1] == ["block"]:
            time.sleep(msg[1])
            return
        self.log.append(["cast", msg])

    def handle_info(self, msg: Any) -> None:
        self.log.append(["info", msg])


class AsyncRecorder(p.Worker):
    """As :class:`Recorder` with ``async`` handlers: while one awaits, the worker keeps
    reading and the queue grows (up to ``mailbox_limit``, then its mailbox pauses).
    ``["hold", path]`` awaits until ``path`` exists (the test opens the gate)."""

    mailbox_limit = 50

    def init(self) -> None:
        self.log: list[Any] = []

    async def handle_call(self, msg: Any, caller: p.Caller) -> Any:
        if msg == "log":
            return self.log
        await asyncio.sleep(0)
        self.log.append(["call", msg])
        return msg

    async def handle_cast(self, msg: Any) -> None:
        if isinstance(msg, list) and msg[:1] == ["hold"]:
            while not os.path.exists(msg[1]):
                await asyncio.sleep(0.005)
            return
        await asyncio.sleep(0)
        self.log.append(["cast", msg])

    async def handle_info(self, msg: Any) -> None:
        self.log.append(["info", msg])


class OneAtATime(Recorder):
    """The smallest mailbox: it pauses at every message it queues."""

    mailbox_limit = 1


def queues() -> p.SupervisorSpec:
    return p.SupervisorSpec(
        flags=p.SupFlags(intensity=20, period=5),
        children=[p.ChildSpec(id="rec", start=Recorder),
                  p.ChildSpec(id="arec", start=AsyncRecorder),
                  p.ChildSpec(id="one", start=OneAtATime)])
