"""Reading an LMDB data file page by page, without LMDB, to check it before LMDB maps it.

LMDB trusts its file: it maps ``data.mdb`` and follows page numbers wherever they point, so a
truncated file kills the reading process with SIGBUS and garbage in a page makes it read,
crash on, or write through nonsense. This module reads the same file with ``pread`` (never a
mapping, so a short file is an error, not a signal) and checks what LMDB would rely on:

* the two meta pages (magic, version, page size; the newer one is the one LMDB uses) and
  that the file holds every page up to the meta's ``last_pg`` (a truncated file fails here);
* every page reachable from the free list, the main DB and each named DB: its stored page
  number, its kind (branch above leaf, at the depth the DB records), its node table in
  bounds, its keys strictly ascending and inside the range its parent gives it, overflow
  runs inside the file, no page reached twice; and the DB's recorded page and entry counts.

Layout read (LMDB 0.9, 64-bit): a page is a 16-byte header (``pgno`` u64, pad u16, flags
u16, lower u16, upper u16; an overflow page has its page count as u32 at offset 12) and a
table of u16 node offsets; a node is ``lo`` u16, ``hi`` u16, flags u16, key size u16, key,
then (leaf) the value or (F_BIGDATA) the u64 number of its first overflow page, or
(branch) nothing: the child page number is ``lo | hi << 16 | flags << 32``. A meta page
holds at offset 16: magic u32, version u32, address u64, map size u64, the free and main
DB records (48 bytes each: pad u32 = page size for the free DB, flags u16, depth u16,
branch/leaf/overflow page counts, entries, root, all u64), last page u64, txnid u64.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["NOT_A_DB", "DbRecord", "LmdbFile", "PageError", "RawPages", "TreeWalk",
           "named_dbs", "open_lmdb_file", "scan_leaf_entries"]

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
PAGE_HEADER = 16
NODE_HEADER = 8
INVALID_PGNO = (1 << 64) - 1
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
MDB_INTEGERKEY = 0x08  # a DB flag: keys are native unsigned integers

_HEADER = struct.Struct("<QHHHH")
_NODE = struct.Struct("<HHHH")
_DB = struct.Struct("<IHHQQQQQ")
_META_HEAD = struct.Struct("<IIQQ")
_U64 = struct.Struct("<Q")


def _native_int(key: bytes) -> int:
    return int.from_bytes(key, "little")  # x86-64 and arm64: the only kinds the node runs on


class PageError(Exception):
    """The file is not what LMDB would need it to be; the message says where and why."""


@dataclass(frozen=True)
class DbRecord:
    """An LMDB ``MDB_db``: where a B-tree's root is and what it claims to hold."""

    flags: int
    depth: int
    branch_pages: int
    leaf_pages: int
    overflow_pages: int
    entries: int
    root: int

    @classmethod
    def unpack(cls, raw: bytes) -> DbRecord:
        _, flags, depth, branch, leaf, overflow, entries, root = _DB.unpack(raw)
        return cls(flags, depth, branch, leaf, overflow, entries, root)


@dataclass(frozen=True)
class Meta:
    page_size: int
    txnid: int
    last_pgno: int
    free: DbRecord
    main: DbRecord


