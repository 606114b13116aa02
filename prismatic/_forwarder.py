"""The node's pub/sub forwarder: publishers -> ``publish.sock`` (PULL) -> ``events.sock`` (XPUB).

Role: the one place where every published event passes. Publishers (workers, external
clients) PUSH wire messages ``[topic, msgpack array of payloads]`` (see
:mod:`._pubsub_wire`); the forwarder re-sends each one on the XPUB with a third frame, the
topic's sequence stamp, where ZeroMQ fans it out to every SUB whose prefix matches.
Payloads are never decoded here: only the frame count, the topic and the msgpack array
header are checked. A message that fails the check is dropped, counted
(:attr:`Forwarder.dropped_bad_frames`, :attr:`Forwarder.dropped_bad_topic`, exported as
Prometheus counters by the node) and logged at most once per ten seconds, node-wide
(:mod:`._throttle`); an exception while handling one message is handed to the node's
``caught`` (logged, counted) and the next message is served: nothing here raises into the
node's loop.

Limits: ``publish.sock`` refuses a frame over :data:`PUBLISH_MAX_BYTES` and ``events.sock``
an inbound (subscription) frame over :data:`SUBSCRIBE_MAX_BYTES` (``ZMQ_MAXMSGSIZE``: libzmq
drops that peer's connection before buffering the frame). A message of more frames than
two is read one frame at a time and dropped (:mod:`._multipart`): the node never holds a
second copy of what libzmq buffered for it. Publishers refuse a payload over
:data:`~._pubsub_wire.PAYLOAD_MAX_BYTES` at the call, so a well-behaved run never reaches
the cap.

The node's own lifecycle events go out on the same XPUB through :meth:`Forwarder.send`,
stamped the same way.

On a clustered node, every message forwarded from a publisher is also handed to
``on_published`` (the mesh's cluster pub/sub, :mod:`prismatic.mesh._remote`), which sends it
to the other members; what they send is published here with :meth:`Forwarder.send`, so it
is never forwarded again. The node's own events (lifecycle, dead letters, member changes)
stay on their node.

Slow joiners: the XPUB reports subscriptions upstream; a ``_hello.<unique>`` subscription is
answered at once with ``[that topic, b""]``. A subscriber that sent its real subscriptions
before its hello (same pipe, so in order) knows, once the echo arrives, that they are in
effect: nothing published after that is missed.

Flow control: the XPUB's SNDHWM is ``subscriber_hwm`` messages (:data:`SUBSCRIBER_HWM` by
default; the node's ``--subscriber-hwm``, TOML ``[node] subscriber_hwm``): each subscriber
has its own queue, and libzmq drops a message only for a subscriber whose queue is full, so
the node holds at most that many messages (each a run, under 128 KiB, see
:mod:`._pubsub_wire`) for a subscriber that stopped reading, and every other subscriber and
every publisher go on unaffected. A live subscriber never fills it: its SUB socket has no
receive limit and pulls its backlog into its own memory. Every drop is seen by the
subscriber that suffered it, exactly: the forwarder stamps each message with how many
events it sent under that topic before (per topic, in a table of at most
:data:`~._pubsub_wire.TOPICS_TRACKED_MAX` topics, the oldest evicted), and a subscriber
counts the hole (:class:`~._pubsub_wire.GapCounter`). ``subscriber_hwm`` 0 is unbounded
(nothing dropped, a stalled subscriber's backlog grows the node without limit). Publishers
are held back by ZeroMQ's PUSH high-water mark when the node lags.

The sockets are plain (non-asyncio) ZeroMQ sockets read from the node's uvloop through their
edge-triggered FDs: each wake-up drains until EAGAIN, or for at most :data:`DRAIN_BUDGET`
messages and then yields to the loop and continues on the next iteration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path

import zmq

from ._errors import TopicError
from ._multipart import read_rest
from ._pubsub_wire import (
    HELLO_PREFIX, PAYLOAD_MAX_BYTES, RUN_MAX_BYTES, STAMP, TOPICS_TRACKED_MAX, WIRE_VERSION,
    array_length, events_address, publish_address,
)
from ._throttle import throttle_for
from ._topics import validate_topic

__all__ = ["Forwarder", "DRAIN_BUDGET", "PUBLISH_MAX_BYTES", "SUBSCRIBE_MAX_BYTES",
           "SUBSCRIBER_HWM"]

log = logging.getLogger(__name__)
DRAIN_BUDGET = 2000  # messages per loop turn: keeps control requests and lifecycle moving
# A run is sent once it holds RUN_MAX_BYTES, so the largest one a publisher makes is just
# under that plus one payload at its limit.
PUBLISH_MAX_BYTES = PAYLOAD_MAX_BYTES + 2 * RUN_MAX_BYTES
SUBSCRIBE_MAX_BYTES = 4096  # a subscription is one byte and a topic prefix (<= 255 chars)
# Messages queued in the node per subscriber before it drops for that one: ZeroMQ's own
# default. A message is a run (closed once it holds 512 events or 64 KiB: under 128 KiB,
# unless one payload or batch alone is bigger), so a subscriber that stopped reading holds
# 1,000 runs of the node: 64 MiB of full 64 KiB runs.
SUBSCRIBER_HWM = 1000


def _log_caught(task: str, exc: BaseException) -> None:
    log.error("%s: a message raised, dropped: %r", task, exc, exc_info=exc)


class Forwarder:
    """Binds ``publish.sock`` and ``events.sock`` in ``data`` and forwards between them."""

    def __init__(self, ctx: zmq.Context, data: Path,
                 caught: Callable[[str, BaseException], None] = _log_caught,
                 subscriber_hwm: int = SUBSCRIBER_HWM) -> None:
        if subscriber_hwm < 0:
            raise ValueError(f"subscriber_hwm {subscriber_hwm} is negative (0: unbounded)")
        self.caught = caught
        self.subscriber_hwm = subscriber_hwm
        self.epoch = random.getrandbits(32)  # a subscriber that outlived a restart resets
        self.sequences: dict[bytes, int] = {}  # topic -> events sent under it so far
        self.topics_evicted = 0
        self.messages_forwarded = 0
        self.events_forwarded = 0
        self.dropped_bad_frames = 0
        self.dropped_bad_topic = 0
        self.hellos = 0
        self.on_published: Callable[[list[zmq.Frame]], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending_drain = False
        for name in ("events.sock", "publish.sock"):
            (data / name).unlink(missing_ok=True)  # stale: the node holds the data dir's lock
        self.pub = ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.SNDHWM, subscriber_hwm)  # per subscriber: see the module
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.MAXMSGSIZE, SUBSCRIBE_MAX_BYTES)
        self.pub.bind(events_address(data))
        self.pull = ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.MAXMSGSIZE, PUBLISH_MAX_BYTES)
        self.pull.bind(publish_address(data))
        for name in ("events.sock", "publish.sock"):  # no cookie here: the file mode is the lock
            os.chmod(data / name, 0o600)

    def start(self, loop: asyncio.AbstractEventLoop,
              guarded: Callable[[str, Callable[[], None]], Callable[[], None]] = lambda n, f: f,
              ) -> None:
        """Read both sockets from ``loop``; ``guarded`` wraps each reader (the node's
        :meth:`~._node_tasks.NodeTasks.guarded`)."""
        self._loop = loop
        loop.add_reader(self.pull.FD, guarded("pub/sub forwarder", self._forward))
        loop.add_reader(self.pub.FD, guarded("pub/sub subscriptions", self._greet))
        self._forward()  # edge-triggered: anything already queued raised no edge for us
        self._greet()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.pull.FD)
            self._loop.remove_reader(self.pub.FD)
        self.pull.close(0)
        self.pub.close(0)

    def send(self, topic: bytes, body: bytes) -> None:
        """Publish one message from the node itself (lifecycle events, and what other
        members of a cluster published): ``body`` is a msgpack array of payloads."""
        self.pub.send_multipart([topic, body, self._stamp(topic, max(array_length(body), 1))])
        self._greet()  # a send can consume the FD's edge for a pending subscription

    def _stamp(self, topic: bytes, n: int) -> bytes:
        """The next stamp of ``topic``, counting the ``n`` events of its message."""
        sequences = self.sequences
        seq = sequences.get(topic)
        if seq is None:
            seq = 0
            if len(sequences) >= TOPICS_TRACKED_MAX:  # bounded: the oldest topic restarts
                del sequences[next(iter(sequences))]
                self.topics_evicted += 1
        sequences[topic] = seq + n
        return STAMP.pack(WIRE_VERSION, self.epoch, seq)

    # ---- the two readers ----------------------------------------------------------------------

    def _forward(self) -> None:
        self._pending_drain = False
        pull, pub = self.pull, self.pub
        recv, send, stamp = pull.recv, pub.send_multipart, self._stamp
        for _ in range(DRAIN_BUDGET):
            try:
                # Frames, not bytes: a run is up to ~64 KiB, and forwarding the received
                # ZeroMQ message itself (send of a Frame shares its buffer) spares two
                # copies of it per message. Never more than two: ._multipart.
                frames = [recv(zmq.NOBLOCK, copy=False)]
                parts = read_rest(pull, frames, 2, copy=False)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                log.error("pub/sub forwarder: receive failed: %s", exc)
                break
            try:
                topic, n = self._check(frames, parts)
                if n < 0:
                    continue
                if self.on_published is not None:
                    self.on_published(frames)
                frames.append(stamp(topic, n))  # type: ignore[arg-type]
                send(frames, copy=False)
            except Exception as exc:  # noqa: BLE001 - one message must not stop the forwarder
                self.caught("pub/sub forwarder", exc)
                continue
            self.messages_forwarded += 1
            self.events_forwarded += n
        else:
            if self._loop is not None and not self._pending_drain:
                self._pending_drain = True  # more may be queued and no new edge will come
                self._loop.call_soon(self._forward)
        self._greet()

    def _check(self, frames: list[zmq.Frame], parts: int) -> tuple[bytes, int]:
        """The message's topic and event count, or count -1 after counting and logging
        the drop (``parts``: how many the message had; ``frames`` holds at most two)."""
        if parts != 2:
            self.dropped_bad_frames += 1
            self._log_drop(f"{parts} frames instead of 2")
            return b"", -1
        topic, body = frames[0].bytes, frames[1].buffer[:5]  # the array header is enough
        try:
            text = topic.decode()
            validate_topic(text)
            if topic.startswith(HELLO_PREFIX):
                raise TopicError("topic", text, "reserved for the subscription handshake")
        except (UnicodeDecodeError, TopicError) as exc:
            self.dropped_bad_topic += 1
            self._log_drop(f"bad topic: {exc}")
            return b"", -1
        n = array_length(body)
        if n <= 0:
            self.dropped_bad_frames += 1
            self._log_drop(f"topic {text!r}: body is not a non-empty msgpack array")
            return b"", -1
        return topic, n

    def _log_drop(self, why: str) -> None:
        throttle_for(log, "pub/sub").warn("pub/sub forwarder: dropped a malformed message (%s)",
                                          why)

    def _greet(self) -> None:
        pub = self.pub
        while pub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                msg = pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if msg[:1] == b"\x01" and msg[1:].startswith(HELLO_PREFIX):
                self.hellos += 1
                pub.send_multipart([msg[1:], b""])
