"""The node's name registry as a pure state machine: ``decide(state, event)``.

OTP's ``register/2`` rules, per node: a name names at most one process and a process holds
at most one name; names vanish when their process exits. The I/O side (:mod:`._hub`) feeds
:class:`Exited` for every exit it learns of, and before a :class:`Register` it probes whether
the current holder of the name still lives (its exit report may still be on its way up the
tree while its replacement already registers), feeding :class:`Exited` first if not.

Invariant: ``names`` and ``by_pid`` are inverse maps of each other.

Ownership: :func:`decide` updates the state it is given in place and returns it (a node has
thousands of names, and a copy per operation made each one O(n)); the caller keeps only the
state it gets back. A refused request leaves the state as it was.
"""

from __future__ import annotations

import msgspec

from ._address import Pid

__all__ = ["Registry", "Register", "Unregister", "Exited", "Accepted", "Refused", "decide"]


class Registry(msgspec.Struct, frozen=True):
    names: dict[str, Pid] = {}
    by_pid: dict[Pid, str] = {}


class Register(msgspec.Struct, frozen=True):
    name: str
    pid: Pid


class Unregister(msgspec.Struct, frozen=True):
    name: str
    pid: Pid


class Exited(msgspec.Struct, frozen=True):
    pid: Pid


class Accepted(msgspec.Struct, frozen=True):
    pass


class Refused(msgspec.Struct, frozen=True):
    reason: str  # OTP's term
    detail: str


Event = Register | Unregister | Exited


def decide(state: Registry, event: Event) -> tuple[Registry, Accepted | Refused]:
    """The next registry (``state``, updated in place) and the answer to the event (an exit
    is always accepted). O(1)."""
    names, by_pid = state.names, state.by_pid
    if isinstance(event, Register):
        holder = names.get(event.name)
        if holder == event.pid:
            return state, Accepted()  # idempotent: a retried request must not fail
        if holder is not None:
            return state, Refused("already_registered", f"held by {holder}")
        if event.pid in by_pid:
            return state, Refused("already_named", f"{event.pid} is registered as "
                                                   f"{by_pid[event.pid]!r}")
        names[event.name] = event.pid
        by_pid[event.pid] = event.name
        return state, Accepted()
    if isinstance(event, Unregister):
        if names.get(event.name) != event.pid:
            return state, Refused("not_registered", f"{event.name!r} is not held by "
                                                    f"{event.pid}")
        _remove(state, event.pid)
        return state, Accepted()
    if event.pid in by_pid:
        _remove(state, event.pid)
    return state, Accepted()


def _remove(state: Registry, pid: Pid) -> None:
    del state.names[state.by_pid.pop(pid)]
