"""The pub/sub wire format, shared by publishers, the node's forwarder and subscribers.

A pub/sub message on ``publish.sock`` (publisher -> node, PUSH/PULL) is two ZeroMQ
frames; the node's forwarder adds a third, its *stamp*, before it goes out on
``events.sock`` (node -> subscribers, XPUB/SUB)::

    [topic (UTF-8), msgpack array of payloads]            publisher -> node
    [topic (UTF-8), msgpack array of payloads, stamp]     node -> subscribers

The stamp (:data:`STAMP`, 13 bytes) is the wire version (:data:`WIRE_VERSION`), the
forwarder's epoch (random per node start) and the topic's sequence: how many events the
node sent under that topic before this message. ZeroMQ filters by topic prefix, so a
subscriber gets all of a topic's messages or none; the node's XPUB drops a message only for
a subscriber whose queue is full (its high-water mark, :mod:`._forwarder`), and the
subscriber sees the hole in the sequence and counts exactly the events lost
(:class:`GapCounter`). A publisher cannot send a stamp: the forwarder drops a message of
three frames on ``publish.sock``.

The array holds one or more events published consecutively under that one topic (a *run*):
a publisher coalesces same-topic publishes into one message, and a different topic starts
the next one, so the order of one publisher's events survives. Lifecycle events use the
same format (a run of one), so one subscriber decoder serves both.

Topics whose first word is ``_hello`` are reserved for the slow-joiner handshake: the node
echoes a ``_hello.<unique>`` subscription as ``[topic, b""]``; no publisher may use them and
subscribers never surface them as events.

:class:`RunBuffer` builds wire messages from payloads encoded one at a time, so a payload
that cannot be encoded fails at its ``publish()`` call rather than at a later flush.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path
from typing import Any

import msgspec

from ._errors import PubSubError, TopicError
from ._topics import validate_topic

__all__ = ["Event", "RunBuffer", "HELLO_PREFIX", "array_length", "check_publish_topic",
           "encode_payload", "encode_batch", "events_address", "publish_address", "RUN_MAX_EVENTS",
           "RUN_MAX_BYTES", "PAYLOAD_MAX_BYTES", "check_payload_size", "STAMP", "WIRE_VERSION",
           "read_stamp", "GapCounter", "TOPICS_TRACKED_MAX"]

HELLO_PREFIX = b"_hello."
# A run is sent once it holds RUN_MAX_EVENTS events or RUN_MAX_BYTES payload bytes, and
# never grows past RUN_MAX_EVENTS unless one publish_many batch alone is bigger.
# Why 512: a subscriber decodes a run in one call, and a payload that is a list or a dict
# is an object the garbage collector tracks. CPython collects once 700 more tracked objects
# were allocated than freed (gc.get_threshold()[0], the default): a bigger run starts a
# collection in the middle of every decode, while the run is alive, which then ages into
# the older generations and is scanned again and again. Measured (bench/bench_pubsub.py,
# batched): runs of 1,000 cost the subscriber ~180 ns per event in collections, runs of
# 500 ~4 ns.
RUN_MAX_EVENTS = 512
RUN_MAX_BYTES = 64 * 1024
# The largest payload (or publish_many batch) a publisher sends: the node's publish.sock
# drops a connection that sends a bigger frame (ZMQ_MAXMSGSIZE), so it is refused at the call.
PAYLOAD_MAX_BYTES = 16 * 1024 * 1024

_encode = msgspec.msgpack.Encoder().encode

WIRE_VERSION = 1
STAMP = struct.Struct(">BIQ")  # wire version, forwarder epoch, events sent on the topic before
# Sequences are kept per topic on both sides, in tables of at most this many topics (the
# oldest first out): a topic evicted restarts its sequence at 0 (the forwarder), or takes
# its next message as a fresh baseline (a subscriber).
TOPICS_TRACKED_MAX = 65_536


def read_stamp(frame: bytes) -> tuple[int, int] | None:
    """(epoch, sequence) of a stamp frame, or None if it is not one of this wire version."""
    if len(frame) != STAMP.size or frame[0] != WIRE_VERSION:
        return None
    _, epoch, seq = STAMP.unpack(frame)
    return epoch, seq


class GapCounter:
    """Events lost per topic, from the stamps of the messages a subscriber receives.

    Pure: ``seen(topic, epoch, seq, n)`` for each message of ``n`` events, in arrival order,
    returns how many events were lost just before it (0: none). The first message of a
    topic sets its baseline; a sequence that goes backwards, or another epoch (the node
    restarted, or evicted the topic from its table), is a reset (:attr:`resets`), not a
    loss. ``forget(prefix)`` drops the topics under a prefix the subscriber stopped
    receiving (unsubscribed), so a later subscription starts them afresh.

    Invariant: ``lost`` is the sum of every value ``seen`` returned."""

    __slots__ = ("expected", "lost", "resets", "max_topics")

    def __init__(self, max_topics: int = TOPICS_TRACKED_MAX) -> None:
        self.expected: dict[str, tuple[int, int]] = {}  # topic -> (epoch, next seq)
        self.lost = 0
        self.resets = 0
        self.max_topics = max_topics

    def seen(self, topic: str, epoch: int, seq: int, n: int) -> int:
        expected = self.expected
        was = expected.get(topic)
        if was is None:
            if len(expected) >= self.max_topics:
                del expected[next(iter(expected))]
            expected[topic] = (epoch, seq + n)
            return 0
        expected[topic] = (epoch, seq + n)
        if was[0] != epoch or seq < was[1]:
            self.resets += 1
            return 0
        gap = seq - was[1]
        self.lost += gap
        return gap

    def forget(self, prefix: str) -> None:
        for topic in [t for t in self.expected if t.startswith(prefix)]:
            del self.expected[topic]


class Event(msgspec.Struct, frozen=True, gc=False):
    """One published event as a subscriber receives it.

    Untracked by the garbage collector (``gc=False``): a payload decoded from the wire can
    never refer back to its Event, so no cycle can form, and a million events a second do
    not trigger a million objects' worth of collections."""

    topic: str
    payload: Any


