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
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

import msgspec

from .._control import TreeRow
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


def acked_events_intact(acked: Mapping[str, int],
                        logged: Sequence[tuple[str, int]]) -> str | None:
    """``acked`` maps each acknowledged event's key to the seq its ack returned; ``logged``
    is every (key, seq) the log holds for the run. Each acked key must be logged once at
    its seq; an unacknowledged emit may or may not be there (the node died before the ack)
    but never twice."""
    seqs: dict[str, list[int]] = {}
    for key, seq in logged:
        seqs.setdefault(key, []).append(seq)
    missing = [k for k in acked if k not in seqs]
    duplicated = [k for k, s in seqs.items() if len(s) > 1]
    moved = [k for k, seq in acked.items() if k in seqs and seqs[k][0] != seq]
    problems = []
    if missing:
        problems.append(f"{len(missing)} acked event(s) missing (e.g. {sorted(missing)[:3]})")
    if duplicated:
        problems.append(f"{len(duplicated)} event(s) logged more than once "
                        f"(e.g. {sorted(duplicated)[:3]})")
    if moved:
        problems.append(f"{len(moved)} acked event(s) logged at another seq than acked "
                        f"(e.g. {sorted(moved)[:3]})")
    return "; ".join(problems) or None


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


def flood_accounted(accepted: int, refused: int, other: int, handled: int,
                    refusals_counted: float, wanted_refusals: int) -> str | None:
    """A flooded mailbox pushed back (``MailboxFull``) instead of queueing without end;
    every cast handed over was handled, none lost; each refusal counted by the node as a
    ``mailbox_full`` dead letter; no cast ended any other way."""
    problems = []
    if refused < wanted_refusals:
        problems.append(f"only {refused} of {wanted_refusals} refusals after {accepted} "
                        f"casts: no back-pressure")
    if handled != accepted:
        problems.append(f"{accepted} casts handed over, {handled} handled")
    if refusals_counted != refused:
        problems.append(f"{refused} casts refused, {refusals_counted:.0f} counted as "
                        f"mailbox_full dead letters")
    if other:
        problems.append(f"{other} casts ended otherwise (dead letter or error)")
    return "; ".join(problems) or None


def memory_bounded(before: int, peak: int, bound: int) -> str | None:
    """A process's private memory grew by less than ``bound`` bytes under the fault."""
    if peak - before >= bound:
        return f"memory grew by {(peak - before) >> 20} MiB (bound {bound >> 20} MiB)"
    return None


def descendants_gone(still_alive: Sequence[int]) -> str | None:
    """The children a worker forked died with it (its process group, and the subreaper
    sweep for those that left the group)."""
    if still_alive:
        return f"{len(still_alive)} child process(es) of a killed worker still run: " \
               f"{sorted(still_alive)[:10]}"
    return None


def membership_converged(views: Mapping[str, Mapping[str, tuple[str, int]]],
                         expected: Mapping[str, str],
                         newer_than: Mapping[str, int] | None = None) -> str | None:
    """Every observer's view (observer -> member -> (state, incarnation)) agrees with
    ``expected`` (member -> ``alive``, or ``down``: ``dead`` or ``left``); a member in
    ``newer_than`` must be seen at a higher incarnation than that (it was restarted)."""
    problems = []
    for observer, view in sorted(views.items()):
        for member, want in sorted(expected.items()):
            if member == observer:
                continue
            state, incarnation = view.get(member, ("absent", 0))
            ok = state == "alive" if want == "alive" else state in ("dead", "left")
            if ok and newer_than and member in newer_than and want == "alive":
                ok = incarnation > newer_than[member]
            if not ok:
                problems.append(f"{observer} sees {member} {state} (incarnation "
                                f"{incarnation}), not {want}")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        return "; ".join(problems[:3]) + more
    return None


class Monitor(msgspec.Struct, frozen=True):
    """A monitor a watcher process set: the watcher's node, the monitored process (its
    node and OS pid)."""

    watcher: str
    node: str
    ospid: int


class DownSeen(msgspec.Struct, frozen=True):
    """A ``Down`` a watcher received (logged by it as it came): for which monitor, and
    the reason as :func:`prismatic.describe` puts it (``noconnection``, ``killed by
    SIGKILL``...)."""

    monitor: Monitor
    reason: str


NO_CONNECTION = "noconnection"


def monitors_fired_once(monitors: Collection[Monitor], downs: Sequence[DownSeen],
                        died: Collection[tuple[str, int]],
                        lost: Collection[tuple[str, str]]) -> str | None:
    """Every monitor fired exactly once per death, and only then. ``died``: the monitored
    processes (node, ospid) that exited; ``lost``: (watcher's node, target's node) pairs
    where the watcher's node saw the target's node go down (declared dead, left, or cut
    off by a partition). A monitor of a process in ``died``, or across a pair in ``lost``,
    must have fired exactly once: with ``noconnection`` across a lost pair (the process
    itself may live on, on the other side), with the real reason or ``noconnection`` for
    a death; a late notice after a heal must not fire it again. Any other monitor must not
    have fired at all (a ``Down`` of a live process on a reachable node is a lie)."""
    fired: dict[Monitor, list[str]] = {}
    for d in downs:
        fired.setdefault(d.monitor, []).append(d.reason)
    dead, cut = set(died), set(lost)
    unknown = [m for m in fired if m not in set(monitors)]
    silent, twice, spurious, wrong = [], [], [], []
    for m in monitors:
        reasons = fired.get(m, [])
        severed = (m.watcher, m.node) in cut
        if (m.node, m.ospid) in dead or severed:
            if not reasons:
                silent.append(m)
            elif len(reasons) > 1:
                twice.append((m, reasons))
            elif severed and (m.node, m.ospid) not in dead and reasons[0] != NO_CONNECTION:
                wrong.append((m, reasons[0]))
        elif reasons:
            spurious.append((m, reasons))
    problems = []
    if silent:
        m = silent[0]
        problems.append(f"{len(silent)} monitor(s) never fired, e.g. {m.watcher}'s of "
                        f"{m.ospid}@{m.node}")
    if twice:
        m, r = twice[0]
        problems.append(f"{len(twice)} monitor(s) fired more than once, e.g. {m.watcher}'s "
                        f"of {m.ospid}@{m.node}: {', '.join(r)}")
    if wrong:
        m, reason = wrong[0]
        problems.append(f"{len(wrong)} monitor(s) across a lost link fired {reason!r}, not "
                        f"{NO_CONNECTION}, e.g. {m.watcher}'s of {m.ospid}@{m.node}")
    if spurious:
        m, r = spurious[0]
        problems.append(f"{len(spurious)} monitor(s) of a live process on a reachable node "
                        f"fired, e.g. {m.watcher}'s of {m.ospid}@{m.node}: {', '.join(r)}")
    if unknown:
        problems.append(f"{len(unknown)} Down(s) for monitors nobody set")
    return "; ".join(problems) or None


