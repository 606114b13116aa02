"""The event log's writer thread: group commit and retention.

Emitting threads queue encoded calls (:class:`QueuedCall`); the one writer thread of a
writable log takes everything queued, up to ``max_batch`` records, waiting at most
``commit_interval_s`` for more once it has some, and commits the batch in one synced LMDB
write transaction (growing the map when it is full). Only then are the calls' futures
resolved with their seqs: the acknowledgement. A batch that fails resolves every future of
it with the error (:class:`~prismatic._errors.EventLogFullError` on a full disk) and the
writer goes on. Between batches, and every ``_RETENTION_INTERVAL_S`` when idle, it deletes
what retention says is due (:mod:`._retention`).

:class:`GroupCommit` is a base of :class:`~._log.EventLog`: it works on the log's queue,
store and counters (declared in its body) and keeps no state of its own.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from concurrent.futures import Future
from typing import Any, NamedTuple

import lmdb

from prismatic._errors import EventLogError, EventLogFullError
from prismatic.eventlog._record import RECORD_HEAD, pack_u64, unpack_u64
from prismatic.eventlog._retention import RETENTION_BATCH, retention_pass
from prismatic.eventlog._store import LogStore

__all__ = ["EventLogCounters", "GroupCommit", "LAZY_COMMIT_S", "QueuedCall"]

log = logging.getLogger("prismatic.eventlog._log")  # the log's lines name the log, not its parts

_RETENTION_INTERVAL_S = 0.05
_RETENTION_RETRY_S = 10.0


class EventLogCounters:
    """Plain monotonically increasing counters, exported to Prometheus by the node."""

    __slots__ = (
        "appends", "commits", "bytes_written", "errors", "full_errors",
        "retention_deleted", "map_growths",
    )  # fmt: skip

    def __init__(self) -> None:
        self.appends = 0
        self.commits = 0
        self.bytes_written = 0
        self.errors = 0
        self.full_errors = 0
        self.retention_deleted = 0
        self.map_growths = 0


LAZY_COMMIT_S = 0.02  # the longest a lazy submit waits for company (see ._log's doc)


class QueuedCall(NamedTuple):
    """One submit call's encoded records; postings are (name + NUL, first offset, offsets)."""

    size: int  # records (not ``count``: a tuple's method)
    wall_be: bytes
    bodies: list[bytes]
    topic_postings: list[tuple[bytes, int, bytes]]
    source_postings: list[tuple[bytes, int, bytes]]
    future: Future[Any]
    single: bool
    lazy_until: float = 0.0  # a lazy submit: monotonic time it waits for company until


