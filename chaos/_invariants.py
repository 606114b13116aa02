"""The invariants a chaos run checks, each a named function that returns ``None`` when it
held or one line saying how it was broken.

They take what the runner observed (tree rows, a /proc walk, the event log, metrics,
latencies) and decide; reading those is the runner's job (:mod:`._observe`). The one
exception is :func:`tree_converged`, which asks the kernel whether each pid is alive unless
told otherwise: a row that names a dead pid is exactly what it must catch.

* :func:`tree_converged`: every permanent child of the spec (of the subtree a fault hit)
  runs again, with a live pid;
* :func:`no_orphans`: every process of the node descends from the node process (a process
  reparented away from it outlived its supervisor); :func:`nothing_left` after a stop;
* :func:`acked_events_intact`: every acknowledged emit is in the log exactly once, at the
  sequence number its ack gave;
* :func:`disk_full_reported`: a full disk refuses emits saying so, and emitting resumes
  once space is freed;
* :func:`control_answered`: the node answered every ``status``/``tree`` request in time;
* :func:`kills_accounted`: each SIGKILL was reported once by its supervisor (or its
  supervisor died with it), and the node reported no SIGKILL that nobody sent;
* :func:`restarts_consistent`: the node's metrics agree with its event log and the kills;
* :func:`escalation_stopped_at`: a crash loop escalated to the level
  :func:`expected_escalation` computes from the intensities, and no further;
* :func:`shutdown_escalated`, :func:`call_timed_out`: a hung worker's call times out and
  its shutdown becomes a SIGKILL once its shutdown time has passed;
* :func:`flood_accounted`, :func:`memory_bounded`: a flooded mailbox pushes back, loses
  nothing, counts each refusal, and its memory stays bounded;
  :func:`subscriber_flood_accounted`: a flooded subscriber gets every event in order, or
  the drop is counted;
* :func:`descendants_gone`: what a killed worker forked died with it;
  :func:`memory_cap_enforced`: a worker over its cgroup's memory cap is OOM-killed;
* :func:`membership_converged`: every node of a mesh sees every member as it is (alive, or
  down), a restarted one at a newer incarnation;
* :func:`monitors_fired_once`: every monitor fired exactly once per death (or per loss of
  the link to the monitored process's node: ``noconnection``), and never otherwise;
* :func:`global_name_resolved`: after a heal a global name has exactly one holder, the
  same on every node, and each loser was told once.

This module is their catalogue: it holds the invariants of one node's tree, its processes
and its control endpoint, and re-exports those of :mod:`._loss_invariants` (nothing lost
silently, floods bounded: acked events, floods, memory, the full disk) and
:mod:`._cluster_invariants` (membership, monitors across nodes, global names).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import msgspec

from .._control import TreeRow
from ._cluster_invariants import (
    DownSeen, Monitor, global_name_resolved, membership_converged, monitors_fired_once,
)
from ._loss_invariants import (
    acked_events_intact, disk_full_reported, drops_counted_exactly, flood_accounted,
    memory_bounded, memory_cap_enforced, subscriber_flood_accounted,
)
from ._shape import TreeShape

__all__ = [
    "Kill", "ExitSeen", "process_alive", "tree_converged", "no_orphans", "nothing_left",
    "acked_events_intact", "control_answered", "kills_accounted", "restarts_consistent",
    "expected_escalation", "escalation_stopped_at", "shutdown_escalated", "call_timed_out",
    "flood_accounted", "memory_bounded", "descendants_gone", "membership_converged",
    "Monitor", "DownSeen", "monitors_fired_once", "global_name_resolved",
    "subscriber_flood_accounted", "drops_counted_exactly", "memory_cap_enforced",
    "disk_full_reported",
]


class Kill(msgspec.Struct, frozen=True):
    """A SIGKILL the runner sent: to ``pid``, the process at ``path``; ``mono`` is the
    monotonic time just *before* the signal was sent (no exit it caused can be earlier)."""

    pid: int
    path: str
    mono: float


class ExitSeen(msgspec.Struct, frozen=True):
    """An exit the node logged: ``kind`` is the lifecycle kind (``child_exited``,
    ``child_stopped``, ``shutdown_error``, ``intensity_exceeded``), ``reason`` the exit
    reason's tag (``killed``, ``crashed``...), ``path`` the child's full path."""

    pid: int | None
    path: str
    kind: str
    reason: str | None
    mono: float


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has died: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def tree_converged(shape: TreeShape, rows: Iterable[TreeRow],
                   alive: Callable[[int], bool] = process_alive, *, under: str = "",
                   replaced: int | None = None) -> str | None:
    """Every permanent path of ``shape`` (at or below ``under``: the subtree a fault hit)
    has a row with a live pid, and the process at ``under`` is no longer ``replaced`` (the
    pid the fault killed: a row that still names it is not converged, whatever the kernel
    says yet)."""
    running = {r.path: r.pid for r in rows}
    missing = []
    prefix = under + "/"
    for path in sorted(shape.permanent_paths()):
        if under and path != under and not path.startswith(prefix):
            continue
        pid = running.get(path)
        if pid is None or not alive(pid) or (path == under and pid == replaced):
            missing.append(f"{path or 'root'}" + ("" if pid is None else f" (pid {pid} dead)"))
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        return f"not running: {', '.join(missing[:5])}{more}"
    return None


def no_orphans(procs: Mapping[int, int],
               node_pids: Collection[int]) -> tuple[str | None, list[int]]:
    """``procs`` maps each process of the node(s) (found by tag) to its parent pid. Each
    must descend from a node process in ``node_pids``; the others are orphans (returned
    too, for a re-check: a process whose supervisor was just killed is reparented for the
    instant before its PDEATHSIG lands)."""
    roots = set(node_pids)
    orphans = []
    for pid in procs:
        seen = set()
        cur = pid
        while cur not in roots and cur in procs and cur not in seen:
            seen.add(cur)
            cur = procs[cur]
        if cur not in roots:
            orphans.append(pid)
    if orphans:
        return f"{len(orphans)} process(es) outside the node's tree: {sorted(orphans)[:10]}", \
            sorted(orphans)
    return None, []


def nothing_left(procs: Mapping[int, int]) -> str | None:
    """After the node stopped (or was killed), none of its processes may remain."""
    if procs:
        return f"{len(procs)} process(es) left behind: {sorted(procs)[:10]}"
    return None


def control_answered(failures: Sequence[str], max_latency_s: float,
                     limit_s: float) -> str | None:
    """The node answered every control request, each within ``limit_s``."""
    if failures:
        return f"{len(failures)} control request(s) failed: {failures[0]}"
    if max_latency_s > limit_s:
        return f"a control request took {max_latency_s * 1000:.0f} ms (limit " \
               f"{limit_s * 1000:.0f} ms)"
    return None


_EXIT_KINDS = ("child_exited", "child_stopped", "shutdown_error")


def _ancestors(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts))]


def kills_accounted(kills: Sequence[Kill], exits: Sequence[ExitSeen],
                    window_s: float = 2.0, report_s: float = 30.0) -> str | None:
    """Each kill is reported by its supervisor (an exit of that pid within ``report_s``
    after it) exactly once as ``child_exited``, unless an ancestor supervisor exited
    within ``window_s`` around it (then the whole subtree died by PDEATHSIG and nobody is
    left to report it); and every ``killed`` (signal 9) ``child_exited`` is a pid the
    runner killed shortly before. An exit is matched to a kill by pid, path and time, not
    by pid alone: over a long storm on a busy machine the kernel hands the same pid to
    another process within seconds (pid_max is often 32768)."""
    by_pid: dict[int, list[ExitSeen]] = {}
    for e in exits:
        if e.pid is not None and e.kind in _EXIT_KINDS:
            by_pid.setdefault(e.pid, []).append(e)
    # Where a subtree died: an exited child's own path, or the supervisor that gave up.
    died = [(e.path, e.mono) for e in exits if e.kind in _EXIT_KINDS]
    died += [(e.path.rpartition("/")[0], e.mono) for e in exits
             if e.kind == "intensity_exceeded"]
    unreported: list[Kill] = []
    twice: list[tuple[Kill, list[ExitSeen]]] = []
    for k in kills:
        seen = [e for e in by_pid.get(k.pid, [])
                if e.path == k.path and k.mono <= e.mono <= k.mono + report_s]
        exited = [e for e in seen if e.kind == "child_exited"]
        if len(exited) > 1:
            twice.append((k, exited))
        if seen:
            continue
        anc = set(_ancestors(k.path))
        if not any(p in anc and abs(m - k.mono) <= window_s for p, m in died):
            unreported.append(k)
    kill_times: dict[tuple[int, str], list[float]] = {}
    for k in kills:
        kill_times.setdefault((k.pid, k.path), []).append(k.mono)
    phantom = [e for e in exits if e.kind == "child_exited" and e.reason == "killed"
               and not any(e.mono - report_s <= t <= e.mono
                           for t in kill_times.get((e.pid or -1, e.path), []))]
    problems = []
    if unreported:
        problems.append(f"{len(unreported)} kill(s) never reported, e.g. {unreported[0].path} "
                        f"pid {unreported[0].pid}")
    if twice:
        k, exited = twice[0]
        problems.append(f"{len(twice)} kill(s) reported twice, e.g. {k.path} pid {k.pid} "
                        f"killed at {k.mono:.3f}: " + ", ".join(
                            f"{e.path} {e.reason} at {e.mono:.3f}" for e in exited))
    if phantom:
        e = phantom[0]
        near = sorted(kill_times.get((e.pid or -1, e.path), []),
                      key=lambda t: abs(t - e.mono))[:2]
        problems.append(f"{len(phantom)} SIGKILL exit(s) nobody sent, e.g. {e.path} pid "
                        f"{e.pid} at {e.mono:.3f} (kills of that pid at "
                        f"{', '.join(f'{t:.3f}' for t in near) or 'none'})")
    return "; ".join(problems) or None


def restarts_consistent(exits: Sequence[ExitSeen], killed_metric: float,
                        restarts_metric: float, escalations_metric: float) -> str | None:
    """The node's counters (deltas over the scenario) agree with its log: as many
    ``killed`` exits counted as logged, as many escalations; and at least one restart
    counted per ``child_exited`` that did not end in its supervisor giving up (a one_for_all
    restart counts each sibling, so more is fine)."""
    logged_killed = sum(1 for e in exits if e.kind == "child_exited" and e.reason == "killed")
    logged_exits = sum(1 for e in exits if e.kind == "child_exited")
    logged_escalations = sum(1 for e in exits if e.kind == "intensity_exceeded")
    problems = []
    if killed_metric != logged_killed:
        problems.append(f"metrics count {killed_metric:.0f} killed exits, the log "
                        f"{logged_killed}")
    if escalations_metric != logged_escalations:
        problems.append(f"metrics count {escalations_metric:.0f} escalations, the log "
                        f"{logged_escalations}")
    if restarts_metric < logged_exits - logged_escalations:
        problems.append(f"metrics count {restarts_metric:.0f} restarts for "
                        f"{logged_exits} exits and {logged_escalations} escalations")
    return "; ".join(problems) or None


def expected_escalation(intensities: Sequence[int], failing_starts: int) -> int:
    """How far a crash loop escalates: ``intensities[0]`` is the crashing worker's
    supervisor, ``intensities[i]`` the supervisor above that; the worker was killed once and
    then fails ``failing_starts`` starts in a row (a start of any supervisor above it starts
    it too). Returns the index of the highest supervisor that gives up, -1 if none.

    OTP's counting: every restart attempt, failed or not, is added to the supervisor's
    restart history, and the attempt that makes it exceed ``intensity`` ends the supervisor
    instead (all within one period here)."""
    left = failing_starts
    level = 0
    attempts = 0
    while level < len(intensities):
        attempts += 1
        if attempts > intensities[level]:
            # This supervisor gives up; its parent restarts it (a fresh history below).
            level += 1
            attempts = 0
            continue
        if left == 0:
            return level - 1
        left -= 1
    return len(intensities) - 1


def escalation_stopped_at(chain: Sequence[str], expected: int,
                          gave_up: Iterable[str]) -> str | None:
    """``chain`` lists the crash loop's supervisors bottom-up; exactly those up to
    ``chain[expected]`` may have given up (``intensity_exceeded`` on a child of theirs)."""
    gave = set(gave_up)
    want = set(chain[:expected + 1])
    beyond = [p for p in chain[expected + 1:] if p in gave]
    short = sorted(want - gave)
    if beyond:
        return f"escalated past {chain[expected] if expected >= 0 else 'the worker'}: " \
               f"{', '.join(beyond)} gave up too"
    if short:
        return f"expected {', '.join(short)} to give up (intensity exceeded); it did not"
    return None


def shutdown_escalated(elapsed_s: float, shutdown_s: float, reason: str | None,
                       slack_s: float = 2.0) -> str | None:
    """A worker that ignores SIGTERM (stopped, or stuck in a handler) is SIGKILLed once its
    shutdown time has passed: the stop takes about ``shutdown_s`` and ends ``killed``."""
    if reason != "killed":
        return f"the hung worker's stop ended {reason!r}, not killed"
    if elapsed_s < shutdown_s * 0.9:
        return f"SIGKILL after {elapsed_s:.2f}s, before the shutdown time {shutdown_s}s"
    if elapsed_s > shutdown_s + slack_s:
        return f"the stop took {elapsed_s:.2f}s, past the shutdown time {shutdown_s}s " \
               f"+ {slack_s}s"
    return None


def call_timed_out(outcome: str) -> str | None:
    """A call to a hung worker ends in ``CallTimeout`` (not a reply, not a hang)."""
    return None if outcome == "timeout" else f"a call to the hung worker ended {outcome!r}"


def descendants_gone(still_alive: Sequence[int]) -> str | None:
    """The children a worker forked died with it (its process group, and the subreaper
    sweep for those that left the group)."""
    if still_alive:
        return f"{len(still_alive)} child process(es) of a killed worker still run: " \
               f"{sorted(still_alive)[:10]}"
    return None