class LmdbFile:
    """A ``data.mdb`` opened for checking: its newer meta and page-wise reads."""

    def __init__(self, path: str, fd: int, *, truncated_ok: bool = False) -> None:
        self.path = path
        self._fd = fd
        self.size = os.fstat(fd).st_size
        self.meta = self._newest_meta()
        self.page_size = self.meta.page_size
        need = (self.meta.last_pgno + 1) * self.page_size
        if self.size < need and not truncated_ok:
            raise PageError(
                f"truncated: {self.size} bytes, but its meta page (txn {self.meta.txnid}) "
                f"uses pages up to {self.meta.last_pgno}, i.e. {need} bytes"
            )

    def _read_meta(self, offset: int) -> Meta | None:
        raw = os.pread(self._fd, 160, offset)
        if len(raw) < 160:
            return None
        magic, version, _, _ = _META_HEAD.unpack_from(raw, PAGE_HEADER)
        flags = _HEADER.unpack_from(raw)[2]
        if magic != MAGIC or version != DATA_VERSION or not flags & P_META:
            return None
        free = DbRecord.unpack(raw[40:88])
        page_size = _DB.unpack_from(raw, 40)[0]
        if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
            return None
        last_pgno, txnid = struct.unpack_from("<QQ", raw, 136)
        return Meta(page_size, txnid, last_pgno, free, DbRecord.unpack(raw[88:136]))

    def _newest_meta(self) -> Meta:
        first = self._read_meta(0)
        if first is None:
            raise PageError(
                f"not an LMDB data file, or its first meta page is damaged ({self.size} bytes)"
            )
        second = self._read_meta(first.page_size)
        if second is None:
            raise PageError("the second meta page is missing or damaged")
        return second if second.txnid > first.txnid else first

    def page(self, pgno: int, count: int = 1) -> bytes:
        if pgno < 2 or pgno + count - 1 > self.meta.last_pgno:
            raise PageError(f"page {pgno} is outside the used pages 2..{self.meta.last_pgno}")
        raw = os.pread(self._fd, self.page_size * count, pgno * self.page_size)
        if len(raw) < self.page_size * count:
            raise PageError(f"page {pgno} lies past the end of the file")
        stored = _HEADER.unpack_from(raw)[0]
        if stored != pgno:
            raise PageError(f"page {pgno} says it is page {stored}")
        return raw

    def close(self) -> None:
        os.close(self._fd)


