"""Resource exhaustion: a worker that leaks memory to its ``RLIMIT_AS`` or its cgroup's cap, one
that runs out of file descriptors, one that forks children and is then SIGKILLed.

Each fault adds a worker under the root (``chaos_res_<n>``, temporary,
:class:`~._apps.Glutton`) and exhausts one resource:

* ``memory``: it caps its address space at what it maps plus 64 MiB and allocates until
  ``MemoryError``; it must crash with that reason (logged), not take anything else down;
* ``fds``: it lowers its descriptor limit to 64 and opens files until EMFILE; it must still
  answer over the connection it has, and a new caller's call must end within its timeout
  (a reply or a clear error, never a hang); then it must stop in order;
* ``fork``: it forks 3 children, then is SIGKILLed; its children must die with it
  (:func:`~._invariants.descendants_gone`), within 2 s;
* ``cgroup``: the runner puts it in a memory cgroup of its own capped at 64 MiB
  (:mod:`._cgroup`: v2, else v1; root) and it writes memory until something stops it: the
  kernel's OOM killer must SIGKILL it, within its cgroup only, and its supervisor report it
  ``killed`` (:func:`~._invariants.memory_cap_enforced`). Where no cgroup can be made the
  fault is not injected and the report says why.

The rest of the tree keeps converging and the node keeps answering throughout.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any

from .._client import connect
from .._errors import CallTimeout, MailboxFull, PrismaticError
from ._cgroup import cgroup_unavailable, open_memory_cgroup
from ._invariants import descendants_gone, memory_cap_enforced, process_alive
from ._schedule import Fault, arrivals, scenario_rng

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "resources"
SUMMARY = ("a worker leaks memory to RLIMIT_AS or a cgroup cap, one runs out of fds, one forks "
           "and is killed; checks MemoryError / OOM kill, still answering, children die")
REQUIRES = frozenset({"node"})  # any single node, owned or not

_KINDS = ("memory", "fds", "fork", "cgroup")
_MAX_RATE = 4.0
CGROUP_LIMIT = 64 << 20


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    rng = scenario_rng(seed, NAME)
    first = rng.randrange(len(_KINDS))  # then in turn: three faults try every resource
    return [Fault(i + 1, round(t, 4), "exhaust", f"chaos_res_{i + 1}",
                  _KINDS[(first + i) % len(_KINDS)])
            for i, t in enumerate(arrivals(rng, duration, min(rate, _MAX_RATE)))]


def _logged_exit(ctx: ScenarioContext, name: str, pid: int, since: int) -> Any:
    """The exit reason the event log holds for worker ``name``'s process ``pid`` (waiting,
    within the run's deadline, until it is dead and its exit logged), or None."""
    deadline = time.monotonic() + ctx.settings.deadline
    records: list[Any] = []
    while not records and time.monotonic() < deadline:
        time.sleep(0.02)
        records = [r for r in ctx.log(f"supervisor.root.{name}.child_exited", since)
                   if isinstance(r.payload, dict) and r.payload.get("pid") == pid]
    return records[0].payload.get("reason") if records else None


def _memory(ctx: ScenarioContext, name: str, pid: int, since: int) -> None:
    ctx.conn.cast(name, ["memory", 64 << 20])
    reason = _logged_exit(ctx, name, pid, since)
    kind = reason.get("type") if isinstance(reason, dict) else None
    ctx.tally.check("memory_limit_crash", None if kind == "builtins.MemoryError" else
                    f"{name} ended {kind or 'not at all'}, not with MemoryError at its limit")


def _fds(ctx: ScenarioContext, name: str) -> None:
    held = ctx.conn.call(name, ["fds", 64], timeout=5.0)
    problem = None if ctx.conn.call(name, "ping", timeout=5.0) == "pong" else \
        f"{name} out of descriptors ({held} held) did not answer its existing caller"
    ctx.tally.check("fd_exhaustion_answers", problem)
    t0 = time.monotonic()
    with connect(ctx.target.data_dir) as fresh:
        try:
            outcome = "a reply" if fresh.call(name, "ping", timeout=1.0) == "pong" else "?"
        except (CallTimeout, MailboxFull) as exc:
            outcome = type(exc).__name__
        except PrismaticError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - t0
    ctx.tally.check("fd_exhaustion_bounded", None if elapsed < 3.0 else
                    f"a new caller's 1 s call took {elapsed:.1f}s")
    ctx.tally.notes.append(f"{name} out of descriptors: a new caller got {outcome}")
    ctx.conn.terminate_child("", name)


def _fork(ctx: ScenarioContext, name: str, pid: int) -> None:
    children = ctx.conn.call(name, ["fork", 3], timeout=5.0)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while any(process_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.02)
    ctx.tally.check("children_die_with_it",
                    descendants_gone([c for c in children if process_alive(c)]))


def _cgroup(ctx: ScenarioContext, name: str, pid: int, since: int) -> None:
    with open_memory_cgroup(CGROUP_LIMIT) as group:
        group.add(pid)
        ctx.conn.cast(name, ["touch", 0])
        reason = _logged_exit(ctx, name, pid, since)
        kind = reason.get("kind") if isinstance(reason, dict) else None
        ctx.tally.check("memory_cap_enforced", memory_cap_enforced(
            kind, group.oom_kills(), group.peak(), CGROUP_LIMIT))
        ctx.tally.notes.append(f"{name} in a cgroup v{group.version} capped at "
                               f"{CGROUP_LIMIT >> 20} MiB: {kind or 'still running'}, "
                               f"{group.oom_kills()} OOM kill(s)")


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    no_cgroup = cgroup_unavailable()
    for fault in faults:
        if not ctx.wait_offset(fault.offset):
            break
        name = fault.target
        if fault.arg == "cgroup" and no_cgroup is not None:
            ctx.tally.notes.append(f"{fault.describe()} not injected: {no_cgroup}")
            continue
        since = time.time_ns()
        pid = ctx.start_subject(name, "Glutton", (name,),
                                lambda n: ctx.conn.call(n, "ping", timeout=5.0) == "pong")
        if pid is None:
            continue
        ctx.injected(fault)
        try:
            if fault.arg == "memory":
                _memory(ctx, name, pid, since)
            elif fault.arg == "fds":
                _fds(ctx, name)
            elif fault.arg == "cgroup":
                _cgroup(ctx, name, pid, since)
            else:
                _fork(ctx, name, pid)
        except PrismaticError as exc:  # ChaosError too: a cgroup that could not be made
            ctx.tally.check(f"resources_{fault.arg}", f"{name}: {type(exc).__name__}: {exc}")
