"""Who holds a data directory's ``node.lock``: is a node running there, and which one.

A running node holds an exclusive ``flock`` on ``<data dir>/node.lock`` for its whole life
(:func:`prismatic._node.run_node`), and the kernel drops it when the node dies, however it
dies. So the lock, not leftover files (``control.sock``, the cookie), says whether a node
runs there. The kernel lists every flock in ``/proc/locks`` with the holder's pid and the
file's device and inode; reading that list never takes the lock, so a probe can never make
a starting node fail with "another node is running" (a probe by ``flock`` itself could).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["lock_holder", "UNKNOWN_HOLDER"]

UNKNOWN_HOLDER = -1  # the lock is held, but /proc/locks could not say by whom


def lock_holder(data_dir: Path | str) -> int | None:
    """The pid of the node running in ``data_dir``, or None if none is (no lock, or no one
    holds it). :data:`UNKNOWN_HOLDER` if it is held but the holder cannot be read."""
    path = Path(data_dir) / "node.lock"
    try:
        st = os.stat(path)
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                # "1: FLOCK  ADVISORY  WRITE 17455 fe:00:2147046 0 EOF" ("->" for waiters)
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == dev:
                    return int(fields[4])
        return None
    except (OSError, ValueError):
        return _probe(path)


def _probe(path: Path) -> int | None:
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return UNKNOWN_HOLDER
            fcntl.flock(f, fcntl.LOCK_UN)
            return None
    except OSError:
        return None
