"""Monitors and links as a pure state machine: ``decide(state, event) -> (state, actions)``.

OTP semantics on one node. A monitor fires exactly once: one :class:`~prismatic.Down` with
the target's exit reason, at once with ``NoProc()`` (or the known reason) if the target is
already dead. A link is symmetric; when either end exits the other is sent an
:class:`~prismatic.Exit` (the receiving process decides, by ``trap_exit``, whether that is a
message or its own death). Linking to a dead process sends the linker ``Exit(noproc)``.

The I/O side (:mod:`._hub`) resolves liveness before each event: ``target_exit`` is None for
a live target, else its exit reason. Exits are fed as :class:`ProcessExited` exactly once per
process (the hub deduplicates).

Invariants: no monitor or link mentions a process after its :class:`ProcessExited`; each
monitor ref appears in at most one :class:`SendDown`, and never after a :class:`Demonitor`.
"""

from __future__ import annotations

import msgspec

from ._address import Pid
from ._exit import ExitReason, NoConnection, NoProc
from ._notices import Down, Exit

__all__ = [
    "Links", "Monitor", "Demonitor", "Link", "Unlink", "ProcessExited", "SendDown", "SendExit",
    "MonitorStarted", "decide",
]


class Links(msgspec.Struct, frozen=True):
    monitors: dict[int, tuple[Pid, Pid]] = {}  # mref -> (watcher, target)
    links: frozenset[frozenset[Pid]] = frozenset()
    next_ref: int = 1


class Monitor(msgspec.Struct, frozen=True):
    watcher: Pid
    target: Pid
    target_exit: ExitReason | None  # None: alive


class Demonitor(msgspec.Struct, frozen=True):
    watcher: Pid
    mref: int


class Link(msgspec.Struct, frozen=True):
    a: Pid
    b: Pid
    b_exit: ExitReason | None  # None: alive


class Unlink(msgspec.Struct, frozen=True):
    a: Pid
    b: Pid


class ProcessExited(msgspec.Struct, frozen=True):
    pid: Pid
    reason: ExitReason


class SendDown(msgspec.Struct, frozen=True):
    to: Pid
    down: Down


class SendExit(msgspec.Struct, frozen=True):
    to: Pid
    exit: Exit


class MonitorStarted(msgspec.Struct, frozen=True):
    """The answer to :class:`Monitor`: the ref the watcher will see in its Down."""

    mref: int


Event = Monitor | Demonitor | Link | Unlink | ProcessExited
Action = SendDown | SendExit | MonitorStarted


def decide(state: Links, event: Event) -> tuple[Links, list[Action]]:
    if isinstance(event, Monitor):
        mref = state.next_ref
        after = msgspec.structs.replace(state, next_ref=mref + 1)
        if event.target_exit is not None:
            return after, [MonitorStarted(mref),
                           SendDown(event.watcher, Down(mref, event.target, event.target_exit))]
        return msgspec.structs.replace(
            after, monitors={**state.monitors, mref: (event.watcher, event.target)}), \
            [MonitorStarted(mref)]
    if isinstance(event, Demonitor):
        owner = state.monitors.get(event.mref)
        if owner is None or owner[0] != event.watcher:
            return state, []  # OTP: demonitoring a fired or unknown monitor is a no-op
        monitors = dict(state.monitors)
        del monitors[event.mref]
        return msgspec.structs.replace(state, monitors=monitors), []
    if isinstance(event, Link):
        if event.a == event.b:
            return state, []  # OTP: linking to self does nothing
        if event.b_exit is not None:  # OTP: noproc, or noconnection for an unreachable node
            reason = event.b_exit if isinstance(event.b_exit, NoConnection) else NoProc()
            return state, [SendExit(event.a, Exit(event.b, reason))]
        return msgspec.structs.replace(
            state, links=state.links | {frozenset((event.a, event.b))}), []
    if isinstance(event, Unlink):
        return msgspec.structs.replace(
            state, links=state.links - {frozenset((event.a, event.b))}), []
    return _exited(state, event.pid, event.reason)


def _exited(state: Links, pid: Pid, reason: ExitReason) -> tuple[Links, list[Action]]:
    actions: list[Action] = []
    monitors = {}
    for mref, (watcher, target) in state.monitors.items():
        if target == pid:
            actions.append(SendDown(watcher, Down(mref, pid, reason)))
        elif watcher != pid:  # a dead watcher's monitors die with it
            monitors[mref] = (watcher, target)
    links = set()
    for pair in state.links:
        if pid in pair:
            (other,) = pair - {pid}
            actions.append(SendExit(other, Exit(pid, reason)))
        else:
            links.add(pair)
    return Links(monitors, frozenset(links), state.next_ref), actions
