"""A woken supervisor copies back its working set after forking its zygote again
(``supervisors/_working_set.py``): the run finding, the copy in a real forked process, and
its effect in a real node (the restart after the one that woke the supervisor)."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import struct

from hypothesis import given
from hypothesis import strategies as st

from prismatic.supervisors._working_set import (
    _EXCLUSIVE, _PAGE, _PRESENT, populate_write, runs_of,
)
from tests.conftest import wait_until
from tests.test_zygote import _of_kind

_FLAGS = {"absent": 0, "shared": _PRESENT, "exclusive": _PRESENT | _EXCLUSIVE,
          "swapped": _EXCLUSIVE}  # exclusive but not present: nothing to fault in


@given(st.lists(st.sampled_from(sorted(_FLAGS)), max_size=60), st.integers(0, 70))
def test_runs_are_the_first_present_exclusive_pages(kinds: list[str], limit: int) -> None:
    base = 0x7F0000000000
    entries = b"".join(struct.pack("<Q", _FLAGS[k] | 0x1234) for k in kinds)
    runs = runs_of(entries, base, limit)
    pages = [base + i * _PAGE for i, k in enumerate(kinds) if k == "exclusive"][:limit]
    assert [a + j * _PAGE for a, n in runs for j in range(n)] == pages
    # maximal runs: two runs never touch
    assert all(a + n * _PAGE < b for (a, n), (b, _) in zip(runs, runs[1:], strict=False))


def _exclusive(addr: int, pages: int) -> int:
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(addr // _PAGE * 8)
        data = f.read(pages * 8)
    return sum(1 for (e,) in struct.iter_unpack("<Q", data) if e & _PRESENT and e & _EXCLUSIVE)


def test_pages_shared_by_a_fork_are_made_this_process_own_again() -> None:
    pages = 32
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    size = pages * _PAGE
    addr = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value)
    ctypes.memset(addr, ord("x"), size)
    assert _exclusive(addr, pages) == pages
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # holds the pages shared until told to go
        os.read(r, 1)
        os._exit(0)
    try:
        assert _exclusive(addr, pages) == 0  # shared with the child now
        assert populate_write([(addr, pages)]) == pages
        assert _exclusive(addr, pages) == pages
        assert ctypes.string_at(addr, size) == b"x" * size  # the copies hold what was written
    finally:
        os.write(w, b"q")
        os.waitpid(child, 0)
        os.close(r)
        os.close(w)
        libc.munmap(addr, size)


def _minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def test_a_woken_supervisor_restarts_again_without_copying_its_pages(node_factory) -> None:
    """A small child supervisor starts dormant; its first restart forks the child and then
    the zygote, which shares every page of the supervisor again. The restart after it writes
    about the same pages: ~190 copy-on-write faults in the supervisor without the copy-back,
    ~30 with it (then ~10 for each later restart either way)."""
    n = node_factory("tests.apps:small_child_supervisor")
    sup = n.conn.pid_of("sup")
    faults = []
    for _ in range(2):
        old = n.conn.pid_of("sup/w")
        wait_until(lambda: not _of_kind(sup, "prism:zygote") or _of_kind(sup, "prism:spare"),
                   10, "dormant, or a spare")
        before = _minor_faults(sup)
        os.kill(old, signal.SIGKILL)
        wait_until(lambda old=old: n.conn.pid_of("sup/w") not in (None, old), 10, "restarted")
        faults.append(_minor_faults(sup) - before)
        wait_until(lambda: _of_kind(sup, "prism:spare"), 10, "a spare again")
    assert faults[1] < 100, faults
