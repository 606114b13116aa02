"""Subscribing to a node's events from plain Python: :class:`Subscription`.

Protocol (see :mod:`._pubsub_wire` and :mod:`._forwarder`): a ZeroMQ SUB connects to the
node's ``events.sock`` and subscribes with the pattern's literal prefix (ZeroMQ filters by
byte prefix only); the exact pattern (``*`` one word, ``#`` zero or more) is applied here,
once per message. :func:`await_hello` is the slow-joiner handshake every subscriber uses
(this module, :class:`~prismatic.EventStream`, workers): subscribe to a unique
``_hello.<id>`` topic *after* the real subscriptions and wait for the node's echo; since
subscriptions travel in order on one pipe, the real ones are then in effect and nothing
published afterwards is missed. ``_hello`` messages never surface as events.

Losses: the node queues at most its ``subscriber_hwm`` messages for a subscriber that does
not read and drops the rest for that subscriber only (:mod:`._forwarder`). Each message
carries its topic's sequence (:mod:`._pubsub_wire`), so a subscriber counts exactly the
events it lost (:attr:`Subscription.lost`, a throttled warning naming the topic): never
silent. A message that is malformed (not two frames and a stamp of this wire version, or
payloads that do not decode) is dropped, counted (:attr:`Subscription.dropped`) and
logged.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path
from typing import Any

import msgspec
import zmq

from ._errors import PubSubError, TopicError
from ._pubsub_wire import (
    HELLO_PREFIX, Event, GapCounter, array_length, events_address, read_stamp,
)
from ._throttle import ThrottledWarning
from ._topics import TopicPattern, compile_pattern

__all__ = ["Subscription", "open_subscription", "await_hello", "compile_subscription",
           "HELLO_TIMEOUT_S", "BATCH_MAX_EVENTS", "warn_lost"]

log = logging.getLogger(__name__)
HELLO_TIMEOUT_S = 10.0
# next_batch takes no further message once it holds this many events: with runs of at most
# RUN_MAX_EVENTS (512), a batch stays under the garbage collector's 700 allocations (see
# _pubsub_wire.RUN_MAX_EVENTS) yet still gathers many small runs into one batch.
BATCH_MAX_EVENTS = 128
_hello_ids = itertools.count(1)
_decode_payloads = msgspec.msgpack.Decoder(list[Any]).decode


def compile_subscription(pattern: str) -> TopicPattern:
    """The compiled pattern; TopicError if malformed or aimed at the reserved ``_hello``."""
    compiled = compile_pattern(pattern)
    if compiled.words[0] == "_hello":
        raise TopicError("pattern", pattern, "the first word '_hello' is reserved for the "
                                             "subscription handshake")
    return compiled


def await_hello(sock: zmq.Socket, on_message: Callable[[list[bytes]], None],
                timeout: float = HELLO_TIMEOUT_S) -> None:
    """Finish a subscription made on ``sock``: send a unique hello after it and return once
    the node echoed it. Messages that arrive meanwhile go to ``on_message`` (other
    subscribers' hellos are dropped). PubSubError if the node does not answer in time."""
    hello = HELLO_PREFIX + f"{os.getpid()}.{next(_hello_ids)}.{id(sock)}".encode()
    sock.setsockopt(zmq.SUBSCRIBE, hello)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000) + 1):
                    raise PubSubError(f"the node did not answer the subscription within "
                                      f"{timeout:.1f}s") from None
                continue
            if frames[0] == hello:
                return
            if not frames[0].startswith(HELLO_PREFIX):
                on_message(frames)
    finally:
        sock.setsockopt(zmq.UNSUBSCRIBE, hello)


def warn_lost(warning: ThrottledWarning, who: str, topic: str, n: int, total: int) -> None:
    """The throttled warning every subscriber logs when the node dropped events for it."""
    warning.warn("%s: %d event(s) on %r lost: the node dropped them for this subscriber, "
                 "which fell its high-water mark behind (%d lost so far)", who, n, topic, total)