def open_lmdb_file(path: str, *, truncated_ok: bool = False) -> LmdbFile:
    """Open and check the meta pages and (unless ``truncated_ok``: salvage reads what is
    there) the size of the LMDB data file ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return LmdbFile(path, fd, truncated_ok=truncated_ok)
    except BaseException:
        os.close(fd)
        raise


Visit = Callable[[bytes, bytes], None]


class _TreeDamage(PageError):
    """A PageError that already names its DB."""

NOT_A_DB = DbRecord(0, 0, 0, 0, 0, 0, 0)


class TreeWalk:
    """Walks one B-tree, checking every page; ``visit(key, value)`` per leaf entry.

    ``seen`` is shared by the walks of one file so that no page may belong to two trees.
    With ``tolerant``, a damaged subtree is recorded in ``damage`` and skipped (salvage);
    without, the first damage raises :class:`PageError` (verification).
    """

    def __init__(self, file: LmdbFile, name: str, seen: set[int], *, tolerant: bool = False,
                 edge_leaves: int | None = None) -> None:
        self.file = file
        self.name = name
        self.seen = seen
        self.tolerant = tolerant
        # Bounded check: only this many leaves at each end are read (the ones appends and
        # retention rewrite); the others are only placed (in range, reached once).
        self.edge_leaves = edge_leaves
        self.skipped = 0
        self.damage: list[str] = []
        self.counts = {"branch": 0, "leaf": 0, "overflow": 0, "entries": 0}
        self._claimed_leaves = 0
        self._integer_keys = False

    def walk(self, db: DbRecord, visit: Visit) -> None:
        if db.root == INVALID_PGNO:
            if db.entries or db.depth:
                self._fail(f"has no root page but claims {db.entries} entries")
            return
        self._claimed_leaves = db.leaf_pages
        # MDB_INTEGERKEY (the free list's txn ids): native unsigned integers, ordered as
        # numbers, not as bytes (a little-endian 256 sorts before 255 bytewise).
        self._integer_keys = bool(db.flags & MDB_INTEGERKEY)
        self._subtree(db.root, 1, db.depth, None, None, visit)
        if not self.damage:
            claimed = {"branch": db.branch_pages, "leaf": db.leaf_pages,
                       "overflow": db.overflow_pages, "entries": db.entries}
            if self.skipped:  # unread leaves: their entries and overflow pages are unknown
                claimed["overflow"] = self.counts["overflow"]
                claimed["entries"] = self.counts["entries"]
            if claimed != self.counts:
                self._fail(f"holds {self.counts}, but its DB record says {claimed}")

    def _fail(self, problem: str) -> None:
        message = f"DB {self.name}: {problem}"
        if not self.tolerant:
            raise _TreeDamage(message)
        self.damage.append(message)

    def _subtree(self, pgno: int, level: int, depth: int, low: bytes | None,
                 high: bytes | None, visit: Visit) -> None:
        try:
            self._page(pgno, level, depth, low, high, visit)
        except _TreeDamage:
            raise  # already says where
        except PageError as exc:
            self._fail(str(exc))

    def _page(self, pgno: int, level: int, depth: int, low: bytes | None, high: bytes | None,
              visit: Visit) -> None:
        if pgno in self.seen:
            raise PageError(f"page {pgno} is reached twice")
        raw = self.file.page(pgno)
        self.seen.add(pgno)
        _, _, flags, lower, upper = _HEADER.unpack_from(raw)
        size = len(raw)
        if not PAGE_HEADER <= lower <= upper <= size or (lower - PAGE_HEADER) % 2:
            raise PageError(f"page {pgno}: node table bounds {lower}..{upper} are impossible")
        keys = (lower - PAGE_HEADER) >> 1
        leaf = level == depth
        kind = flags & (P_BRANCH | P_LEAF | P_OVERFLOW | P_META | P_LEAF2)
        if kind != (P_LEAF if leaf else P_BRANCH) or keys < (1 if leaf else 2):
            raise PageError(f"page {pgno}: flags {flags:#x} with {keys} keys at level "
                            f"{level} of {depth}")
        offsets = struct.unpack_from(f"<{keys}H", raw, PAGE_HEADER)
        ordinal = self.counts["leaf"]
        self.counts["leaf" if leaf else "branch"] += 1
        if leaf and self.edge_leaves is not None and \
                self.edge_leaves <= ordinal < self._claimed_leaves - self.edge_leaves:
            # Bounded: a leaf no write touches gets its header and node table checked, not
            # its nodes (their entries and overflow pages then go uncounted).
            if min(offsets) < upper or max(offsets) > size - NODE_HEADER:
                raise PageError(f"page {pgno}: a node lies outside the page")
            self.skipped += 1
            return
        nodes = []
        previous: bytes | None = None
        for index, at in enumerate(offsets):
            if not upper <= at <= size - NODE_HEADER:
                raise PageError(f"page {pgno}: node {index} at offset {at} is outside the page")
            lo, hi, node_flags, ksize = _NODE.unpack_from(raw, at)
            key_end = at + NODE_HEADER + ksize
            if key_end > size:
                raise PageError(f"page {pgno}: key of node {index} runs past the page")
            key = raw[at + NODE_HEADER:key_end]
            if not (leaf or index):
                key = low or b""  # a branch's first key is implicit: the lower bound
            elif self._out_of_order(key, previous, low, high):
                # A child holds [its separator, the next separator): LMDB descends so.
                raise PageError(f"page {pgno}: key of node {index} is out of order")
            previous = key
            nodes.append((lo, hi, node_flags, key, key_end))
        for index, (lo, hi, node_flags, key, key_end) in enumerate(nodes):
            if leaf:
                visit(key, self._value(pgno, raw, lo | hi << 16, node_flags, key_end))
                self.counts["entries"] += 1
            else:
                child_high = nodes[index + 1][3] if index + 1 < len(nodes) else high
                self._subtree(lo | hi << 16 | node_flags << 32, level + 1, depth,
                              key if index else low, child_high, visit)

    def _out_of_order(self, key: bytes, previous: bytes | None, low: bytes | None,
                      high: bytes | None) -> bool:
        order: Callable[[bytes], Any] = _native_int if self._integer_keys else bytes
        k = order(key)
        return bool((previous is not None and k <= order(previous))
                    or (low is not None and k < order(low))
                    or (high is not None and k >= order(high)))

    def _value(self, pgno: int, raw: bytes, dsize: int, flags: int, at: int) -> bytes:
        if flags & F_DUPDATA:
            raise PageError(f"page {pgno}: a duplicate-sorted entry (no Prismatic DB has one)")
        if not flags & F_BIGDATA:
            if at + dsize > len(raw):
                raise PageError(f"page {pgno}: a value runs past the page")
            return raw[at:at + dsize]
        if at + 8 > len(raw):
            raise PageError(f"page {pgno}: an overflow reference runs past the page")
        first = _U64.unpack_from(raw, at)[0]
        if first in self.seen:
            raise PageError(f"overflow page {first} is reached twice")
        head = self.file.page(first)
        _, _, oflags, _, _ = _HEADER.unpack_from(head)
        pages = struct.unpack_from("<I", head, 12)[0]
        if not oflags & P_OVERFLOW or pages < 1 or \
                dsize > pages * self.file.page_size - PAGE_HEADER:
            raise PageError(f"overflow page {first}: flags {oflags:#x}, {pages} pages for "
                            f"a {dsize}-byte value")
        whole = self.file.page(first, pages) if pages > 1 else head
        self.seen.update(range(first, first + pages))
        self.counts["overflow"] += pages
        return whole[PAGE_HEADER:PAGE_HEADER + dsize]


def named_dbs(file: LmdbFile, seen: set[int], tolerant: bool = False,
              ) -> tuple[dict[bytes, DbRecord], list[str]]:
    """The named DBs the main DB lists (and, walking it, the main DB's damage if tolerant).
    A plain entry of the main DB (not a DB record) is listed under its key with root 0."""
    found: dict[bytes, DbRecord] = {}

    def collect(key: bytes, value: bytes) -> None:
        found[key] = DbRecord.unpack(value) if len(value) == _DB.size else NOT_A_DB

    walk = TreeWalk(file, "(main)", seen, tolerant=tolerant)
    walk.walk(file.meta.main, collect)
    return found, walk.damage


def free_list_pages(file: LmdbFile, seen: set[int]) -> Iterator[int]:
    """Walk the free-list DB (checking its pages) and yield every page number it frees."""
    freed: list[int] = []

    def collect(key: bytes, value: bytes) -> None:
        if len(value) < 8 or len(value) % 8:
            raise PageError("free list entry of impossible size")
        count = _U64.unpack_from(value)[0]
        if count != len(value) // 8 - 1:
            raise PageError(f"free list entry says {count} pages in {len(value)} bytes")
        freed.extend(struct.unpack_from(f"<{count}Q", value, 8))

    TreeWalk(file, "(free list)", seen).walk(file.meta.free, collect)
    yield from freed


class RawPages:
    """A data file whose meta pages are lost: only its pages, at the system's page size
    (LMDB's default), for :func:`scan_leaf_entries`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self._fd).st_size
        self.page_size = os.sysconf("SC_PAGESIZE")

    def close(self) -> None:
        os.close(self._fd)


def scan_leaf_entries(file: LmdbFile | RawPages, chunk_pages: int = 256,
                      ) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of every page in the file that looks like a leaf page, live or
    freed, reachable or not: the last resort of salvage when the trees are broken (a
    truncated file loses its newest pages, and with them the roots). Damaged nodes are
    skipped; the caller must validate what it gets."""
    size = file.page_size
    pages = file.size // size
    for start in range(2, pages, chunk_pages):
        chunk = os.pread(file._fd, size * chunk_pages, start * size)
        for index in range(len(chunk) // size):
            pgno = start + index
            raw = chunk[index * size:(index + 1) * size]
            stored, _, flags, lower, upper = _HEADER.unpack_from(raw)
            if stored != pgno or flags & (P_BRANCH | P_OVERFLOW | P_META | P_LEAF2) or \
                    not flags & P_LEAF or not PAGE_HEADER <= lower <= upper <= size:
                continue
            keys = (lower - PAGE_HEADER) >> 1
            for at in struct.unpack_from(f"<{keys}H", raw, PAGE_HEADER):
                if not upper <= at <= size - NODE_HEADER:
                    continue
                lo, hi, node_flags, ksize = _NODE.unpack_from(raw, at)
                key_end = at + NODE_HEADER + ksize
                dsize = lo | hi << 16
                if node_flags & ~F_BIGDATA or key_end > size:
                    continue
                key = raw[at + NODE_HEADER:key_end]
                if not node_flags:
                    if key_end + dsize <= size:
                        yield key, raw[key_end:key_end + dsize]
                    continue
                if key_end + 8 > size:
                    continue
                first = _U64.unpack_from(raw, key_end)[0]
                count = (dsize + PAGE_HEADER + size - 1) // size
                if first < 2 or first + count > pages:
                    continue
                value = os.pread(file._fd, dsize, first * size + PAGE_HEADER)
                if len(value) == dsize:
                    yield key, value
