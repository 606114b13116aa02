"""Process addresses: a :class:`Pid` names one process, forever.

``(node, ospid)`` says where a process is found (its mailbox is the abstract address
``\\0prismatic/<node>/<ospid>``), but the OS reuses pids (``pid_max`` is often 32768) and a
node restarted under the same name starts over. Two more fields make a Pid unique, as OTP's
*creation* does for a node:

* ``creation``: the node's incarnation, its start time in ms since the epoch (a node restarted
  under the same name gets a new one, as OTP's creation);
* ``start``: the kernel's start time of the process, in clock ticks since boot
  (``/proc/<pid>/stat`` field 22): two processes that held one ospid in turn differ in it
  unless the pid space wrapped within one tick (10 ms), which a busy tree cannot do.

Whoever delivers to a Pid checks both against the process holding its address
(:func:`holder_matches`): a stale Pid reaches nobody. A field left 0 is *unknown* and not
checked: ``Pid(node, ospid)`` built by hand names whichever process holds that ospid now
(as before); every Pid the runtime hands out (``self.pid``, ``whereis``, a caller, a
``Down``) carries both. The string form stays ``<node.ospid>``; the wire form (msgpack or
JSON, ``array_like``) is ``[node, ospid, creation, start]``, and the old ``[node, ospid]``
still decodes (the new fields default to 0).
"""

from __future__ import annotations

import os
import socket
import time

import msgspec

__all__ = ["Pid", "Global", "default_node_name", "process_start", "boot_ms", "own_pid",
           "holder_matches", "new_creation", "watch_target"]


class Pid(msgspec.Struct, frozen=True, order=True, array_like=True):
    """The address of one process: its node, OS pid, and what makes it unique (0: unknown)."""

    node: str
    ospid: int
    creation: int = 0  # the node's incarnation: its start time, ms since the epoch
    start: int = 0  # the process's start time, clock ticks since boot

    def __str__(self) -> str:
        return f"<{self.node}.{self.ospid}>"

    @property
    def exact(self) -> bool:
        """Whether this Pid names one process (both discriminators known)."""
        return self.creation != 0 and self.start != 0

    def names(self, other: Pid) -> bool:
        """Whether this Pid addresses the process ``other`` (a field 0 here: any value)."""
        return (self.node == other.node and self.ospid == other.ospid
                and self.creation in (0, other.creation) and self.start in (0, other.start))


class Global(msgspec.Struct, frozen=True, array_like=True):
    """A destination by global name (OTP's ``{global, Name}``): resolved cluster-wide at each
    send or call (see :meth:`Worker.register_global`)."""

    name: str

    def __str__(self) -> str:
        return f"{{global, {self.name}}}"


def watch_target(dest: object, node: str) -> tuple[Pid, str | Global | None]:
    """What a monitor or link of ``dest`` asks the hub of node ``node``: ``(pid, None)`` for
    a Pid (or one that travelled inside a message as ``[node, ospid, ...]``), else
    ``(Pid(name's node, 0), name)`` for a name to resolve there: a name registered on this
    node (``"name"``), on another (``(name, node)``, OTP's ``{Name, Node}``), or a
    :class:`Global`. TypeError for anything else."""
    if isinstance(dest, Pid):
        return dest, None
    if isinstance(dest, Global):
        return Pid(node, 0), dest
    if isinstance(dest, str) and dest:
        return Pid(node, 0), dest
    if isinstance(dest, (list, tuple)) and len(dest) >= 2 and isinstance(dest[0], str):
        if len(dest) == 2 and isinstance(dest[1], str) and dest[0] and dest[1]:
            return Pid(dest[1], 0), dest[0]
        if 2 <= len(dest) <= 4 and all(isinstance(x, int) for x in dest[1:]):
            return Pid(*dest), None
    raise TypeError(f"a monitor or link takes a Pid, a registered name, (name, node) or a "
                    f"Global, not {dest!r}")


def default_node_name() -> str:
    """``prismatic@<short host name>``, as Erlang's ``name@host``."""
    return f"prismatic@{socket.gethostname().split('.')[0]}"


def new_creation() -> int:
    """A node's creation: now, in ms since the epoch (a restart always gets a larger one)."""
    return time.time_ns() // 1_000_000


def process_start(ospid: int) -> int:
    """The kernel's start time of process ``ospid`` (clock ticks since boot), 0 if there is
    no such process (or it cannot be read)."""
    # os.open/os.read, not open(): a worker reads its own as it starts, and the io stack's
    # objects cost a fresh fork ~30 copy-on-write faults more (~0.1 ms in a VM).
    try:
        fd = os.open(f"/proc/{ospid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return 0
    try:
        stat = os.read(fd, 4096)  # one read: the file is a few hundred bytes
    except OSError:
        return 0
    finally:
        os.close(fd)
    # comm (field 2) may hold spaces and parentheses: fields 3.. follow the last ')'
    fields = stat[stat.rfind(b")") + 2:].split(maxsplit=20)  # fields 3..22 and the rest
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


_boot_ms: int | None = None


def boot_ms() -> int:
    """When this machine booted, ms since the epoch (rounded down to the second)."""
    global _boot_ms
    if _boot_ms is None:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _boot_ms = int(line.split()[1]) * 1000
                    break
            else:
                _boot_ms = 0
    return _boot_ms


def own_pid(node: str, creation: int) -> Pid:
    """This process's exact Pid on ``node`` (of incarnation ``creation``)."""
    ospid = os.getpid()
    return Pid(node, ospid, creation, process_start(ospid))


def holder_matches(pid: Pid, holder: int, node_creation: int) -> bool:
    """Whether ``holder`` (the OS pid listening at ``pid``'s mailbox address, from
    ``SO_PEERCRED``) is the process ``pid`` names, on a node whose current incarnation is
    ``node_creation`` (0: unknown). A Pid from before this machine booted names nobody.

    The check every local delivery makes (a sender's connection to a mailbox, the hub's
    probe and its notices); a delivery from another node makes the same one on arrival."""
    if pid.creation:
        if node_creation:
            if pid.creation != node_creation:
                return False
        elif pid.creation < boot_ms():
            return False
    if not pid.start:
        return True
    return holder == pid.ospid and process_start(holder) == pid.start
