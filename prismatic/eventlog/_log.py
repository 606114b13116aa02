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

This module keeps the handle: opening, encoding and queueing submits, the read side and
closing. The writer thread (group commit, map growth, retention passes) and the counters
it keeps are :mod:`._group_commit`, a base of :class:`EventLog`.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, cast

import msgspec

from prismatic._errors import EventLogError
from prismatic._topics import MAX_TOPIC_LENGTH, TopicPattern, validate_topic
from prismatic.eventlog._group_commit import (
    LAZY_COMMIT_S, EventLogCounters, GroupCommit, QueuedCall,
)
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
    SINGLE_OFFSET,
    EventDraft,
    EventLogStats,
    EventRecord,
    offsets_bytes,
    pack_u64,
    seal_body,
)
from prismatic.eventlog._retention import used_bytes
from prismatic.eventlog._store import LogStore, open_store, release_store

__all__ = ["EventLog", "EventLogCounters", "open_event_log"]


class EventLog(GroupCommit):
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
        self._queue: collections.deque[QueuedCall] = collections.deque()
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
            QueuedCall(
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
            QueuedCall(
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

    def _enqueue(self, call: QueuedCall) -> None:
        with self._queue_cond:
            if self._closing:
                raise EventLogError(f"event log {self.path} is closed")
            self._queue.append(call)
            self._queued += call.size
            if not call.lazy_until:
                self._urgent += 1
            if self._queued >= self._wake_at or (self._lazy_wait and not call.lazy_until):
                self._queue_cond.notify()

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