class GroupCommit:
    """The writer thread's side of an :class:`~._log.EventLog` (see the module's docstring)."""

    path: str
    max_age_s: float | None
    max_bytes: int | None
    counters: EventLogCounters
    _store: LogStore
    _commit_interval_s: float
    _max_batch: int
    _queue: collections.deque[QueuedCall]
    _inflight_wall: bytes | None
    _queued: int
    _urgent: int
    _wake_at: float
    _lazy_wait: bool
    _queue_cond: threading.Condition
    _closing: bool
    _next_seq: int
    _next_retention_at: float

    def lag_seconds(self) -> float:
        """How long the oldest event submitted but not yet durable has waited (0: none)."""
        oldest = self._inflight_wall
        if oldest is None:
            with self._queue_cond:
                oldest = self._queue[0].wall_be if self._queue else None
        if oldest is None:
            return 0.0
        return max(0.0, (time.time_ns() - unpack_u64(oldest)[0]) / 1e9)

    def _take_batch(self) -> list[QueuedCall] | None:
        """Block until there is work; None once closing and drained."""
        retention = self.max_age_s is not None or self.max_bytes is not None
        with self._queue_cond:
            while not self._queue:
                if self._closing:
                    return None
                self._wake_at = 1
                self._queue_cond.wait(_RETENTION_INTERVAL_S if retention else None)
                if retention and not self._queue:
                    self._wake_at = math.inf
                    return []
            if self._queued < self._max_batch and self._commit_interval_s > 0 and not self._closing:
                self._wake_at = self._max_batch
                self._queue_cond.wait(self._commit_interval_s)
            self._wait_for_company()
            self._wake_at = math.inf
            batch = []
            taken = 0
            while self._queue and taken < self._max_batch:
                call = self._queue.popleft()
                taken += call.size
                if not call.lazy_until:
                    self._urgent -= 1
                batch.append(call)
            self._queued -= taken
        return [call for call in batch if call.future.set_running_or_notify_cancel()]

    def _wait_for_company(self) -> None:
        """With the queue lock held: while only lazy calls are queued, wait until the oldest
        one's time is up, the batch is full, or any other call comes."""
        self._wake_at = self._max_batch
        self._lazy_wait = True
        try:
            while self._queue and not self._urgent and not self._closing \
                    and self._queued < self._max_batch:
                left = self._queue[0].lazy_until - time.monotonic()
                if left <= 0:
                    return
                self._queue_cond.wait(left)
        finally:
            self._lazy_wait = False

    def _run_writer(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch:
                self._inflight_wall = batch[0].wall_be
                try:
                    self._commit_batch(batch)
                except Exception as exc:  # the writer must survive anything
                    self.counters.errors += 1
                    log.exception("event log %s: unexpected writer failure", self.path)
                    error = EventLogError(f"event log {self.path}: write failed: {exc!r}")
                    for call in batch:
                        if not call.future.done():
                            call.future.set_exception(error)
                self._inflight_wall = None
            try:
                self._enforce_retention()
            except Exception:
                self.counters.errors += 1
                log.exception("event log %s: retention pass failed", self.path)

    def _commit_batch(self, batch: list[QueuedCall]) -> None:
        seq = self._next_seq
        events_items: list[tuple[bytes, bytes]] = []
        time_items = []
        topic_items = []
        source_items = []
        firsts = []
        for call in batch:
            first = seq
            seq += call.size
            keys = list(map(pack_u64, range(first, seq)))
            values = [RECORD_HEAD + k + b for k, b in zip(keys, call.bodies, strict=True)]
            events_items.extend(zip(keys, values, strict=True))
            time_items.append((call.wall_be + keys[0], keys[-1]))
            base = keys[0]
            for name, at, offsets in call.topic_postings:
                topic_items.append((name + keys[at], base + offsets))
            for name, at, offsets in call.source_postings:
                source_items.append((name + keys[at], base + offsets))
            firsts.append(first)
        time_items.sort()
        topic_items.sort()
        source_items.sort()
        try:
            self._write_with_growth(events_items, time_items, topic_items, source_items)
        except (lmdb.Error, EventLogError) as exc:
            count = seq - self._next_seq
            if isinstance(exc, EventLogError):  # a seq collision: says all there is
                error: EventLogError = exc
            elif self._disk_is_full(exc, sum(len(v) for _, v in events_items)):
                self.counters.full_errors += 1
                error = EventLogFullError(
                    f"event log {self.path}: disk full, {count} events not acknowledged: {exc}"
                )
            else:
                error = EventLogError(
                    f"event log {self.path}: commit of {count} events failed: {exc}"
                )
            self.counters.errors += 1
            log.error("%s", error)
            for call in batch:
                call.future.set_exception(error)
            return
        self._next_seq = seq
        counters = self.counters
        counters.appends += seq - firsts[0]
        counters.commits += 1
        counters.bytes_written += sum(len(v) for _, v in events_items)
        store = self._store
        with store.commit_cond:
            store.committed_seq = seq - 1
            store.commit_cond.notify_all()
        for call, first in zip(batch, firsts, strict=True):
            call.future.set_result(first if call.single else list(range(first, first + call.size)))

    def _disk_is_full(self, exc: lmdb.Error, batch_bytes: int) -> bool:
        """ENOSPC, or an I/O error (LMDB reports a short write as EIO) on a full disk."""
        if isinstance(exc, lmdb.DiskError) or "No space left" in str(exc):
            return True
        try:
            fs = os.statvfs(self.path)
        except OSError:
            return False
        return fs.f_bavail * fs.f_frsize < max(1 << 20, 4 * batch_bytes)

    def _write_with_growth(self, events_items: list, time_items: list, topic_items: list,
                           source_items: list) -> None:
        store = self._store
        while True:
            txn = store.env.begin(write=True)
            try:
                consumed, added = txn.cursor(store.events).putmulti(events_items, append=True)
                if added != len(events_items):
                    raise EventLogError(
                        f"event log {self.path}: seq {self._next_seq} collides with a stored "
                        "record (is another process writing this log?)"
                    )
                txn.cursor(store.by_time).putmulti(time_items)
                txn.cursor(store.by_topic).putmulti(topic_items)
                txn.cursor(store.by_source).putmulti(source_items)
                txn.commit()
                return
            except lmdb.MapFullError:
                txn.abort()
                self._grow_map()
            except BaseException:
                txn.abort()
                raise

    def _grow_map(self) -> None:
        old = self._store.env.info()["map_size"]
        self._store.grow_map(old * 2)
        self.counters.map_growths += 1
        log.info("event log %s: map size grown from %d to %d bytes", self.path, old, old * 2)

    def _enforce_retention(self) -> None:
        if self.max_age_s is None and self.max_bytes is None:
            return
        now = time.monotonic()
        if now < self._next_retention_at:
            return
        self._next_retention_at = now + _RETENTION_INTERVAL_S
        try:
            deleted = retention_pass(self._store, self.max_age_s, self.max_bytes)
            self.counters.retention_deleted += deleted
        except lmdb.MapFullError:
            self._grow_map()
            return
        except Exception as exc:  # noqa: BLE001 - counted and logged, and retried later
            self.counters.errors += 1
            if isinstance(exc, lmdb.DiskError):
                self.counters.full_errors += 1
            # Not every 50 ms: a failure that persists (a corrupted oldest record) would
            # flood the log.
            self._next_retention_at = now + _RETENTION_RETRY_S
            log.error("event log %s: retention pass failed (next try in %.0f s): %r",
                      self.path, _RETENTION_RETRY_S, exc)
            return
        if deleted >= RETENTION_BATCH:
            self._next_retention_at = now  # more is due: continue after the next batch

