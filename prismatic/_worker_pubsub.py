"""Pub/sub inside a worker process: :class:`WorkerPubSub`, one per worker (``ctx.pubsub``).

Role: ``Worker.publish``/``subscribe``/``unsubscribe``. Nothing ZeroMQ exists until the
first use (a worker never forks, but its image came from a fork, so the context is made in
this process, lazily); the node's data directory comes from :func:`._nodeinfo.current`.

Publishing: encoded at the call (a bad payload raises there, naming the topic), buffered in
a :class:`~._pubsub_wire.RunBuffer`, and sent over PUSH to the node's ``publish.sock`` when
the current handler returns (the runtime calls :meth:`WorkerPubSub.flush`), when the buffer
is full (512 events or 64 KiB), when the loop next gets control (an ``async`` handler that
awaits), and before the process exits (:meth:`WorkerPubSub.close`). A full PUSH queue
blocks: back-pressure, never loss.

ZeroMQ itself is imported on first use too: the tree's processes are forked from an image
without it, which keeps every fork and every exit cheaper (fewer pages to copy and free).

Subscribing: one SUB socket per worker, one ZeroMQ prefix subscription per pattern; each
message is matched exactly against the worker's patterns and each of its events reaches
``handle_info`` once as a :class:`~prismatic.Event`, however many patterns match.
``subscribe`` returns after the slow-joiner handshake (:func:`._subscription.await_hello`).
The SUB socket's FD is edge-triggered: every wake-up drains it (bounded per loop turn), and
so does every subscribe, because a handshake can consume the edge. Subscribing before the
loop exists (a plain ``init``) works: the reader is armed in :meth:`WorkerPubSub.attach`.

Losses: a worker that stops taking its events (hung, stopped) past the node's
``subscriber_hwm`` loses the node's further messages for it; it counts them exactly from
the topics' sequence stamps when it runs again (:attr:`WorkerPubSub.lost`, a throttled
warning naming the topic). A malformed message is dropped, counted
(:attr:`WorkerPubSub.undecodable`) and logged.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import PubSubError
from ._nodeinfo import current
from ._pubsub_wire import (
    HELLO_PREFIX, Event, GapCounter, RunBuffer, array_length, check_publish_topic, encode_batch,
    encode_payload, events_address, publish_address, read_stamp,
)
from ._throttle import ThrottledWarning
from ._topics import TopicPattern

if TYPE_CHECKING:
    import asyncio

    import zmq

    from ._reactor import Reactor

__all__ = ["WorkerPubSub", "CLOSE_LINGER_MS", "DRAIN_BUDGET"]

log = logging.getLogger(__name__)
CLOSE_LINGER_MS = 2000  # at exit, how long ZeroMQ may still deliver what was published
DRAIN_BUDGET = 1000  # messages per loop turn, so the mailbox consumer keeps running

_decode_payloads = msgspec.msgpack.Decoder(list[Any]).decode


class WorkerPubSub:
    """``deliver(msg)`` puts a message in the worker's mailbox, for ``handle_info``."""

    def __init__(self, deliver: Callable[[Any], None]) -> None:
        self._deliver = deliver
        self._pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | Reactor | None = None
        self._ctx: zmq.Context | None = None
        self._push: zmq.Socket | None = None
        self._sub: zmq.Socket | None = None
        self._buffer = RunBuffer()
        self._flush_scheduled = False
        self._patterns: dict[int, TopicPattern] = {}
        self._refs = itertools.count(1)
        self._drain_scheduled = False
        self.undecodable = 0  # malformed messages: no valid stamp, or payloads do not decode
        self._gaps = GapCounter()
        self._lost_warning = ThrottledWarning(log)

    @property
    def lost(self) -> int:
        """Events the node dropped for this worker (it fell the high-water mark behind)."""
        return self._gaps.lost

    def _context(self) -> zmq.Context:
        import zmq  # noqa: PLC0415 - first use only; see the module note

        if self._ctx is None:
            if os.getpid() != self._pid:
                raise PubSubError("pub/sub state crossed a fork; use it in the worker process")
            self._ctx = zmq.Context()
        return self._ctx

    def _data_dir(self) -> Any:
        info = current()
        if info is None:
            raise PubSubError("publish/subscribe need a node: this process is not part of a "
                              "node's tree (use prismatic.connect(...) from outside)")
        return info.data_dir

    # ---- publishing ---------------------------------------------------------------------------

    def publish(self, topic: str, payload: Any) -> None:
        if self._buffer.add(check_publish_topic(topic), encode_payload(topic, payload)):
            self.flush()
        elif not self._flush_scheduled:
            self._schedule_flush()

    def publish_many(self, topic: str, payloads: Iterable[Any]) -> None:
        batch, body = encode_batch(topic, payloads)
        if not batch:
            return
        if self._buffer.add_batch(check_publish_topic(topic), body, len(batch)):
            self.flush()
        elif not self._flush_scheduled:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._flush_scheduled = True  # covers handlers that await before returning
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send everything buffered (the runtime calls this after each handled message)."""
        self._flush_scheduled = False
        if not self._buffer.count:
            return
        if self._push is None:
            import zmq  # noqa: PLC0415

            self._push = self._context().socket(zmq.PUSH)
            self._push.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
            self._push.connect(publish_address(self._data_dir()))
        send = self._push.send_multipart
        for message in self._buffer.take():
            send(message)

    # ---- subscribing --------------------------------------------------------------------------

    def subscribe(self, pattern: str) -> int:
        import zmq  # noqa: PLC0415

        from ._subscription import await_hello, compile_subscription  # noqa: PLC0415

        compiled = compile_subscription(pattern)
        sub = self._sub
        if sub is None:
            sub = self._context().socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, 0)  # a backlog waits here, not in the node
            sub.connect(events_address(self._data_dir()))
            self._sub = sub
            if self._loop is not None:
                self._loop.add_reader(sub.FD, self._drain)
        ref = next(self._refs)
        self._patterns[ref] = compiled
        sub.setsockopt(zmq.SUBSCRIBE, compiled.literal_prefix.encode())
        try:
            await_hello(sub, self._take)
        except BaseException:
            self.unsubscribe(ref)
            raise
        self._drain()  # the handshake may have consumed the FD's edge
        return ref

    def unsubscribe(self, ref: int) -> bool:
        """Drop a subscription; False if ``ref`` is not one (already dropped)."""
        compiled = self._patterns.pop(ref, None)
        if compiled is None or self._sub is None:
            return False
        import zmq  # noqa: PLC0415

        self._sub.setsockopt(zmq.UNSUBSCRIBE, compiled.literal_prefix.encode())
        # Its topics' messages stop: a later subscription takes them from a new baseline.
        self._gaps.forget(compiled.literal_prefix)
        return True

    def _drain(self) -> None:
        self._drain_scheduled = False
        sub = self._sub
        if sub is None:
            return
        import zmq  # noqa: PLC0415

        recv, take = sub.recv_multipart, self._take
        for _ in range(DRAIN_BUDGET):
            try:
                take(recv(zmq.NOBLOCK))
            except zmq.Again:
                return
        if self._loop is not None and not self._drain_scheduled:
            self._drain_scheduled = True  # no new edge will come for what is still queued
            self._loop.call_soon(self._drain)

    def _take(self, frames: list[bytes]) -> None:
        if frames[0].startswith(HELLO_PREFIX):
            return  # never an event: another subscriber's handshake
        stamp = read_stamp(frames[2]) if len(frames) == 3 else None
        if stamp is None:
            self._drop(frames[0], "not a message of this wire version (two frames and a stamp)")
            return
        topic = frames[0].decode()
        for compiled in self._patterns.values():
            if compiled.matches(topic):
                break
        else:
            return  # only the prefix matched, or a pattern dropped since
        try:
            payloads = _decode_payloads(frames[1])
        except (ValueError, RecursionError) as exc:  # undecodable, bad UTF-8, bottomless
            self._drop(topic, f"payloads do not decode: {exc}")
            self._gap(topic, stamp, array_length(frames[1]))
            return
        self._gap(topic, stamp, len(payloads))
        deliver = self._deliver
        for payload in payloads:
            deliver(Event(topic, payload))

    def _gap(self, topic: str, stamp: tuple[int, int], n: int) -> None:
        if lost := self._gaps.seen(topic, stamp[0], stamp[1], max(n, 1)):
            from ._subscription import warn_lost  # noqa: PLC0415 - zmq: see the module note

            warn_lost(self._lost_warning, f"worker {os.getpid()}", topic, lost, self._gaps.lost)

    def _drop(self, topic: object, why: str) -> None:
        self.undecodable += 1
        log.warning("worker %d: dropped a message on %r (%d so far): %s", os.getpid(), topic,
                    self.undecodable, why)

    # ---- the runtime's hooks ------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop | Reactor) -> None:
        """The worker's loop exists now: arm the reader, send what ``init`` published."""
        self._loop = loop
        if self._sub is not None:
            loop.add_reader(self._sub.FD, self._drain)
            self._drain()
        self.flush()

    def move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        """The worker moved loops (see ``WorkerContext.upgrade``); its readers moved along."""
        self._loop = loop

    def close(self) -> None:
        """Before the process exits: flush, then give ZeroMQ a bounded time to deliver."""
        if self._ctx is None or os.getpid() != self._pid:
            return
        try:
            self.flush()
        except Exception as exc:  # noqa: BLE001 - exiting anyway; say what is lost
            log.error("worker %d: events published before exit were not sent: %r",
                      os.getpid(), exc)
        if self._sub is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sub.FD)
            self._sub.close(0)
        if self._push is not None:
            self._push.close()  # LINGER: delivers what is queued, for a bounded time
        self._ctx.term()
