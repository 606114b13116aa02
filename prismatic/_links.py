"""Monitors and links as a pure state machine: ``decide(state, event) -> (state, actions)``.

OTP semantics on one node. A monitor fires exactly once: one :class:`~prismatic.Down` with
the target's exit reason, at once with ``NoProc()`` (or the known reason) if the target is
already dead. A link is symmetric; when either end exits the other is sent an
:class:`~prismatic.Exit` (the receiving process decides, by ``trap_exit``, whether that is a
message or its own death). Linking to a dead process sends the linker ``Exit(noproc)``.

The I/O side (:mod:`._hub`) resolves liveness before each event: ``target_exit`` is None for
a live target, else its exit reason. Exits are fed as :class:`ProcessExited` exactly once per
process (the hub deduplicates).

A monitor set up by name (OTP's ``{Name, Node}``; the hub resolved it to ``target``)
carries the name into its ``Down`` (``Down.name``), as OTP's ``'DOWN'`` names what was
monitored.

Invariants: no monitor or link mentions a process after its :class:`ProcessExited`; each
monitor ref appears in at most one :class:`SendDown`, and never after a :class:`Demonitor`;
``refs`` and ``partners`` index exactly ``monitors`` and ``links`` by process; ``names``
holds a name only for a live monitor.

Ownership: :func:`decide` updates the state it is given in place and returns it (a node has
thousands of monitors, and every exit scanned them all: O(n) per exit); the caller keeps only
the state it gets back. Each event costs O(1) plus the monitors and links of the process
it names.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._address import Global, Pid
from ._exit import ExitReason, NoConnection, NoProc
from ._notices import Down, Exit

__all__ = [
    "Links", "Monitor", "Demonitor", "Link", "Unlink", "ProcessExited", "SendDown", "SendExit",
    "MonitorStarted", "decide",
]


class Links(msgspec.Struct, frozen=True):
    monitors: dict[int, tuple[Pid, Pid]] = {}  # mref -> (watcher, target)
    links: set[frozenset[Pid]] = set()
    next_ref: int = 1
    refs: dict[Pid, set[int]] = {}  # pid -> the mrefs it watches with or is watched by
    partners: dict[Pid, set[Pid]] = {}  # pid -> the pids it is linked to
    names: dict[int, str | Global] = {}  # mref -> the name it was set up with, if any


class Monitor(msgspec.Struct, frozen=True):
    watcher: Pid
    target: Pid
    target_exit: ExitReason | None  # None: alive
    name: str | Global | None = None  # set up by this name (resolved to ``target``)


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
    """The next state (``state`` updated in place, see the module doc) and what to send."""
    if isinstance(event, Monitor):
        mref = state.next_ref
        after = msgspec.structs.replace(state, next_ref=mref + 1)  # shares the dicts
        if event.target_exit is not None:
            return after, [MonitorStarted(mref), SendDown(event.watcher, Down(
                mref, event.target, event.target_exit, event.name))]
        state.monitors[mref] = (event.watcher, event.target)
        if event.name is not None:
            state.names[mref] = event.name
        state.refs.setdefault(event.watcher, set()).add(mref)
        state.refs.setdefault(event.target, set()).add(mref)
        return after, [MonitorStarted(mref)]
    if isinstance(event, Demonitor):
        owner = state.monitors.get(event.mref)
        if owner is None or owner[0] != event.watcher:
            return state, []  # OTP: demonitoring a fired or unknown monitor is a no-op
        del state.monitors[event.mref]
        state.names.pop(event.mref, None)
        for pid in owner:
            _forget(state.refs, pid, event.mref)
        return state, []
    if isinstance(event, Link):
        if event.a == event.b:
            return state, []  # OTP: linking to self does nothing
        if event.b_exit is not None:  # OTP: noproc, or noconnection for an unreachable node
            reason = event.b_exit if isinstance(event.b_exit, NoConnection) else NoProc()
            return state, [SendExit(event.a, Exit(event.b, reason))]
        state.links.add(frozenset((event.a, event.b)))
        state.partners.setdefault(event.a, set()).add(event.b)
        state.partners.setdefault(event.b, set()).add(event.a)
        return state, []
    if isinstance(event, Unlink):
        pair = frozenset((event.a, event.b))
        if pair in state.links:
            state.links.discard(pair)
            _forget(state.partners, event.a, event.b)
            _forget(state.partners, event.b, event.a)
        return state, []
    return state, _exited(state, event.pid, event.reason)


def _forget(index: dict[Pid, set[Any]], pid: Pid, item: Any) -> None:
    held = index.get(pid)
    if held is not None:
        held.discard(item)
        if not held:
            del index[pid]


def _exited(state: Links, pid: Pid, reason: ExitReason) -> list[Action]:
    actions: list[Action] = []
    for mref in sorted(state.refs.pop(pid, ())):
        watcher, target = state.monitors.pop(mref)
        name = state.names.pop(mref, None)
        if target == pid:
            actions.append(SendDown(watcher, Down(mref, pid, reason, name)))
        # else: a dead watcher's monitors die with it
        for other in (watcher, target):
            if other != pid:
                _forget(state.refs, other, mref)
    for other in state.partners.pop(pid, ()):
        state.links.discard(frozenset((pid, other)))
        _forget(state.partners, other, pid)
        actions.append(SendExit(other, Exit(pid, reason)))
    return actions
