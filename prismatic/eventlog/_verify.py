"""Checking an event log's file before LMDB touches it, and verifying it whole.

Both read ``data.mdb`` with ``pread`` through :mod:`._pages` (never LMDB, so a damaged file
cannot crash the checking process); :mod:`._salvage` builds on them.

* :func:`check_at_open` -- what every open does before LMDB maps the file: the meta pages and
  the file size (a truncated file), every branch page of every tree, and the leaves at
  both ends of each tree (the pages appends and retention rewrite), whose records must
  match their checksums; bounded so that an open costs a fraction of a second whatever the
  log's size. Raises EventLogFormatError naming the file and the recovery commands.
* :func:`verify_log` -- ``prismatic events verify``: every page of every tree, every record
  decoded, stored under its own seq and matching its checksum, every index entry well formed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator

import msgspec

from prismatic._errors import EventLogError, EventLogFormatError
from prismatic.eventlog._pages import (
    NOT_A_DB, LmdbFile, PageError, TreeWalk, free_list_pages, named_dbs, open_lmdb_file,
)
from prismatic.eventlog._record import EventRecord, checksum_ok, unpack_u64

__all__ = ["VerifyReport", "check_at_open", "hold_log", "verify_log"]

DATA_FILE = "data.mdb"
WRITER_LOCK_FILE = "writer.lock"
EDGE_LEAVES = 64
_DB_NAMES = (b"meta", b"events", b"by_time", b"by_topic", b"by_source")
_decode_record = msgspec.msgpack.Decoder(EventRecord).decode


def recovery_hint(log_dir: str) -> str:
    """The commands that recover a damaged log at ``log_dir`` (``<data dir>/eventlog``)."""
    data_dir = os.path.dirname(os.path.abspath(log_dir))
    return (f"check it with `prismatic --node {data_dir} events verify`, copy what is "
            f"readable with `prismatic --node {data_dir} events salvage --to NEWDIR`")


def damaged(log_dir: str, problem: str) -> EventLogFormatError:
    return EventLogFormatError(
        f"event log {os.path.join(log_dir, DATA_FILE)} is damaged: {problem}; nothing was "
        f"written to it; {recovery_hint(log_dir)}"
    )


def _walk_all(file: LmdbFile, edge_leaves: int | None,
              visits: dict[bytes, Callable[[bytes, bytes], None]]) -> dict[str, int]:
    """Walk the free list, the main DB and every named DB; pages read per tree kind."""
    seen: set[int] = set()
    freed = list(free_list_pages(file, seen))
    dbs, _ = named_dbs(file, seen)
    if set(dbs) != set(_DB_NAMES) or NOT_A_DB in dbs.values():
        shown = ", ".join(repr(k) for k in sorted(dbs)[:5])
        raise NotALogError(f"an LMDB environment holding {shown}")
    skipped = entries = 0
    for name, db in dbs.items():
        walk = TreeWalk(file, name.decode(), seen, edge_leaves=edge_leaves)
        walk.walk(db, visits.get(name, _ignore))
        skipped += walk.skipped
        if name == b"events":
            entries = walk.counts["entries"]
    for pgno in freed:
        if not 2 <= pgno <= file.meta.last_pgno:
            raise PageError(f"the free list holds page {pgno}, outside the file")
    # A freed page that a tree also uses would be handed out again and overwritten.
    reused = seen.intersection(freed)
    if reused:
        raise PageError(f"page {min(reused)} is both free and in use")
    return {"pages": len(seen), "skipped": skipped, "free": len(freed), "entries": entries}


def _check_sum(key: bytes, value: bytes) -> None:
    """At open: the records of the leaves read (those at both ends) match their checksum."""
    if checksum_ok(value) is False:
        seq = unpack_u64(key)[0] if len(key) == 8 else key.hex()
        raise PageError(f"record {seq} does not match its checksum")


class NotALogError(PageError):
    """A sound LMDB file, but not one of Prismatic's event logs."""


