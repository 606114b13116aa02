"""Salvaging a damaged event log: every record that can still be read, into a fresh log.

``prismatic events salvage --to NEWDIR``. The damaged file is only read, page by page with
``pread`` (:mod:`._pages`), never mapped by LMDB. Records come first from the events tree,
skipping damaged subtrees; when any tree is damaged (or, truncated, its root is gone), every
leaf page of the file, live or freed, is searched too: a record never changes once written,
so any copy of a seq is that record, and records retention deleted stay deleted (below the
meta DB's ``deleted_through``, when it can be read). A kept record decodes, is stored
under its own seq and matches its checksum (if it has one). The new log keeps every seq,
gets its indexes rebuilt (one entry per record), and never reuses a seq the damaged log had
given out (``deleted_through`` covers a lost tail that the time index still knew of).
"""

from __future__ import annotations

import collections
import os

import msgspec

from prismatic._errors import EventLogError, EventLogFormatError
from prismatic.eventlog._pages import (
    NOT_A_DB, DbRecord, LmdbFile, PageError, RawPages, TreeWalk, named_dbs, open_lmdb_file,
    scan_leaf_entries,
)
from prismatic.eventlog._record import EventRecord, checksum_ok, pack_u64, unpack_u64
from prismatic.eventlog._verify import DATA_FILE, hold_log

__all__ = ["SalvageReport", "salvage_log"]

EventRecordEntry = tuple[bytes, bytes, EventRecord]
_ONE_OFFSET = bytes(4)  # a posting of one record: base seq + offset 0 (u32 LE)

_decode_record = msgspec.msgpack.Decoder(EventRecord).decode


class SalvageReport(msgspec.Struct, frozen=True):
    """What :func:`salvage_log` copied and what it could not."""

    source: str
    target: str
    node: str
    copied: int
    undecodable: int  # events entries that are no sound record (decode, seq, checksum)
    first_seq: int | None
    last_seq: int | None
    scanned: bool  # a tree was damaged: every leaf page of the file was searched too
    damage: list[str]


def _stored_meta(file: LmdbFile, dbs: dict[bytes, DbRecord]) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    meta = dbs.get(b"meta")
    if meta is not None:
        TreeWalk(file, "meta", set(), tolerant=True).walk(meta, found.__setitem__)
    return found


def _highest_indexed_seq(file: LmdbFile, dbs: dict[bytes, DbRecord]) -> int:
    """The highest seq the time index knows of: records lost from the end of a damaged log
    still took their seqs, which the salvaged log must never hand out again."""
    highest = 0

    def note(key: bytes, value: bytes) -> None:
        nonlocal highest
        if len(value) == 8:
            highest = max(highest, unpack_u64(value)[0])

    by_time = dbs.get(b"by_time")
    if by_time is not None:
        TreeWalk(file, "by_time", set(), tolerant=True).walk(by_time, note)
    return highest


def _read_records(file: LmdbFile, damage: list[str],
                  ) -> tuple[list[EventRecordEntry], int, dict[bytes, bytes]]:
    """The readable records (sorted, one per seq), how many entries were not, the meta DB."""
    dbs, main_damage = named_dbs(file, set(), tolerant=True)
    damage.extend(main_damage)
    meta = _stored_meta(file, dbs)
    records: dict[int, EventRecordEntry] = {}
    undecodable = 0

    def keep_from_tree(key: bytes, value: bytes) -> None:
        nonlocal undecodable
        try:
            rec = _decode_record(value)
        except (ValueError, RecursionError):
            undecodable += 1
            return
        if len(key) != 8 or unpack_u64(key)[0] != rec.seq or checksum_ok(value) is False:
            undecodable += 1
            return
        records[rec.seq] = (key, value, rec)

    events = dbs.get(b"events")
    if events is not None and events is not NOT_A_DB:
        walk = TreeWalk(file, "events", set(), tolerant=True)
        walk.walk(events, keep_from_tree)
        damage.extend(walk.damage)
    else:
        damage.append("the events DB cannot be found")
    if damage:
        floor = _u64_or_zero(meta.get(b"deleted_through", b""))
        _scan_records(file, records, floor)
    meta[b"highest indexed"] = pack_u64(_highest_indexed_seq(file, dbs))
    return [records[seq] for seq in sorted(records)], undecodable, meta


