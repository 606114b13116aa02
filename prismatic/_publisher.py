"""Publishing from plain Python (an external client): :class:`BackgroundPublisher`.

Role: make one ``publish()`` call per event cheap. The caller's thread only validates the
topic, encodes the payload (so a bad payload raises at the call, naming the topic) and
appends it to a queue. A daemon flusher thread owns the ZeroMQ PUSH socket (sockets are not
thread-safe), takes everything queued, coalesces consecutive same-topic events into runs
(:class:`~._pubsub_wire.RunBuffer`) and sends them to the node's ``publish.sock``. While
the flusher sends, the caller keeps queueing, so runs grow with the load: batching costs no
latency when idle and beats the per-send cost under load.

Flow control: at most :data:`QUEUE_LIMIT` events wait in the queue; beyond that
``publish()`` blocks until the flusher catches up (and the flusher is itself held back by
the PUSH high-water mark when the node lags). Nothing is dropped. PUSH queues until it is
connected, so events published before the connection completes are delivered too.

``flush(timeout)`` returns once everything published so far has been handed to ZeroMQ;
``close()`` flushes, then lets ZeroMQ deliver for up to :data:`CLOSE_LINGER_MS`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import zmq

from ._errors import PubSubError
from ._pubsub_wire import (
    RunBuffer, array_length, check_payload_size, check_publish_topic, encode_batch,
    encode_payload,
)

__all__ = ["BackgroundPublisher", "QUEUE_LIMIT", "CLOSE_LINGER_MS"]

log = logging.getLogger(__name__)
QUEUE_LIMIT = 100_000
CLOSE_LINGER_MS = 5000

_encode = msgspec.msgpack.Encoder().encode


class BackgroundPublisher:
    """A publisher with a flusher thread; ``publish`` may be called from one thread at a
    time (as the rest of :class:`~prismatic.NodeConnection`)."""

    def __init__(self, ctx: zmq.Context, address: str) -> None:
        self._ctx = ctx
        self._address = address
        # Items: (topic, encoded payload), or (topic, wire message) for publish_many.
        self._queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._wake = threading.Event()
        self._idle = True  # the flusher is (about to be) waiting on _wake
        self._progress = threading.Condition()
        self._queued = 0  # events queued so far (caller's thread only)
        self._handed = 0  # events handed to ZeroMQ so far (flusher only)
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="prismatic-publisher",
                                        daemon=True)
        self._thread.start()

    # ---- the caller's side ----------------------------------------------------------------

    def publish(self, topic: str, payload: Any) -> None:
        try:
            encoded = _encode(payload)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
            encoded = encode_payload(topic, payload)  # raises PubSubError naming the topic
        self._put(check_publish_topic(topic), check_payload_size(topic, encoded), 1)

    def publish_many(self, topic: str, payloads: Iterable[Any]) -> None:
        """Publish several events under one topic, in order: one wire message, encoded by
        one msgspec call (the batch's msgpack array *is* the wire body)."""
        batch, body = encode_batch(topic, payloads)
        if batch:
            wire_topic = check_publish_topic(topic)
            self._put(wire_topic, (wire_topic, body), len(batch))

    def _put(self, topic: bytes, item: Any, n: int) -> None:
        if self._closing or self._error is not None:
            raise PubSubError(f"publish {topic.decode()!r}: the publisher is closed"
                              + (f" ({self._error!r})" if self._error else ""))
        queue = self._queue
        if len(queue) >= QUEUE_LIMIT:
            self._wait_for_room()
        queue.append((topic, item))
        self._queued += n
        if self._idle:
            self._wake.set()

    def _wait_for_room(self) -> None:
        with self._progress:
            while len(self._queue) >= QUEUE_LIMIT // 2 and self._error is None:
                self._wake.set()
                self._progress.wait(0.1)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event published so far was handed to ZeroMQ; False on timeout."""
        target = self._queued
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._progress:
            while self._handed < target:
                if self._error is not None:
                    raise PubSubError(f"the publisher failed: {self._error!r}")
                self._wake.set()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._progress.wait(left if left is not None else 0.5)
        return True

    def close(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self.flush(timeout)
            self._closing = True
            self._wake.set()
            self._thread.join(timeout + CLOSE_LINGER_MS / 1000)

    # ---- the flusher thread ---------------------------------------------------------------

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        sock.connect(self._address)
        buffer = RunBuffer()
        queue, wake = self._queue, self._wake
        try:
            while True:
                self._idle = True
                if not queue:
                    if self._closing:
                        break
                    wake.wait()
                    wake.clear()
                self._idle = False
                handed = 0
                add = buffer.add
                while queue:
                    topic, item = queue.popleft()
                    if type(item) is bytes:
                        add(topic, item)
                        handed += 1
                    else:  # publish_many: a message of its own, after the open run
                        n = array_length(item[1])
                        buffer.add_batch(topic, item[1], n)
                        handed += n
                    if buffer.ready:
                        for message in buffer.take_ready():
                            sock.send_multipart(message)
                for message in buffer.take():
                    sock.send_multipart(message)
                with self._progress:
                    self._handed += handed
                    self._progress.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported to the caller, never lost
            self._error = exc
            log.error("publisher to %s failed: %r", self._address, exc)
            with self._progress:
                self._progress.notify_all()
        finally:
            sock.close()  # LINGER: queued messages still go out, for a bounded time
