"""The invariants of a cluster after a fault: membership, monitors across nodes, global names.

Each returns ``None`` when it held or one line saying how it was broken, from what the
runner gathered on every node (see :mod:`._invariants`, the catalogue of all of them,
which re-exports these): each node's view of the members, the ``Down`` notices watcher
processes logged, each node's answer for a global name.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import msgspec

__all__ = [
    "membership_converged", "Monitor", "DownSeen", "monitors_fired_once",
    "global_name_resolved",
]


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