def _scan_records(file: LmdbFile | RawPages, records: dict[int, EventRecordEntry],
                  floor: int) -> list[EventRecordEntry]:
    """Add the records of every leaf page (above seq ``floor``) that ``records`` lacks; all
    of them, sorted. Other DBs' leaves do not decode as records: they are not counted."""
    for key, value in scan_leaf_entries(file):
        if len(key) != 8 or unpack_u64(key)[0] <= floor or unpack_u64(key)[0] in records:
            continue
        try:
            rec = _decode_record(value)
        except (ValueError, RecursionError):
            continue
        if unpack_u64(key)[0] == rec.seq and checksum_ok(value) is not False:
            records[rec.seq] = (key, value, rec)
    return [records[seq] for seq in sorted(records)]


def _u64_or_zero(raw: bytes) -> int:
    return unpack_u64(raw)[0] if len(raw) == 8 else 0


def salvage_log(log_dir: str, target: str, *, node: str | None = None) -> SalvageReport:
    """Copy every readable record of the log at ``log_dir`` (its writer stopped) into a new
    log at ``target`` (missing or an empty directory), keeping seqs; the indexes rebuilt."""
    import lmdb  # noqa: PLC0415 - only the new log is opened with LMDB

    from prismatic.eventlog._store import open_store, release_store  # noqa: PLC0415

    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise EventLogError(f"salvage target {target} exists and is not an empty directory")
    path = os.path.join(log_dir, DATA_FILE)
    damage: list[str] = []
    with hold_log(log_dir):
        try:
            file: LmdbFile | RawPages = open_lmdb_file(path, truncated_ok=True)
        except PageError as exc:  # the meta pages are lost: search every page
            damage.append(str(exc))
            file = RawPages(path)
        except OSError as exc:
            raise EventLogFormatError(f"event log {path}: nothing can be salvaged: "
                                      f"{exc.strerror}") from None
        try:
            if isinstance(file, LmdbFile):
                records, undecodable, meta = _read_records(file, damage)
            else:
                records, undecodable, meta = _scan_records(file, {}, 0), 0, {}
        finally:
            file.close()
    stored = meta.get(b"node", b"").decode(errors="replace")
    if not (node or stored):  # the meta DB is lost: every record names its node
        names = collections.Counter(r[2].node for r in records)
        stored = names.most_common(1)[0][0] if names else "unknown"
    node = node or stored
    highest = max(_u64_or_zero(meta.get(b"highest indexed", b"")),
                  _u64_or_zero(meta.get(b"deleted_through", b"")))
    store = open_store(target, node=node, readonly=False,
                       map_size=max(64 << 20, 4 * file.size))
    try:
        with store.env.begin(write=True) as txn:
            put = txn.put
            for key, value, rec in records:
                put(key, value, db=store.events, append=True)
                put(pack_u64(rec.wall_ns) + key, key, db=store.by_time)
                put(rec.topic.encode() + b"\x00" + key, key + _ONE_OFFSET, db=store.by_topic)
                put(rec.source.encode() + b"\x00" + key, key + _ONE_OFFSET, db=store.by_source)
            # last_seq is max(newest record, deleted_through): no seq is ever reused.
            newest = records[-1][2].seq if records else 0
            if highest > newest:
                put(b"deleted_through", pack_u64(highest), db=store.meta)
            elif records and records[0][2].seq > 1:
                put(b"deleted_through", pack_u64(records[0][2].seq - 1), db=store.meta)
    except lmdb.Error as exc:
        raise EventLogError(f"salvage into {target} failed: {exc}") from exc
    finally:
        release_store(store)
    return SalvageReport(
        path, target, node, len(records), undecodable,
        records[0][2].seq if records else None, records[-1][2].seq if records else None,
        bool(damage), damage,
    )  # fmt: skip
