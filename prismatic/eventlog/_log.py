"""The durable per-node event log: group-committed appends, queries, replay, retention.

Protocol: only the node process writes (``open_event_log(path, node=...)``); other
processes open the same directory with ``readonly=True`` to query, replay and follow while
it runs. Emitting threads encode events and queue them; one writer thread per log takes
everything queued (up to ``max_batch`` records, gathering for at most ``commit_interval_s``)
and commits it in one synced LMDB write transaction. A submit's future is resolved with its
seq only after that transaction is synced: that is the acknowledgement, and an acknowledged
event is never lost. A *lazy* submit (``lazy=True``: nobody waits for its acknowledgement,
such as the lifecycle events the node logs) may wait up to ``LAZY_COMMIT_S`` for company
while nothing else is queued, so a burst of them (a supervisor starting 1,000 children, one
every few ms) is committed in a few transactions rather than one synced commit each; any
other submit ends the wait at once. Seqs start at 1, are contiguous in commit order and
never reused (a failed batch's seqs were never visible, and retention records the highest
deleted seq).

Open the log after any ``fork()``, never before: LMDB environments, the writer thread and
the writer lock do not survive a fork (a handle used in another pid raises EventLogError).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple, cast

import lmdb
import msgspec

from prismatic._errors import EventLogError, EventLogFullError
from prismatic._topics import MAX_TOPIC_LENGTH, TopicPattern, validate_topic
from prismatic.eventlog._query import (
    first_seq,
    follow_records,
    last_seq,
    make_filter,
    query_chunks,
    query_records,
)
from prismatic.eventlog._record import (
    NUL,
    RECORD_HEAD,
    SINGLE_OFFSET,
    EventDraft,
    EventLogStats,
    EventRecord,
    offsets_bytes,
    pack_u64,
    seal_body,
    unpack_u64,
)
from prismatic.eventlog._retention import RETENTION_BATCH, retention_pass, used_bytes
from prismatic.eventlog._store import LogStore, open_store, release_store

__all__ = ["EventLog", "EventLogCounters", "open_event_log"]

log = logging.getLogger(__name__)

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


LAZY_COMMIT_S = 0.02  # the longest a lazy submit waits for company (see the module doc)


class _QueuedCall(NamedTuple):
    """One submit call's encoded records; postings are (name + NUL, first offset, offsets)."""

    size: int  # records (not ``count``: a tuple's method)
    wall_be: bytes
    bodies: list[bytes]
    topic_postings: list[tuple[bytes, int, bytes]]
    source_postings: list[tuple[bytes, int, bytes]]
    future: Future[Any]
    single: bool
    lazy_until: float = 0.0  # a lazy submit: monotonic time it waits for company until


