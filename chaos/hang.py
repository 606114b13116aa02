"""Hangs: a worker frozen mid-call (SIGSTOP) or stuck in a handler that never returns.

Each fault adds a worker under the root (``chaos_hang_<n>``, temporary, shutdown 0.5 s,
:class:`~._apps.Sleeper`), checks it answers, then hangs it one of two ways:

* ``sigstop``: a slow call is sent and the worker is SIGSTOPped while handling it;
* ``stuck``: a call whose handler never returns.

Checks: the call ends in ``CallTimeout`` (:func:`~._invariants.call_timed_out`); stopping
the worker (``terminate_child``) escalates from SIGTERM to SIGKILL once its shutdown time
has passed, not before and not much later, and the log says ``killed``
(:func:`~._invariants.shutdown_escalated`); the process is gone afterwards; the rest of the
tree keeps converging and the node keeps answering.
"""

from __future__ import annotations

import os
import signal
import time
from functools import partial
from typing import TYPE_CHECKING

from .._errors import CallTimeout, PrismaticError
from ._invariants import ExitSeen, call_timed_out, process_alive, shutdown_escalated
from ._schedule import Fault, arrivals, scenario_rng

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "hang"
SUMMARY = ("SIGSTOPs a worker mid-call, or sticks it in a handler; checks the call times out "
           "and shutdown escalates to SIGKILL after its shutdown time")
REQUIRES = frozenset({"node"})  # any single node, owned or not

SHUTDOWN_S = 0.5
_CALL_TIMEOUT_S = 0.5
_MAX_RATE = 1.0  # each fault takes about 1.5 s (a call timeout, then the shutdown time)


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    rng = scenario_rng(seed, NAME)
    first = rng.randrange(2)  # then in turn: two faults try both ways of hanging
    return [Fault(i + 1, round(t, 4), "hang", f"chaos_hang_{i + 1}",
                  ("sigstop", "stuck")[(first + i) % 2])
            for i, t in enumerate(arrivals(rng, duration, min(rate, _MAX_RATE)))]


def _call_outcome(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except CallTimeout:
        return "timeout"
    except PrismaticError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "a reply"


def _stops_of(pid: int, exits: list[ExitSeen]) -> list[ExitSeen]:
    return [e for e in exits if e.pid == pid and e.kind == "child_stopped"]


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    conn = ctx.conn
    for fault in faults:
        if not ctx.wait_offset(fault.offset):
            break
        name = fault.target
        pid = ctx.start_subject(name, "Sleeper", (name,),
                                lambda n: conn.call(n, "ping", timeout=5.0) == "pong",
                                shutdown=SHUTDOWN_S)
        if pid is None:
            continue
        since = time.time_ns()
        if fault.arg == "sigstop":
            req = conn.send_request(name, "slow", timeout=_CALL_TIMEOUT_S)
            time.sleep(0.1)  # into the 0.3 s handler: frozen mid-call
            os.kill(pid, signal.SIGSTOP)
            outcome = _call_outcome(lambda req=req: conn.receive_response(req, _CALL_TIMEOUT_S))
        else:
            outcome = _call_outcome(lambda name=name: conn.call(name, "hang", _CALL_TIMEOUT_S))
        ctx.injected(fault)
        ctx.tally.check("call_timed_out", call_timed_out(outcome))
        t0 = time.monotonic()
        try:
            conn.terminate_child("", name, timeout=SHUTDOWN_S + 10)
        except PrismaticError as exc:
            ctx.tally.check("shutdown_escalated", f"terminate_child {name}: {exc}")
            continue
        elapsed = time.monotonic() - t0
        stopped = _stops_of(pid, ctx.exits_until(since, partial(_stops_of, pid)))
        reason = stopped[0].reason if stopped else None
        ctx.tally.check("shutdown_escalated", shutdown_escalated(elapsed, SHUTDOWN_S, reason))
        ctx.tally.check("hung_process_gone", None if not process_alive(pid) else
                        f"{name} (pid {pid}) still runs after terminate_child")
