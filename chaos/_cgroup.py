"""A memory limit set from outside a process: a cgroup of its own with a memory cap, for
the resources scenario's ``cgroup`` fault.

cgroup v2 where its memory controller can be used (a child of the runner's own cgroup with
``memory.max``; the controller must be enabled in that cgroup's ``cgroup.subtree_control``),
else cgroup v1's memory hierarchy (``memory.limit_in_bytes``, and ``memory.memsw.*`` so
that swap does not absorb the excess). Needs root (or a delegated cgroup);
:func:`cgroup_unavailable` says why not where neither works. Only a child of the cgroup the
runner runs in is made (never a sibling, never a change to an existing one), and it is
removed once its process has gone.

What the kernel does at the cap is the point: the process's allocations are reclaimed, and
then the OOM killer SIGKILLs it (within its cgroup only): counted in ``memory.events``
(v2) or ``memory.oom_control`` (v1) as ``oom_kill``.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from .._errors import ChaosError

__all__ = ["MemoryCgroup", "cgroup_unavailable", "open_memory_cgroup"]

_ROOT = Path("/sys/fs/cgroup")


def _own_path(controller: str | None) -> str | None:
    """This process's cgroup path in the v2 hierarchy (``controller`` None) or in the v1
    hierarchy of ``controller``."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller is None and controllers == "" or \
                controller is not None and controller in controllers.split(","):
            return path
    return None


def _v2_parent() -> Path | None:
    """The runner's own v2 cgroup, if its children can have the memory controller."""
    mount = _ROOT if (_ROOT / "cgroup.controllers").exists() else _ROOT / "unified"
    own = _own_path(None)
    if own is None or not (mount / "cgroup.controllers").exists():
        return None
    parent = mount / own.lstrip("/")
    try:
        enabled = (parent / "cgroup.subtree_control").read_text().split()
    except OSError:
        return None
    return parent if "memory" in enabled else None


def _v1_parent() -> Path | None:
    own = _own_path("memory")
    base = _ROOT / "memory"
    if own is None or not (base / "memory.limit_in_bytes").exists():
        return None
    return base / own.lstrip("/")


def cgroup_unavailable() -> str | None:
    """Why no memory cgroup can be made here (one line), or None if one can."""
    if os.geteuid() != 0:
        return "a memory cgroup needs root"
    parent = _v2_parent() or _v1_parent()
    if parent is None:
        return "no cgroup memory controller for this process (v2 not delegated, no v1)"
    if not os.access(parent, os.W_OK):
        return f"cannot write to {parent}"
    return None


class MemoryCgroup:
    """One cgroup with a memory cap; ``version`` 1 or 2."""

    def __init__(self, path: Path, version: int, limit: int) -> None:
        self.path = path
        self.version = version
        self.limit = limit

    def _write(self, name: str, value: str) -> None:
        (self.path / name).write_text(value)

    def add(self, pid: int) -> None:
        """Move ``pid`` into the cgroup (what it allocates from now on is charged here)."""
        self._write("cgroup.procs", str(pid))

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def peak(self) -> int | None:
        """The most memory the cgroup ever held, where the kernel reports it."""
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def procs(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]


@contextlib.contextmanager
def open_memory_cgroup(limit: int) -> Iterator[MemoryCgroup]:
    """A fresh memory cgroup capped at ``limit`` bytes, removed on exit (once empty: its
    process is waited for up to 5 s; a cgroup that still holds one is left, and said)."""
    why = cgroup_unavailable()
    if why is not None:
        raise ChaosError(why)
    v2 = _v2_parent()
    parent = v2 or _v1_parent()
    assert parent is not None
    path = parent / f"chaos-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as exc:
        raise ChaosError(f"cannot make a cgroup in {parent}: {exc}") from None
    group = MemoryCgroup(path, 2 if v2 else 1, limit)
    try:
        if v2:
            group._write("memory.max", str(limit))
            with contextlib.suppress(OSError):
                group._write("memory.swap.max", "0")
        else:
            group._write("memory.limit_in_bytes", str(limit))
            with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                group._write("memory.memsw.limit_in_bytes", str(limit))
        yield group
    finally:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                path.rmdir()
                break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise ChaosError(f"cannot remove the cgroup {path}: {exc}") from None
                time.sleep(0.05)
