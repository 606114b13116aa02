"""Retention of the event log: deleting the oldest records by age or by size.

Runs on the log's writer thread between commits (:meth:`GroupCommit._enforce_retention`), a
bounded batch per write transaction, so writers never wait behind a long deletion. A record
leaves together with its entries in the time, topic and source indexes; ``deleted_through``
in the meta table keeps ``last_seq`` right even when every record is gone.
"""

from __future__ import annotations

import time

import lmdb
import msgspec

from prismatic.eventlog._record import NUL, RecordHead, pack_u64, posting_last_seq, unpack_u64
from prismatic.eventlog._store import LogStore

__all__ = ["RETENTION_BATCH", "retention_pass", "used_bytes"]

RETENTION_BATCH = 4096
_decode_head = msgspec.msgpack.Decoder(RecordHead).decode


def used_bytes(store: LogStore, txn: lmdb.Transaction) -> int:
    """Bytes of pages the log's tables use (what ``max_bytes`` bounds)."""
    total = 0
    for db in (store.events, store.by_time, store.by_topic, store.by_source):
        stat = txn.stat(db)
        pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        total += stat["psize"] * pages
    return total


def retention_pass(store: LogStore, max_age_s: float | None, max_bytes: int | None) -> int:
    """Delete the oldest records (at most :data:`RETENTION_BATCH`) older than ``max_age_s``
    or beyond ``max_bytes``, with their index entries, in one write transaction; return
    how many."""
    cutoff = None if max_age_s is None else time.time_ns() - int(max_age_s * 1e9)
    with store.env.begin(write=True) as txn:
        excess = -1 if max_bytes is None else used_bytes(store, txn) - max_bytes
        cursor = txn.cursor(store.events)
        heads: list[RecordHead] = []
        if cursor.first():
            while len(heads) < RETENTION_BATCH:
                value = cursor.value()
                if not value:
                    break
                head = _decode_head(value)
                if not ((cutoff is not None and head.wall_ns < cutoff) or excess > 0):
                    break
                excess -= len(value) + 64  # rough share of the record in the indexes
                heads.append(head)
                cursor.delete()
        if not heads:
            return 0
        new_first = heads[-1].seq + 1
        for db, names in (
            (store.by_topic, {h.topic for h in heads}),
            (store.by_source, {h.source for h in heads}),
        ):
            index = txn.cursor(db)
            for name in names:
                prefix = name.encode() + NUL
                if not index.set_range(prefix):
                    continue
                while (key := index.key()).startswith(prefix):
                    if unpack_u64(key[-8:])[0] >= new_first:
                        break
                    if posting_last_seq(index.value()) < new_first:
                        index.delete()
                    elif not index.next():
                        break
        by_time = txn.cursor(store.by_time)
        for wall in {h.wall_ns for h in heads}:
            prefix = pack_u64(wall)
            if not by_time.set_range(prefix):
                continue
            while by_time.key()[:8] == prefix:
                if unpack_u64(by_time.value())[0] < new_first:
                    by_time.delete()
                elif not by_time.next():
                    break
        # Never lower it: a salvaged log records there the seqs its lost tail had taken.
        stored = txn.get(b"deleted_through", db=store.meta)
        if not stored or unpack_u64(stored)[0] < new_first - 1:
            txn.put(b"deleted_through", pack_u64(new_first - 1), db=store.meta)
    return len(heads)
