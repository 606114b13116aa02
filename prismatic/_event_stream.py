"""A node's lifecycle events as a client reads them: :class:`EventStream`.

A SUB socket on the node's events endpoint, subscribed by topic prefix
(``supervisor.<path>.<child>.<kind>``); it returns from its constructor only once the node
answered its hello (:func:`~._subscription.await_hello`), so nothing published after is
missed. Events are decoded as :class:`~.transports._frames.LifecycleFrame`; what the node
dropped for this stream is counted from the topics' sequence stamps (:attr:`~EventStream.lost`),
what is malformed or no lifecycle event is skipped, counted and logged.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec
import zmq

from ._errors import ControlError, PubSubError
from ._node_dir import resolve_node
from ._pubsub_wire import HELLO_PREFIX, GapCounter, array_length, events_address, read_stamp
from ._subscription import await_hello, warn_lost
from ._throttle import ThrottledWarning
from .transports._frames import LifecycleFrame

__all__ = ["EventStream", "open_event_stream"]

log = logging.getLogger("prismatic._client")  # the client's log: its lines name the client


class EventStream:
    """A subscription to a node's lifecycle events (``supervisor.<path>.<child>.<kind>``)
    by topic prefix, decoded as :class:`LifecycleFrame`. Pub/sub on any topic pattern is
    :class:`~prismatic.Subscription`; both use the same wire format and handshake.
    :attr:`lost`: lifecycle events the node dropped for this stream (it fell the node's
    high-water mark behind), counted from the topics' sequence stamps; :attr:`skipped`:
    messages dropped here (not lifecycle events, or malformed)."""

    def __init__(self, node: str | Path, prefix: str = "supervisor.") -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self._sock.connect(events_address(resolve_node(node)))
        self._decoder = msgspec.msgpack.Decoder(list[LifecycleFrame])
        self._pending: collections.deque[LifecycleFrame] = collections.deque()
        self.skipped = 0  # messages under supervisor. that are not lifecycle events
        self._gaps = GapCounter()
        self._lost_warning = ThrottledWarning(log)
        # Return only once the node has answered our hello: from then on nothing is missed.
        try:
            await_hello(self._sock, self._take)
        except PubSubError as exc:
            self.close()
            raise ControlError(f"the node's event stream did not answer the subscription: "
                               f"{exc}") from None

    @property
    def lost(self) -> int:
        return self._gaps.lost

    def _take(self, frames: list[bytes]) -> None:
        if not frames[0].startswith(b"supervisor."):
            return  # a short prefix also matches other pub/sub topics
        stamp = read_stamp(frames[2]) if len(frames) == 3 else None
        if stamp is None:
            self.skipped += 1
            log.warning("event stream: skipped %r, not a message of this wire version (%d so "
                        "far)", frames[0], self.skipped)
            return
        topic = frames[0].decode()
        try:
            events = self._decoder.decode(frames[1])
        except (ValueError, RecursionError) as exc:  # a user's own event under supervisor.
            self.skipped += 1
            log.warning("event stream: skipped %r, not a lifecycle event (%d so far): %s",
                        frames[0], self.skipped, exc)
            n = array_length(frames[1])
        else:
            self._pending.extend(events)
            n = len(events)
        if lost := self._gaps.seen(topic, stamp[0], stamp[1], max(n, 1)):
            warn_lost(self._lost_warning, "event stream", topic, lost, self._gaps.lost)

    def next(self, timeout: float) -> LifecycleFrame | None:
        if not self._pending:
            if not self._sock.poll(int(timeout * 1000)):
                return None
            frames = self._sock.recv_multipart()
            if frames[0].startswith(HELLO_PREFIX):
                return None  # another subscriber's hello that matched our prefix
            self._take(frames)
        return self._pending.popleft() if self._pending else None

    def wait_for(self, match: Callable[[LifecycleFrame], bool], timeout: float) -> LifecycleFrame:
        """The first event that matches, or ControlError at the deadline."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ev = self.next(left)
            if ev is not None and match(ev):
                return ev
        raise ControlError(f"no matching lifecycle event within {timeout:.1f}s")

    def close(self) -> None:
        self._sock.close(0)
        self._ctx.term()


@contextmanager
def open_event_stream(node: str | Path, prefix: str = "supervisor.") -> Iterator[EventStream]:
    stream = EventStream(node, prefix)
    try:
        yield stream
    finally:
        stream.close()
