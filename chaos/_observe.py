"""Reading a node from outside, for the invariants: its processes in /proc, its lifecycle
events and acked emits in the event log, its counters in the metrics text.

A node the runner started carries ``PRISMATIC_CHAOS_TAG=<tag>`` in its environment, which
every process of its tree inherits (the test suite finds its processes the same way with
``PRISMATIC_TEST_TAG``): a process with the tag is the node's, wherever it was reparented.
A node the runner did not start (``--node``) has no tag; its processes are the node
process's descendants, and an orphan is a process named as the tree names its processes
(``prism:<id>``, ``prism-sup:<id>``) whose parent is gone, started after the run began.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from .._process import rss_bytes
from ._invariants import ExitSeen

__all__ = ["TAG_VAR", "tagged_processes", "tagged_processes_of", "tree_named_processes",
           "exits_in_log",
           "starts_in_log", "members", "metric_sum", "boot_ticks", "parent_pid", "rss_bytes"]

TAG_VAR = "PRISMATIC_CHAOS_TAG"
_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def tagged_processes(tag: str) -> dict[int, int]:
    """Live processes whose environment holds ``PRISMATIC_CHAOS_TAG=<tag>``: pid -> ppid."""
    return tagged_processes_of((int(e) for e in os.listdir("/proc") if e.isdigit()), tag)


def tagged_processes_of(pids: Iterable[int], tag: str) -> dict[int, int]:
    """Those of ``pids`` that are live and carry the tag: pid -> ppid."""
    needle = f"{TAG_VAR}={tag}\0".encode()
    found: dict[int, int] = {}
    for entry in map(str, pids):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read() + b"\0"
        except OSError:
            continue
        if needle not in env:
            continue
        st = _stat(entry)
        if st is not None and st[0] not in ("Z", "X"):
            found[int(entry)] = int(st[1])
    return found


def parent_pid(pid: int) -> int | None:
    """``pid``'s parent, from /proc; None if it is gone."""
    st = _stat(str(pid))
    return int(st[1]) if st is not None else None


def boot_ticks() -> int:
    """Now, in the clock ticks since boot that /proc/<pid>/stat's start time uses."""
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * _TICKS)


def tree_named_processes(node_pid: int, since_ticks: int) -> dict[int, int]:
    """For an untagged node: its descendants, plus tree-named processes started after
    ``since_ticks`` that were reparented to init (pid -> ppid). Another node's orphans
    started meanwhile would be counted too: a tagged node (one the runner starts) has no
    such blind spot."""
    table: dict[int, tuple[int, str, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(entry)
        if st is None or st[0] in ("Z", "X"):
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        table[int(entry)] = (int(st[1]), comm, int(st[19]))
    out: dict[int, int] = {}
    for pid, (ppid, comm, start) in table.items():
        cur, seen = pid, set()
        while cur in table and cur != node_pid and cur not in seen:
            seen.add(cur)
            cur = table[cur][0]
        if cur == node_pid or pid == node_pid:
            out[pid] = ppid
        elif comm.startswith(("prism:", "prism-sup:")) and start >= since_ticks and ppid == 1:
            out[pid] = ppid  # reparented to init: it outlived its supervisor
    return out


def exits_in_log(records: Iterable[Any]) -> list[ExitSeen]:
    """Lifecycle records (``supervisor.#`` from the event log) as :class:`ExitSeen`; starts
    are left out."""
    out = []
    for r in records:
        p = r.payload
        if not isinstance(p, dict) or p.get("kind") == "child_started":
            continue
        reason = p.get("reason")
        path = "/".join([*p.get("path", []), p.get("key", "")])
        out.append(ExitSeen(pid=p.get("pid"), path=path, kind=str(p.get("kind")),
                            reason=reason.get("kind") if isinstance(reason, dict) else None,
                            mono=float(p.get("mono", 0.0))))
    return out


def starts_in_log(records: Iterable[Any]) -> dict[str, list[float]]:
    """When each path was started (``child_started``, monotonic seconds), oldest first. A
    supervisor's start is logged once its own children have started (OTP: a supervisor is
    started when its ``init`` has started them all)."""
    out: dict[str, list[float]] = {}
    for r in records:
        p = r.payload
        if isinstance(p, dict) and p.get("kind") == "child_started":
            path = "/".join([*p.get("path", []), p.get("key", "")])
            out.setdefault(path, []).append(float(p.get("mono", 0.0)))
    for times in out.values():
        times.sort()
    return out


def metric_sum(text: str, name: str, label: str | None = None) -> float:
    """The sum over a counter's samples in Prometheus text (those carrying ``label``, e.g.
    ``reason="killed"``, if given)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        series = head.split("{", 1)[0]
        if series != name or (label is not None and label not in head):
            continue
        try:
            total += float(value)
        except ValueError:
            continue
    return total


def members(conn: Any) -> dict[str, tuple[str, int]]:
    """What a meshed node believes of each member: name -> (state, incarnation)."""
    import msgspec

    from .._control import ClusterMembersCall
    from ..mesh._loop import MemberRow

    rows = msgspec.convert(conn._call(lambda ref, cookie: ClusterMembersCall(ref, cookie)),
                           list[MemberRow])
    return {r.name: (r.state.value, r.incarnation) for r in rows}
