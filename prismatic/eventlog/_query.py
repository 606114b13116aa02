"""Queries, replay and tailing over an event log store (works on read-only handles too).

Protocol: every query is planned once, then read in short read transactions (chunks), so no
transaction outlives a chunk: a slow consumer never pins old pages nor blocks map growth.
Records come back in seq order. Filters are always re-checked on the decoded record, so an
index only narrows the candidates; it never decides membership on its own.

Plans, first that applies: a topic pattern with a literal prefix range-scans ``by_topic``
from that prefix; else a source scans ``by_source``; else a time bound scans ``by_time``;
else the ``events`` DB is scanned from ``start_seq``. Index plans collect the candidate seqs
(then sort them), so their memory is proportional to the number of candidates.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from prismatic._errors import EventLogFormatError
from prismatic._topics import PatternKind, TopicPattern, compile_pattern
from prismatic.eventlog._record import (
    NUL,
    EventRecord,
    RawEventRecord,
    decode_posting,
    pack_u64,
    posting_last_seq,
    unpack_u64,
)
from prismatic.eventlog._store import LogStore

__all__ = ["EventFilter", "first_seq", "follow_records", "last_seq", "query_chunks",
           "query_records"]

_decode_record = msgspec.msgpack.Decoder(EventRecord).decode
_decode_raw_record = msgspec.msgpack.Decoder(RawEventRecord).decode
_FIRST_CHUNK = 256
_MAX_CHUNK = 8192
_FETCH_CHUNK = 1024


class EventFilter(msgspec.Struct, frozen=True):
    """Query filters; ``None`` means unbounded. Bounds are inclusive."""

    start_seq: int | None = None
    end_seq: int | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    pattern: TopicPattern | None = None
    source: str | None = None

    def accepts(self, record: EventRecord) -> bool:
        if self.start_seq is not None and record.seq < self.start_seq:
            return False
        if self.end_seq is not None and record.seq > self.end_seq:
            return False
        if self.since_ns is not None and record.wall_ns < self.since_ns:
            return False
        if self.until_ns is not None and record.wall_ns > self.until_ns:
            return False
        if self.pattern is not None and not self.pattern.matches(record.topic):
            return False
        return self.source is None or record.source == self.source

    def in_seq_range(self, seq: int) -> bool:
        return (self.start_seq is None or seq >= self.start_seq) and (
            self.end_seq is None or seq <= self.end_seq
        )


def make_filter(
    start_seq: int | None = None,
    end_seq: int | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
    pattern: str | TopicPattern | None = None,
    source: str | None = None,
) -> EventFilter:
    if isinstance(pattern, str):
        pattern = compile_pattern(pattern)
    return EventFilter(start_seq, end_seq, since_ns, until_ns, pattern, source)


def _decode(store: LogStore, value: bytes, decode: Any = _decode_record) -> EventRecord:
    try:
        return decode(value)
    except (ValueError, RecursionError) as exc:  # DecodeError, bad UTF-8, bottomless
        raise EventLogFormatError(
            f"event log {store.path} holds a corrupted record: {exc}"
        ) from exc


def _decode_all(store: LogStore, values: list[Any], raw: bool = False) -> list[Any]:
    """Records (RawEventRecords if ``raw``) of LMDB values (bytes)."""
    decode: Callable[[Any], Any] = _decode_raw_record if raw else _decode_record
    try:
        return list(map(decode, values))
    except (ValueError, RecursionError):
        return [_decode(store, value, decode) for value in values]  # re-raises with the path


def last_seq(store: LogStore) -> int:
    """Highest seq ever committed (0 for a new log), even if retention deleted it."""
    with store.read_txn() as txn:
        cursor = txn.cursor(store.events)
        newest = unpack_u64(cursor.key())[0] if cursor.last() else 0
        deleted = txn.get(b"deleted_through", db=store.meta)
    return max(newest, unpack_u64(deleted)[0] if deleted else 0)


def first_seq(store: LogStore) -> int | None:
    """Lowest seq still stored, or None if the log holds no record."""
    with store.read_txn() as txn:
        cursor = txn.cursor(store.events)
        return unpack_u64(cursor.key())[0] if cursor.first() else None


def _scan_events(store: LogStore, flt: EventFilter, raw: bool = False) -> Iterator[EventRecord]:
    return itertools.chain.from_iterable(_scan_chunks(store, flt, raw))


def _scan_chunks(store: LogStore, flt: EventFilter, raw: bool = False) -> Iterator[list[Any]]:
    """The ``events`` DB from ``flt.start_seq`` on, a chunk (a list, never empty) per read
    transaction."""
    next_seq = flt.start_seq or 1
    chunk = _FIRST_CHUNK
    plain = flt == EventFilter(start_seq=flt.start_seq, end_seq=flt.end_seq)
    while True:
        with store.read_txn() as txn:
            cursor = txn.cursor(store.events)
            if not cursor.set_range(pack_u64(next_seq)):
                return
            values = list(itertools.islice(cursor.iternext(keys=False), chunk))
        records = _decode_all(store, values, raw)
        if not records:
            return
        next_seq = records[-1].seq + 1
        if flt.end_seq is not None and next_seq > flt.end_seq + 1:
            records = [r for r in records if r.seq <= flt.end_seq]
            next_seq = -1
        if not plain:
            records = list(filter(flt.accepts, records))
        if records:
            yield records
        if next_seq < 0 or len(values) < chunk:
            return
        chunk = min(chunk * 4, _MAX_CHUNK)


def _posting_seqs(
    store: LogStore, db: Any, prefix: bytes, flt: EventFilter, name_ok: Callable[[bytes], bool]
) -> list[int]:
    seqs: list[int] = []
    with store.read_txn() as txn:
        cursor: Any = txn.cursor(db)  # yields bytes: the store's transactions copy values
        if not cursor.set_range(prefix):
            return seqs
        for key, value in cursor:
            if not key.startswith(prefix):
                break
            if not name_ok(key[:-9]):
                continue
            if flt.end_seq is not None and unpack_u64(key[-8:])[0] > flt.end_seq:
                continue
            if flt.start_seq is not None and posting_last_seq(value) < flt.start_seq:
                continue
            seqs.extend(decode_posting(value))
    return seqs


def _time_seqs(store: LogStore, flt: EventFilter) -> list[int]:
    seqs: list[int] = []
    with store.read_txn() as txn:
        cursor = txn.cursor(store.by_time)
        if not cursor.set_range(pack_u64(flt.since_ns or 0)):
            return seqs
        for key, value in cursor:
            if flt.until_ns is not None and unpack_u64(key[:8])[0] > flt.until_ns:
                break
            low = unpack_u64(key[8:])[0]
            high = unpack_u64(value)[0]
            if flt.start_seq is not None:
                low = max(low, flt.start_seq)
            if flt.end_seq is not None:
                high = min(high, flt.end_seq)
            seqs.extend(range(low, high + 1))
    return seqs


def _fetch(store: LogStore, seqs: list[int], flt: EventFilter,
           raw: bool = False) -> Iterator[list[Any]]:
    for at in range(0, len(seqs), _FETCH_CHUNK):
        with store.read_txn() as txn:
            get = txn.get
            events = store.events
            # A candidate may have been deleted by retention since planning: skip it.
            chunk = seqs[at : at + _FETCH_CHUNK]
            values = [v for v in (get(pack_u64(s), db=events) for s in chunk) if v]
        records = list(filter(flt.accepts, _decode_all(store, values, raw)))
        if records:
            yield records


def _candidate_seqs(store: LogStore, flt: EventFilter) -> list[int] | None:
    pattern = flt.pattern
    if pattern is not None and pattern.literal_prefix:
        exact = pattern.kind is PatternKind.EXACT
        prefix = pattern.pattern.encode() + NUL if exact else pattern.literal_prefix.encode()
        verdicts: dict[bytes, bool] = {}

        def topic_ok(name: bytes) -> bool:
            verdict = verdicts.get(name)
            if verdict is None:
                verdict = verdicts[name] = pattern.matches(name.decode())
            return verdict

        return _posting_seqs(store, store.by_topic, prefix, flt, topic_ok)
    if flt.source is not None:
        prefix = flt.source.encode() + NUL
        return _posting_seqs(store, store.by_source, prefix, flt, lambda name: True)
    if flt.since_ns is not None or flt.until_ns is not None:
        return _time_seqs(store, flt)
    return None


def query_chunks(store: LogStore, flt: EventFilter, limit: int | None = None,
                 raw_payloads: bool = False) -> Iterator[list[Any]]:
    """Records accepted by ``flt``, in seq order, at most ``limit`` of them (as
    :class:`RawEventRecord` if ``raw_payloads``), in lists (one per read transaction, never
    empty): what replay walks, without a generator step per record."""
    seqs = _candidate_seqs(store, flt)
    if seqs is None:
        chunks = _scan_chunks(store, flt, raw_payloads)
    else:
        seqs.sort()
        chunks = _fetch(store, seqs, flt, raw_payloads)
    return chunks if limit is None else _limited(chunks, limit)


def _limited(chunks: Iterator[list[Any]], limit: int) -> Iterator[list[Any]]:
    left = limit
    for records in chunks:
        if left <= 0:
            return
        if len(records) > left:
            records = records[:left]
        left -= len(records)
        yield records


def query_records(store: LogStore, flt: EventFilter, limit: int | None = None,
                  raw_payloads: bool = False) -> Iterator[EventRecord]:
    """Records accepted by ``flt``, in seq order, at most ``limit`` of them (as
    :class:`RawEventRecord` if ``raw_payloads``)."""
    return itertools.chain.from_iterable(query_chunks(store, flt, limit, raw_payloads))


def follow_records(
    store: LogStore,
    from_seq: int,
    *,
    poll_interval_s: float,
    stop: threading.Event | None,
) -> Iterator[EventRecord]:
    """Yield records with seq >= ``from_seq`` as they are committed, until ``stop`` is set.

    In the writer's process it wakes on each commit; elsewhere it polls every
    ``poll_interval_s``.
    """
    next_seq = max(from_seq, 1)
    while stop is None or not stop.is_set():
        progressed = False
        for record in _scan_events(store, EventFilter(start_seq=next_seq)):
            next_seq = record.seq + 1
            progressed = True
            yield record
            if stop is not None and stop.is_set():
                return
        if progressed:
            continue
        if store.writable:
            with store.commit_cond:
                if store.committed_seq < next_seq:
                    store.commit_cond.wait(poll_interval_s)
        elif stop is not None:
            stop.wait(poll_interval_s)
        else:
            threading.Event().wait(poll_interval_s)
