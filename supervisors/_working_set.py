"""A supervisor's working set, copied back before a restart needs it.

Why: after a fork, every page of the parent is shared copy-on-write with the child, and the
first write to each is a page fault that copies it. A supervisor that wakes from dormancy
forks its restarted child, then its zygote; the restart after that then pays a fault for
each page of the supervisor that its restart path writes (measured, 1,000 dormant
supervisors: ~100 faults, 0.7-0.9 ms of the next restart, against ~2 for a supervisor that
forked its zygote long ago). Those are about the pages it wrote since its last fork: the
restart that woke it wrote them.

So, just before it forks the zygote again, the supervisor lists the pages only it maps
(``/proc/self/pagemap``'s exclusive bit: written, or allocated, since its last fork), and
right after the fork it faults them in writable (``MADV_POPULATE_WRITE``, Linux 5.14), off
the restart path, while idle. The cost is one copy of those pages for as long as the zygote
lives (the zygote keeps the originals), capped at :data:`MAX_PAGES`; where the kernel lacks
``MADV_POPULATE_WRITE`` nothing is done (the restart just pays the faults, as before).
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct

__all__ = ["exclusive_runs", "runs_of", "populate_write", "MAX_PAGES"]

log = logging.getLogger(__name__)

MAX_PAGES = 1024  # 4 MiB: a restart path writes ~100-200 pages; more is not a working set
_MADV_POPULATE_WRITE = 23
_PRESENT = 1 << 63
_EXCLUSIVE = 1 << 56
_PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_unsupported = False


def _private_writable() -> list[tuple[int, int]]:
    """(start, end) of this process's private writable mappings (heap, anonymous memory,
    libraries' data), the ones a fork shares copy-on-write."""
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if fields[1] != "rw-p" or (len(fields) > 5 and fields[5].startswith("[v")):
                continue  # shared, read-only, or the kernel's [vvar]/[vsyscall] pages
            lo, hi = fields[0].split("-")
            spans.append((int(lo, 16), int(hi, 16)))
    return spans


def exclusive_runs(limit: int = MAX_PAGES) -> list[tuple[int, int]]:
    """Runs (address, pages) of present pages mapped by this process alone, at most ``limit``
    pages in all (the first ones found); [] where pagemap cannot be read."""
    runs: list[tuple[int, int]] = []
    try:
        with open("/proc/self/pagemap", "rb") as pagemap:
            for lo, hi in _private_writable():
                pagemap.seek(lo // _PAGE * 8)
                entries = pagemap.read((hi - lo) // _PAGE * 8)
                runs += runs_of(entries, lo, limit - sum(n for _, n in runs))
    except OSError as exc:
        log.debug("working set: cannot read pagemap: %s", exc)
        return []
    return runs


def runs_of(entries: bytes, base: int, limit: int) -> list[tuple[int, int]]:
    """The runs (address, pages) of consecutive present and exclusive pages among
    ``entries`` (pagemap's 64-bit entries of the pages from address ``base`` on), at most
    ``limit`` pages in all, the first ones."""
    runs: list[tuple[int, int]] = []
    start = count = 0
    for i, (entry,) in enumerate(struct.iter_unpack("<Q", entries)):
        if limit <= 0:
            break
        if entry & _PRESENT and entry & _EXCLUSIVE:
            if not count:
                start = base + i * _PAGE
            count += 1
            limit -= 1
        elif count:
            runs.append((start, count))
            count = 0
    if count:
        runs.append((start, count))
    return runs


def populate_write(runs: list[tuple[int, int]]) -> int:
    """Fault ``runs`` in writable (a copy of each page still shared with a child); returns
    the pages done. A run unmapped since it was listed is skipped."""
    global _unsupported
    done = 0
    for start, count in runs:
        if _unsupported:
            break
        if _libc.madvise(start, count * _PAGE, _MADV_POPULATE_WRITE) == 0:
            done += count
            continue
        err = ctypes.get_errno()
        if err == 22:  # EINVAL: a kernel before 5.14; the restart pays its faults instead
            _unsupported = True
            log.debug("working set: MADV_POPULATE_WRITE unsupported here")
    return done