class Subscription:
    """Events on one topic pattern from one node, from the moment the constructor returns.

    ``next(timeout)`` gives the next :class:`~prismatic.Event` or None at the timeout;
    iterating blocks for each next event. Not thread-safe; close it (or use ``with``).
    :attr:`lost` counts the events the node dropped for this subscriber (it fell the node's
    high-water mark behind), :attr:`dropped` the malformed messages it dropped itself.
    """

    def __init__(self, node: str | Path, pattern: str, *,
                 timeout: float = HELLO_TIMEOUT_S) -> None:
        from ._node_dir import resolve_node  # late: it imports the node's module

        self.pattern = compile_subscription(pattern)
        self._matches = self.pattern.matches
        self._pending: collections.deque[Event] = collections.deque()
        self.dropped = 0  # malformed messages: no valid stamp, or payloads that do not decode
        self._gaps = GapCounter()
        self._lost_warning = ThrottledWarning(log)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        # Unbounded here: a backlog waits in this process's memory, not in the node's.
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, self.pattern.literal_prefix.encode())
        self._sock.connect(events_address(resolve_node(node)))
        try:
            await_hello(self._sock, self._take, timeout)
        except BaseException:
            self.close()
            raise

    @property
    def lost(self) -> int:
        """Events the node dropped for this subscriber, counted from the gaps in their
        topics' sequences."""
        return self._gaps.lost

    def _decode(self, frames: list[bytes]) -> list[Event]:
        """The events of one received message: [] for a hello, a topic that does not match
        the pattern, or a malformed message (counted in :attr:`dropped`)."""
        if frames[0].startswith(HELLO_PREFIX):
            return []  # hellos are never events
        stamp = read_stamp(frames[2]) if len(frames) == 3 else None
        if stamp is None:
            self._drop(frames[0], "not a message of this wire version (two frames and a stamp)")
            return []
        topic = frames[0].decode()
        if not self._matches(topic):
            return []
        try:
            payloads = _decode_payloads(frames[1])
        except (ValueError, RecursionError) as exc:  # undecodable, bad UTF-8, bottomless
            self._drop(topic, f"payloads do not decode: {exc}")  # the forwarder checks the header
            self._gap(topic, stamp, array_length(frames[1]))
            return []
        self._gap(topic, stamp, len(payloads))
        return list(map(Event, repeat(topic), payloads))  # ~20 ns/event less than [... for]

    def _gap(self, topic: str, stamp: tuple[int, int], n: int) -> None:
        if lost := self._gaps.seen(topic, stamp[0], stamp[1], max(n, 1)):
            warn_lost(self._lost_warning, f"subscription {self.pattern.pattern}", topic, lost,
                      self._gaps.lost)

    def _drop(self, topic: object, why: str) -> None:
        self.dropped += 1
        log.warning("subscription %s: dropped a message on %r (%d so far): %s",
                    self.pattern.pattern, topic, self.dropped, why)

    def _take(self, frames: list[bytes]) -> None:
        self._pending.extend(self._decode(frames))

    def _wait(self, deadline: float | None) -> bool:
        """Wait until ZeroMQ holds a message; False once ``deadline`` has passed."""
        if deadline is None:
            self._sock.poll()
            return True
        left = deadline - time.monotonic()
        return left > 0 and bool(self._sock.poll(int(left * 1000) + 1))

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting at most ``timeout`` seconds (None: forever)."""
        pending = self._pending
        if pending:
            return pending.popleft()
        sock = self._sock
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                pending.extend(self._decode(sock.recv_multipart(zmq.NOBLOCK)))
            except zmq.Again:
                if not self._wait(deadline):
                    return None
                continue
            if pending:
                return pending.popleft()

    def next_batch(self, timeout: float | None = None) -> list[Event]:
        """The events already received, in order: at least one (waiting at most ``timeout``
        seconds; ``[]`` then), and no more messages once :data:`BATCH_MAX_EVENTS` are
        gathered. The batched form of :meth:`next`, for consumers of a million events a
        second."""
        batch = list(self._pending)
        self._pending.clear()
        sock, decode = self._sock, self._decode
        deadline = None if timeout is None else time.monotonic() + timeout
        # Bounded, rather than all that ZeroMQ holds: a consumer that fell behind would
        # otherwise get its whole backlog decoded at once (millions of payloads, alive
        # together), and the garbage collector would scan them over and over while they
        # age into its older generations. Measured: 2M events in one batch cost the
        # subscriber ~60% of its time in collections; one run of 1,100 per batch, ~20%;
        # one run of 500, ~1% (why: _pubsub_wire.RUN_MAX_EVENTS).
        while len(batch) < BATCH_MAX_EVENTS:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                if batch or not self._wait(deadline):
                    break
                continue
            events = decode(frames)
            if batch:
                batch += events
            else:
                batch = events  # the usual case: one run, handed over as decoded
        return batch

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.next()
            assert event is not None
            yield event

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def open_subscription(node: str | Path, pattern: str) -> Iterator[Subscription]:
    """Subscribe to ``pattern`` on ``node`` (data directory or name) for a ``with`` block."""
    sub = Subscription(node, pattern)
    try:
        yield sub
    finally:
        sub.close()
