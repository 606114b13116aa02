"""Caps on the ``AF_UNIX`` listeners of a node: its hub and every worker's mailbox.

A process of the node's own uid can open connections and send partial frames at any rate;
without caps it exhausts the node's descriptors (libzmq then aborts the node, and the tree
dies with it) or its memory. Each listener therefore enforces:

* ``max_connections`` open at once, and ``max_connections_per_pid`` from one peer process
  (its ``SO_PEERCRED`` pid; peers of another uid are refused before any of this);
* a descriptor reserve: a connection whose descriptor number is within ``fd_reserve`` of
  the soft ``RLIMIT_NOFILE`` is refused. The kernel hands out the lowest free number, so
  every lower one is in use: refusing there keeps ``fd_reserve`` descriptors for the
  process's own sockets (ZeroMQ's included);
* ``max_frame_bytes`` per frame, and ``max_buffered_bytes`` of unfinished frames across all
  of the listener's connections: a connection that would go beyond is closed.

Every refusal and drop is counted and logged (throttled). The caps come from the
environment, read when a listener is made (so the node and every process of its tree, which
inherit the node's environment, agree):

=====================================  ============  ===========================
variable                               default       applies to
=====================================  ============  ===========================
``PRISMATIC_HUB_MAX_CONNECTIONS``      16384         the node's hub
``PRISMATIC_MAILBOX_MAX_CONNECTIONS``  4096          each worker's mailbox
``PRISMATIC_MAX_CONNECTIONS_PER_PID``  64            both, per peer process
``PRISMATIC_FD_RESERVE``               256           both
``PRISMATIC_MAX_FRAME_BYTES``          64 MiB        both (hub and mailbox frames)
``PRISMATIC_MAX_BUFFERED_BYTES``       256 MiB       both, per listener
=====================================  ============  ===========================
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from ._errors import NodeError
from .transports._framing import MAX_FRAME

__all__ = ["LocalLimits", "Admissions", "hub_limits", "mailbox_limits", "fd_within_reserve",
           "fix_mailbox_limits", "tree_mailbox_limits"]


class LocalLimits(msgspec.Struct, frozen=True):
    max_connections: int
    max_connections_per_pid: int = 64
    fd_reserve: int = 256
    max_frame_bytes: int = MAX_FRAME
    max_buffered_bytes: int = 256 * 1024 * 1024


_SHARED = {
    "max_connections_per_pid": "PRISMATIC_MAX_CONNECTIONS_PER_PID",
    "fd_reserve": "PRISMATIC_FD_RESERVE",
    "max_frame_bytes": "PRISMATIC_MAX_FRAME_BYTES",
    "max_buffered_bytes": "PRISMATIC_MAX_BUFFERED_BYTES",
}


def _from_env(env: Mapping[str, str], total_var: str, total_default: int) -> LocalLimits:
    values: dict[str, int] = {}
    for field, var in {"max_connections": total_var, **_SHARED}.items():
        raw = env.get(var)
        if raw is None:
            continue
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < (0 if field == "fd_reserve" else 1) or (
                field == "max_frame_bytes" and value > MAX_FRAME):
            raise NodeError(f"{var}={raw!r}: expected a whole number "
                            f"{'>= 0' if field == 'fd_reserve' else '>= 1'}"
                            f"{f' and <= {MAX_FRAME}' if field == 'max_frame_bytes' else ''}")
        values[field] = value
    values.setdefault("max_connections", total_default)
    return LocalLimits(**values)


def hub_limits(env: Mapping[str, str] | None = None) -> LocalLimits:
    """The hub's caps; NodeError names a bad variable."""
    return _from_env(os.environ if env is None else env, "PRISMATIC_HUB_MAX_CONNECTIONS",
                     16384)


def mailbox_limits(env: Mapping[str, str] | None = None) -> LocalLimits:
    """A mailbox's caps; NodeError names a bad variable (the node checks the same
    environment before it starts its tree, so a worker does not meet one)."""
    return _from_env(os.environ if env is None else env,
                     "PRISMATIC_MAILBOX_MAX_CONNECTIONS", 4096)


_tree_mailbox: LocalLimits | None = None  # fixed by the node before it forks its tree


def fix_mailbox_limits() -> LocalLimits:
    """Read the mailbox caps once, for this process and every process forked from it from
    now on (the node calls it before it forks its tree, whose processes inherit the same
    environment): a worker then does not parse the environment again as it starts, which a
    fresh fork pays for in copy-on-write faults (~25, ~0.1 ms in a VM). NodeError as
    :func:`mailbox_limits`."""
    global _tree_mailbox
    _tree_mailbox = mailbox_limits()
    return _tree_mailbox


def tree_mailbox_limits() -> LocalLimits:
    """The caps the node fixed for its tree (:func:`fix_mailbox_limits`); outside a node,
    read from the environment now."""
    return _tree_mailbox if _tree_mailbox is not None else mailbox_limits()


def fd_within_reserve(fd: int, reserve: int) -> bool:
    """Whether descriptor ``fd``, just handed out, leaves fewer than ``reserve`` free (every
    lower number is in use: the kernel gives out the lowest free one). The reserve is at most
    a quarter of the soft limit, so that a process started with a low limit still accepts."""
    limit = os.sysconf("SC_OPEN_MAX")
    return fd >= limit - min(reserve, limit // 4)


class Admissions:
    """Who is connected to one listener; decides whether one more may be.

    Invariant: ``open`` is the sum of ``by_pid``'s counts.
    """

    __slots__ = ("limits", "open", "by_pid")

    def __init__(self, limits: LocalLimits) -> None:
        self.limits = limits
        self.open = 0
        self.by_pid: dict[int, int] = {}

    def admit_peer(self, pid: int, uid: int, fd: int) -> tuple[str, str] | None:
        """Count in the connection of ``pid`` running as ``uid`` (``SO_PEERCRED``) on ``fd``
        and return None, or return ``(kind, why)`` it is refused: ``uid`` (not the node's
        own user) or ``capacity`` (a cap of :meth:`admit`)."""
        if uid != os.getuid():
            return "uid", f"uid {uid} (another user)"
        refused = self.admit(pid, fd)
        return None if refused is None else ("capacity", refused)

    def admit(self, pid: int, fd: int) -> str | None:
        """Count the connection in and return None, or return why it is refused."""
        limits = self.limits
        if self.open >= limits.max_connections:
            return f"{self.open} connections open (the cap)"
        if self.by_pid.get(pid, 0) >= limits.max_connections_per_pid:
            return f"pid {pid} holds {self.by_pid[pid]} connections (the per-process cap)"
        if fd_within_reserve(fd, limits.fd_reserve):
            return (f"descriptor {fd} is within the reserve kept below the limit of "
                    f"{os.sysconf('SC_OPEN_MAX')}")
        self.open += 1
        self.by_pid[pid] = self.by_pid.get(pid, 0) + 1
        return None

    def release(self, pid: int) -> None:
        held = self.by_pid.get(pid, 0)
        if held > 1:
            self.by_pid[pid] = held - 1
        elif held == 1:
            del self.by_pid[pid]
        else:
            return
        self.open -= 1
