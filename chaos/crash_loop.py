"""Crash loop: a child that crashes on start until its supervisor's intensity is exceeded.

Each fault adds a small subtree under the root (``chaos_loop_<n>``, temporary: its exit
costs the root nothing): ``outer`` (intensity 3) > ``inner`` (intensity 1) > ``crasher``
(:func:`~._apps.crash_loop_tree`). It then sets the crasher to fail its next N starts and
SIGKILLs it. :func:`~._invariants.expected_escalation` says, from the intensities and N,
which supervisor must give up (none, ``inner``, or ``outer``); the log must show exactly
those giving up (``intensity_exceeded``) and nothing above them
(:func:`~._invariants.escalation_stopped_at`), and the subtree must end running again
(escalation stopped below ``outer``) or be gone (``outer`` gave up). The rest of the tree
keeps converging throughout.
"""

from __future__ import annotations

import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from .._childspec import ChildSpec
from .._errors import PrismaticError
from ._apps import CRASH_LOOP_INTENSITIES
from ._invariants import ExitSeen, escalation_stopped_at, expected_escalation
from ._schedule import Fault, arrivals, scenario_rng

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "crash-loop"
SUMMARY = ("a child fails on start N times in a row; checks escalation reaches the level the "
           "intensities give and no further, the tree converges")
REQUIRES = frozenset({"node"})  # any single node, owned or not

_FAILING_STARTS = (0, 1, 2, 3, 4, 8)  # 0: a plain restart; 1-3: inner gives up; 4+: outer
_MAX_RATE = 2.0  # each fault takes a few hundred ms to play out


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    rng = scenario_rng(seed, NAME)
    faults: list[Fault] = []
    for t in arrivals(rng, duration, min(rate, _MAX_RATE)):
        n = rng.choice(_FAILING_STARTS)
        seq = len(faults) + 1
        faults.append(Fault(seq, round(t, 4), "crash_loop", f"chaos_loop_{seq}/inner/crasher",
                            n))
    return faults


def _settled(ctx: ScenarioContext, top: str, gone: bool, timeout: float) -> str | None:
    """Wait until the subtree ``top`` runs again with its crasher (or is gone)."""
    deadline = time.monotonic() + timeout
    state = "?"
    while time.monotonic() < deadline:
        try:
            ids = {c.id: c.pid for c in ctx.conn.which_children("")}
            if gone:
                if top not in ids:
                    return None
                state = f"{top} still there"
            else:
                pid = ctx.conn.pid_of(f"{top}/inner/crasher")
                if pid is not None:
                    return None
                state = f"{top}/inner/crasher not running"
        except PrismaticError as exc:
            state = f"{type(exc).__name__}: {exc}"
        time.sleep(0.02)
    return f"after {timeout:.0f}s: {state}"


def _gave_up(exits: list[ExitSeen]) -> set[str]:
    """The supervisors that gave up: each ``intensity_exceeded`` names the child whose
    restart was one too many, under the supervisor that reports it."""
    return {e.path.rpartition("/")[0] for e in exits if e.kind == "intensity_exceeded"}


def _all_gave_up(want: set[str], exits: list[ExitSeen]) -> bool:
    return want <= _gave_up(exits)


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    workdir = Path(ctx.target.data_dir).parent
    for fault in faults:
        if not ctx.wait_offset(fault.offset):
            break
        top = fault.target.split("/", 1)[0]
        counter = workdir / f"{top}.count"
        counter.write_text("0")
        ctx.conn.start_child("", ChildSpec(id=top, start="prismatic.chaos._apps:crash_loop_tree",
                                           args=(str(counter),), type="supervisor",
                                           restart="temporary"))
        pid = ctx.conn.pid_of(fault.target)
        if pid is None:
            ctx.tally.check("crash_loop_setup", f"{fault.target} did not start")
            continue
        failing = int(fault.arg or 0)
        counter.write_text(str(failing))
        since = time.time_ns()
        os.kill(pid, signal.SIGKILL)
        ctx.injected(fault)
        expected = expected_escalation(CRASH_LOOP_INTENSITIES, failing)
        outer_gave_up = expected >= len(CRASH_LOOP_INTENSITIES) - 1
        killed_at = time.monotonic()
        problem = _settled(ctx, top, outer_gave_up, ctx.settings.deadline)
        if ctx.tally.check("escalation_settled", problem):
            ctx.tally.convergence_s.append(time.monotonic() - killed_at)
        chain = [f"{top}/inner", top, ""]  # "": the root
        exits = ctx.exits_until(since, partial(_all_gave_up, set(chain[:expected + 1])))
        ctx.tally.check("escalation_level", escalation_stopped_at(
            chain, expected, {g for g in _gave_up(exits) if g.split("/", 1)[0] in (top, "")}))
        if not outer_gave_up:
            try:
                ctx.conn.terminate_child("", top)
            except PrismaticError as exc:
                ctx.tally.check("crash_loop_cleanup", f"terminate {top}: {exc}")
        counter.unlink(missing_ok=True)