def events_address(data_dir: Path | str) -> str:
    """The node's XPUB: lifecycle events and forwarded pub/sub messages."""
    return f"ipc://{Path(data_dir).resolve()}/events.sock"


def publish_address(data_dir: Path | str) -> str:
    """The node's PULL: where publishers push their messages."""
    return f"ipc://{Path(data_dir).resolve()}/publish.sock"


@functools.lru_cache(maxsize=4096)
def check_publish_topic(topic: str) -> bytes:
    """The topic as wire bytes; TopicError if it is malformed or reserved (cached: the same
    few topics are checked on every publish)."""
    validate_topic(topic)
    if topic.startswith("_hello.") or topic == "_hello":
        raise TopicError("topic", topic, "the first word '_hello' is reserved for the "
                                         "subscription handshake")
    return topic.encode()


def check_payload_size(topic: str, encoded: bytes) -> bytes:
    if len(encoded) > PAYLOAD_MAX_BYTES:
        raise PubSubError(f"publish {topic!r}: {len(encoded)} bytes encoded, over the limit "
                          f"of {PAYLOAD_MAX_BYTES}")
    return encoded


def encode_payload(topic: str, payload: Any) -> bytes:
    try:
        encoded = _encode(payload)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise PubSubError(f"publish {topic!r}: payload {type(payload).__name__} cannot be "
                          f"encoded as msgpack: {exc}") from None
    return check_payload_size(topic, encoded)


def encode_batch(topic: str, payloads: Any) -> tuple[list[Any] | tuple[Any, ...], bytes]:
    """The payloads as a sequence and as one msgpack array (one msgspec call for all)."""
    batch = payloads if isinstance(payloads, (list, tuple)) else list(payloads)
    try:
        return batch, check_payload_size(topic, _encode(batch))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        for payload in batch:
            encode_payload(topic, payload)  # raises PubSubError naming the topic
        raise


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _array_header_size(body: bytes) -> int:
    """Bytes of the msgpack array header ``body`` starts with (checked by the caller)."""
    return {0xDC: 3, 0xDD: 5}.get(body[0], 1)


def array_length(body: bytes | memoryview) -> int:
    """The element count of the msgpack array ``body`` starts with, or -1 if it does not
    start with an array header (only the header is read: payloads are never decoded)."""
    if not body:
        return -1
    b = body[0]
    if 0x90 <= b <= 0x9F:
        return b & 0x0F
    if b == 0xDC and len(body) >= 3:
        return int.from_bytes(body[1:3], "big")
    if b == 0xDD and len(body) >= 5:
        return int.from_bytes(body[1:5], "big")
    return -1


class RunBuffer:
    """Encoded payloads waiting to be sent, coalesced into runs of one topic.

    Invariant: ``ready`` holds finished wire messages in publish order; the open run
    (``topic``/``payloads``, ``run_n`` events) comes after all of them. ``count``/``nbytes``
    cover both. A ``publish_many`` batch joins the open run when its topic is the run's and
    it fits: consecutive batches of one topic leave as one message, up to the run limits.
    A run holds at most :data:`RUN_MAX_EVENTS` events, unless one batch alone holds more.
    """

    __slots__ = ("topic", "payloads", "run_n", "size", "ready", "count", "nbytes")

    def __init__(self) -> None:
        self.topic: bytes | None = None
        self.payloads: list[bytes] = []  # msgpack array elements: one payload or a batch's
        self.run_n = 0  # events in the open run
        self.size = 0  # payload bytes in the open run
        self.ready: list[list[bytes]] = []
        self.count = 0  # events buffered
        self.nbytes = 0  # payload bytes buffered

    def add(self, topic: bytes, encoded: bytes) -> bool:
        """Buffer one encoded payload; True once the buffer is full and should be sent."""
        return self._append(topic, encoded, 1)

    def add_batch(self, topic: bytes, body: bytes, n: int) -> bool:
        """Buffer ``n`` events already encoded as one msgpack array (``publish_many``).
        True once the buffer should be sent."""
        return self._append(topic, body[_array_header_size(body):], n)

    def _append(self, topic: bytes, elements: bytes, n: int) -> bool:
        if topic != self.topic:
            self.close_run()
            self.topic = topic
        elif self.run_n + n > RUN_MAX_EVENTS:
            self.close_run()  # a batch that does not fit starts the next run
        self.payloads.append(elements)
        self.run_n += n
        self.size += len(elements)
        if self.run_n >= RUN_MAX_EVENTS or self.size >= RUN_MAX_BYTES:
            self.close_run()
        self.count += n
        self.nbytes += len(elements)
        return self.count >= RUN_MAX_EVENTS or self.nbytes >= RUN_MAX_BYTES

    def close_run(self) -> None:
        if self.payloads:
            assert self.topic is not None
            self.ready.append([self.topic, array_header(self.run_n)
                               + b"".join(self.payloads)])
            self.payloads = []
            self.run_n = self.size = 0

    def take_ready(self) -> list[list[bytes]]:
        """The finished runs only; the open run keeps growing."""
        messages, self.ready = self.ready, []
        self.count, self.nbytes = self.run_n, self.size
        return messages

    def take(self) -> list[list[bytes]]:
        """Every buffered event as wire messages, in order; the buffer is empty after."""
        self.close_run()
        messages, self.ready = self.ready, []
        self.count = self.nbytes = 0
        self.topic = None
        return messages