class EventLog:
    """An open event log (writer or read-only). Thread-safe; see the module docstring."""

    def __init__(
        self,
        store: LogStore,
        *,
        readonly: bool,
        max_age_s: float | None,
        max_bytes: int | None,
        commit_interval_s: float,
        max_batch: int,
    ) -> None:
        self._store = store
        self.path = store.path
        self.node = store.node
        self.readonly = readonly
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.counters = EventLogCounters()
        self._commit_interval_s = commit_interval_s
        self._max_batch = max_batch
        self._encode = msgspec.msgpack.Encoder().encode
        self._topic_keys: dict[str, bytes] = {}
        self._source_keys: dict[str, bytes] = {}
        self._queue: collections.deque[_QueuedCall] = collections.deque()
        self._inflight_wall: bytes | None = None  # the batch being committed: its oldest
        self._queued = 0
        self._urgent = 0  # queued calls that are not lazy
        self._wake_at: float = math.inf
        self._lazy_wait = False  # the writer waits for company of lazy calls only
        self._queue_cond = threading.Condition(threading.Lock())
        self._closing = False
        self._closed = False
        self._next_seq = last_seq(store) + 1
        self._next_retention_at = 0.0
        self._writer: threading.Thread | None = None
        if not readonly:
            store.committed_seq = self._next_seq - 1
            self._writer = threading.Thread(
                target=self._run_writer, name=f"eventlog-writer:{self.path}", daemon=True
            )
            self._writer.start()

    # ------------------------------------------------------------------ appending

    def _check_writable(self) -> None:
        if self.readonly:
            raise EventLogError(f"event log {self.path} is open read-only")
        if self._closing:
            raise EventLogError(f"event log {self.path} is closed")
        self._store.check_pid()

    def _name_key(self, cache: dict[str, bytes], field: str, name: object) -> bytes:
        if field == "topic":
            validate_topic(name)  # type: ignore[arg-type]
        elif (not isinstance(name, str) or not name or "\x00" in name
              or len(name) > MAX_TOPIC_LENGTH):
            raise EventLogError(
                f"invalid {field}={name!r}: must be a non-empty str without NUL, "
                f"at most {MAX_TOPIC_LENGTH} characters"
            )
        if len(cache) > 65536:
            cache.clear()  # bounded: names are meant to be few
        text = cast(str, name)  # checked above (validate_topic checks topics)
        key = cache[text] = text.encode() + NUL
        return key

    def _encode_body(
        self, wall: int, mono: int, source: str, topic: str, corr: object, payload: object
    ) -> bytes:
        if corr is not None and type(corr) is not str:
            raise EventLogError(f"invalid correlation_id={corr!r}: must be a str or None")
        try:
            # Strip the 7-array header: the writer prepends RECORD_HEAD + seq.
            return seal_body(
                self._encode((wall, mono, self.node, source, topic, corr, payload))[1:]
            )
        except (TypeError, msgspec.EncodeError) as exc:
            raise EventLogError(
                f"payload of event topic={topic!r} is not msgspec-encodable: {exc}"
            ) from exc

    def submit(
        self, topic: str, payload: Any, *, source: str, correlation_id: str | None = None,
        lazy: bool = False,
    ) -> Future[int]:
        """Queue one event; the future resolves to its seq once it is durable. ``lazy``: it
        may wait up to ``LAZY_COMMIT_S`` for company (see the module doc)."""
        self._check_writable()
        topic_key = self._topic_keys.get(topic) or self._name_key(self._topic_keys, "topic", topic)
        source_key = self._source_keys.get(source) or self._name_key(
            self._source_keys, "source", source
        )
        wall = time.time_ns()
        body = self._encode_body(wall, time.monotonic_ns(), source, topic, correlation_id, payload)
        future: Future[int] = Future()
        self._enqueue(
            _QueuedCall(
                1, pack_u64(wall), [body],
                [(topic_key, 0, SINGLE_OFFSET)], [(source_key, 0, SINGLE_OFFSET)],
                future, True, time.monotonic() + LAZY_COMMIT_S if lazy else 0.0,
            )  # fmt: skip
        )
        return future

    def submit_many(self, drafts: Sequence[EventDraft]) -> Future[list[int]]:
        """Queue events that share one timestamp; the future resolves to their seqs.

        All-or-nothing: an invalid draft raises here and nothing is queued.
        """
        self._check_writable()
        future: Future[list[int]] = Future()
        if not drafts:
            future.set_result([])
            return future
        wall = time.time_ns()
        mono = time.monotonic_ns()
        topic_keys, source_keys = self._topic_keys, self._source_keys
        topics: dict[bytes, list[int]] = {}
        sources: dict[bytes, list[int]] = {}
        bodies = []
        encode_body = self._encode_body
        for index, draft in enumerate(drafts):
            topic, source = draft.topic, draft.source
            key = topic_keys.get(topic) or self._name_key(topic_keys, "topic", topic)
            group = topics.get(key)
            if group is None:
                topics[key] = [index]
            else:
                group.append(index)
            key = source_keys.get(source) or self._name_key(source_keys, "source", source)
            group = sources.get(key)
            if group is None:
                sources[key] = [index]
            else:
                group.append(index)
            bodies.append(
                encode_body(wall, mono, source, topic, draft.correlation_id, draft.payload)
            )
        self._enqueue(
            _QueuedCall(
                len(bodies), pack_u64(wall), bodies,
                [(k, v[0], offsets_bytes(v)) for k, v in topics.items()],
                [(k, v[0], offsets_bytes(v)) for k, v in sources.items()],
                future, False,
            )  # fmt: skip
        )
        return future

    def append(
        self, topic: str, payload: Any, *, source: str, correlation_id: str | None = None
    ) -> int:
        """Append one event and block until it is durable; return its seq."""
        return self.submit(topic, payload, source=source, correlation_id=correlation_id).result()

    def _enqueue(self, call: _QueuedCall) -> None:
        with self._queue_cond:
            if self._closing:
                raise EventLogError(f"event log {self.path} is closed")
            self._queue.append(call)
            self._queued += call.size
            if not call.lazy_until:
                self._urgent += 1
            if self._queued >= self._wake_at or (self._lazy_wait and not call.lazy_until):
                self._queue_cond.notify()

    # ------------------------------------------------------------------ writer thread

    def lag_seconds(self) -> float:
        """How long the oldest event submitted but not yet durable has waited (0: none)."""
        oldest = self._inflight_wall
        if oldest is None:
            with self._queue_cond:
                oldest = self._queue[0].wall_be if self._queue else None
        if oldest is None:
            return 0.0
        return max(0.0, (time.time_ns() - unpack_u64(oldest)[0]) / 1e9)

    def _take_batch(self) -> list[_QueuedCall] | None:
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

    def _commit_batch(self, batch: list[_QueuedCall]) -> None:
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

    # ------------------------------------------------------------------ retention

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

    # ------------------------------------------------------------------ reading

    def query(
        self,
        start_seq: int | None = None,
        end_seq: int | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
        pattern: str | TopicPattern | None = None,
        source: str | None = None,
        limit: int | None = None,
        raw_payloads: bool = False,
    ) -> Iterator[EventRecord]:
        """Records matching every given filter (bounds inclusive), in seq order; with
        ``raw_payloads``, :class:`RawEventRecord` whose payload is still msgpack."""
        flt = make_filter(start_seq, end_seq, since_ns, until_ns, pattern, source)
        return query_records(self._store, flt, limit, raw_payloads)

    def replay(self, handler: Callable[[EventRecord], object], **filters: Any) -> int:
        """Call ``handler`` on each record :meth:`query` would yield; return how many.
        ``raw_payloads=True`` leaves payloads encoded: about twice the records per second
        for a handler that decodes only what it needs."""
        raw, limit = filters.pop("raw_payloads", False), filters.pop("limit", None)
        count = 0
        # A chunk at a time: a generator step per record cost ~12% of a raw replay.
        for records in query_chunks(self._store, make_filter(**filters), limit, raw):
            for record in records:
                handler(record)
            count += len(records)
        return count

    def follow(
        self,
        from_seq: int,
        *,
        poll_interval_s: float = 0.05,
        stop: threading.Event | None = None,
    ) -> Iterator[EventRecord]:
        """Tail the log from ``from_seq`` until ``stop`` is set (see follow_records)."""
        return follow_records(self._store, from_seq, poll_interval_s=poll_interval_s, stop=stop)

    @property
    def last_seq(self) -> int:
        """Highest committed seq (0 if none ever was)."""
        return last_seq(self._store)

    @property
    def first_seq(self) -> int | None:
        """Lowest stored seq, or None when empty."""
        return first_seq(self._store)

    def stats(self) -> EventLogStats:
        store = self._store
        with store.read_txn() as txn:
            records = txn.stat(store.events)["entries"]
            used = used_bytes(self._store, txn)
        c = self.counters
        return EventLogStats(
            path=self.path, node=self.node, readonly=self.readonly,
            first_seq=self.first_seq, last_seq=self.last_seq, records=records,
            used_bytes=used, map_size=store.env.info()["map_size"],
            appends=c.appends, commits=c.commits, bytes_written=c.bytes_written,
            errors=c.errors, full_errors=c.full_errors,
            retention_deleted=c.retention_deleted, map_growths=c.map_growths,
            queued=self._queued,
        )  # fmt: skip

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Commit everything queued, stop the writer thread, release the environment."""
        if self._closed:
            return
        with self._queue_cond:
            self._closing = True
            self._queue_cond.notify()
        if self._writer is not None:
            self._writer.join()
        self._closed = True
        release_store(self._store)


@contextlib.contextmanager
def open_event_log(
    path: str,
    *,
    node: str,
    readonly: bool = False,
    max_age_s: float | None = None,
    max_bytes: int | None = None,
    initial_map_size: int = 64 << 20,
    commit_interval_s: float = 0.002,
    max_batch: int = 8192,
) -> Iterator[EventLog]:
    """Open the event log in directory ``path`` (created if missing or empty).

    Raises EventLogFormatError, leaving the directory untouched, if ``path`` holds anything
    but a Prismatic event log of a format this code reads. Read-only handles ignore
    retention and batching options.
    """
    for field, value in (("max_age_s", max_age_s), ("max_bytes", max_bytes)):
        if value is not None and not value > 0:
            raise EventLogError(f"invalid {field}={value!r}: must be positive or None")
    if initial_map_size < 1 << 16:
        raise EventLogError(f"invalid initial_map_size={initial_map_size!r}: at least 65536")
    if commit_interval_s < 0 or max_batch < 1:
        raise EventLogError(
            f"invalid commit_interval_s={commit_interval_s!r} / max_batch={max_batch!r}"
        )
    if not readonly and (not isinstance(node, str) or not node):
        raise EventLogError(f"invalid node={node!r}: must be a non-empty str")
    store = open_store(str(path), node=node, readonly=readonly, map_size=initial_map_size)
    try:
        event_log = EventLog(
            store, readonly=readonly, max_age_s=max_age_s, max_bytes=max_bytes,
            commit_interval_s=commit_interval_s, max_batch=max_batch,
        )  # fmt: skip
    except BaseException:
        release_store(store)
        raise
    try:
        yield event_log
    finally:
        event_log.close()