def _ignore(key: bytes, value: bytes) -> None:
    pass


def check_at_open(log_dir: str, *, structure: bool = True) -> None:
    """Raise EventLogFormatError (naming the file and the recovery commands) if the log at
    ``log_dir`` is truncated, or (``structure``) damaged where an open, an append or
    retention would read. ``structure=False`` checks only the meta pages and the size: all
    that is safe while another process writes the file."""
    path = os.path.join(log_dir, DATA_FILE)
    try:
        file = open_lmdb_file(path)
    except PageError as exc:
        raise damaged(log_dir, str(exc)) from None
    except OSError as exc:
        raise EventLogError(f"event log {path}: cannot read it: {exc.strerror}") from None
    try:
        if structure:
            _walk_all(file, EDGE_LEAVES, {b"events": _check_sum})
    except NotALogError as exc:
        raise EventLogFormatError(f"{log_dir}: not a Prismatic event log ({exc}); left "
                                  "untouched") from None
    except PageError as exc:
        raise damaged(log_dir, str(exc)) from None
    finally:
        file.close()


class VerifyReport(msgspec.Struct, frozen=True):
    """What :func:`verify_log` found; ``problem`` is None for a sound log."""

    path: str
    records: int
    first_seq: int | None
    last_seq: int | None
    pages: int
    problem: str | None


@contextlib.contextmanager
def hold_log(log_dir: str) -> Iterator[None]:
    """Hold the log's writer lock while it is read page by page: the file of a running
    writer changes under such a reader (and no writer may start meanwhile)."""
    path = os.path.join(log_dir, WRITER_LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield  # never written by Prismatic: nothing to exclude
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise EventLogError(f"event log {log_dir} is open for writing (is its node "
                                "running?): stop the node first") from None
        yield
    finally:
        os.close(fd)


def verify_log(log_dir: str) -> VerifyReport:
    """Check every page and every record of the log at ``log_dir`` (its writer stopped)."""
    path = os.path.join(log_dir, DATA_FILE)
    seqs: list[int] = []

    def record(key: bytes, value: bytes) -> None:
        if len(key) != 8:
            raise PageError(f"events key {key!r} is not a seq")
        seq = unpack_u64(key)[0]
        try:
            rec = _decode_record(value)
        except (ValueError, RecursionError) as exc:
            raise PageError(f"record {seq} does not decode: {exc}") from None
        if rec.seq != seq:
            raise PageError(f"record stored under seq {seq} says seq {rec.seq}")
        if checksum_ok(value) is False:
            raise PageError(f"record {seq} does not match its checksum")
        if not seqs:
            seqs.append(seq)
        seqs[1:] = [seq]

    def posting(key: bytes, value: bytes) -> None:
        if len(key) < 9 or key[-9:-8] != b"\x00" or len(value) < 12 or (len(value) - 8) % 4:
            raise PageError(f"index entry {key!r} is malformed")

    def by_time(key: bytes, value: bytes) -> None:
        if len(key) != 16 or len(value) != 8 or unpack_u64(value)[0] < unpack_u64(key[8:])[0]:
            raise PageError(f"time index entry {key!r} is malformed")

    problem = None
    pages = records = 0
    with hold_log(log_dir):
        try:
            file = open_lmdb_file(path)
        except PageError as exc:
            problem = str(exc)
        except OSError as exc:
            raise EventLogError(f"event log {path}: cannot read it: {exc.strerror}") from None
        else:
            try:
                walked = _walk_all(file, None, {b"events": record, b"by_topic": posting,
                                                b"by_source": posting, b"by_time": by_time})
                pages, records = walked["pages"], walked["entries"]
            except PageError as exc:
                problem = str(exc)
            finally:
                file.close()
    return VerifyReport(path, records, seqs[0] if seqs else None, seqs[-1] if seqs else None,
                        pages, problem)