def global_name_resolved(name: str, resolved: Mapping[str, tuple[str, int] | None],
                         holders: Collection[tuple[str, int]],
                         conflicts: Mapping[tuple[str, int], Sequence[tuple[str, int]]]
                         ) -> str | None:
    """After a heal, global name ``name`` has exactly one holder: every node in
    ``resolved`` (node -> the pid its ``whereis_global`` gives) names the same process, one
    of ``holders`` (the live processes whose registration of it succeeded); every other
    holder was told once that it lost it (``conflicts``: process -> the winners it was
    told of, one ``GlobalNameConflict`` each), naming that winner; the winner was told
    nothing."""
    problems = []
    answers = set(resolved.values())
    if len(answers) != 1:
        shown = ", ".join(f"{n}: {p[1]}@{p[0]}" if p else f"{n}: none"
                          for n, p in sorted(resolved.items()))
        return f"{name!r} resolves differently across the cluster ({shown})"
    winner = answers.pop()
    if winner is None:
        return f"{name!r} has no holder although {len(holders)} process(es) registered it" \
            if holders else None
    if winner not in set(holders):
        problems.append(f"{name!r} resolves to {winner[1]}@{winner[0]}, not a live process "
                        f"that registered it")
    for h in holders:
        told = list(conflicts.get(h, ()))
        if h == winner and told:
            problems.append(f"the winner {h[1]}@{h[0]} was told it lost {name!r}")
        elif h != winner and told != [winner]:
            problems.append(f"the loser {h[1]}@{h[0]} was told {len(told)} time(s) "
                            f"(winners {told}), not once that {winner[1]}@{winner[0]} won")
    return "; ".join(problems) or None


def subscriber_flood_accounted(published: int, received: int, out_of_order: int,
                               dropped_counted: float) -> str | None:
    """Every event published to a flooded subscriber either reached it, in publish order,
    or was counted as dropped (by the forwarder or the subscriber): none lost silently."""
    problems = []
    if received + dropped_counted < published:
        problems.append(f"{published - received - dropped_counted:.0f} of {published} "
                        f"events lost without being counted ({received} received, "
                        f"{dropped_counted:.0f} counted dropped)")
    if received > published:
        problems.append(f"{received} events received for {published} published")
    if out_of_order:
        problems.append(f"{out_of_order} events out of publish order")
    return "; ".join(problems) or None


def drops_counted_exactly(published: int, received: int, lost: int, gaps: int) -> str | None:
    """A subscriber the node dropped events for (it fell its high-water mark behind)
    counted exactly the events it lost: ``received`` + ``lost`` is every event published,
    and ``lost`` is what the subscriber itself finds missing from the payloads' sequence
    (``gaps``)."""
    problems = []
    if received + lost != published:
        problems.append(f"{received} received + {lost} counted lost != {published} published")
    if gaps != lost:
        problems.append(f"{gaps} events missing from the sequence, {lost} counted lost")
    return "; ".join(problems) or None


def memory_cap_enforced(reason: str | None, oom_kills: int, peak: int | None,
                        limit: int) -> str | None:
    """A worker that allocates past its cgroup's memory cap is SIGKILLed by the kernel's
    OOM killer (reported ``killed``, counted as an ``oom_kill`` of its cgroup), and the
    cgroup never held more than the cap."""
    problems = []
    if reason != "killed":
        problems.append(f"the worker over its memory cap ended {reason or 'not at all'!s}, "
                        f"not killed")
    if oom_kills < 1:
        problems.append("its cgroup counts no OOM kill")
    if peak is not None and peak > limit:
        problems.append(f"its cgroup held {peak >> 20} MiB, over the {limit >> 20} MiB cap")
    return "; ".join(problems) or None


def disk_full_reported(errors: Sequence[str], recovered_s: float | None,
                       deadline_s: float) -> str | None:
    """While the disk under the event log was full, emits were refused (it did fill) and
    every refusal said so (``disk full``), none a timeout or another error; once space was
    freed an emit was acknowledged again within ``deadline_s`` (``recovered_s``: the time
    to the first ack after the space came back, None if none came)."""
    problems = []
    if not errors:
        problems.append("no emit was refused: the disk never filled")
    unclear = [e for e in errors if "disk full" not in e]
    if unclear:
        problems.append(f"{len(unclear)} of {len(errors)} refusals did not say the disk is "
                        f"full, e.g. {unclear[0][:200]!r}")
    if recovered_s is None:
        problems.append(f"no emit acknowledged within {deadline_s:.0f}s after space was freed")
    return "; ".join(problems) or None
