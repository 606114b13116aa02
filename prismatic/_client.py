"""Talking to a running node from plain Python code (the CLI, tests, scripts).

:func:`connect` gives a :class:`NodeConnection` for OTP's supervisor API on any supervisor in
the node's tree, addressed by path (``""`` is the root, ``"pipeline/workers"`` a nested
one) or by the name a supervisor registered (``"@pool"``, ``"@pool/sub"`` below it).
:func:`open_event_stream` subscribes to the node's lifecycle events;
:meth:`NodeConnection.publish` and :meth:`NodeConnection.subscribe` are pub/sub
(:mod:`._publisher`, :mod:`._subscription`, ``docs/pubsub.md``). All speak ZeroMQ to the
node's endpoints in its data directory; nothing here forks. Control requests carry the
node's cookie, read from ``<data dir>/cookie`` unless given (see :mod:`._cookie`).

A connection monitors and links like a process that traps exits (it is no process of the
tree: nothing can kill it): :meth:`NodeConnection.monitor` and :meth:`~NodeConnection.link`
take a Pid of any member or a name, and their ``Down``/``Exit`` notices come back on the
connection's hub connection, read with :meth:`NodeConnection.receive_notice`. They end
with the connection (:meth:`~NodeConnection.close`; the linked processes are not
signalled, as by ``unlink``); if the node itself is lost, each fires once with
``NoConnection()``.

Its parts: the control endpoint's calls (the supervisor API, tree, status, reload, metrics)
are :class:`~._control_calls.ControlCalls`, a base of :class:`NodeConnection`; the
lifecycle event stream is :mod:`._event_stream`; finding the node's data directory is
:mod:`._node_dir`. This module keeps the connection itself, messaging, monitors and links,
pub/sub and the event log's emit and replay, and still exports those parts' names.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
import zmq

from ._address import Pid, watch_target
from ._control_calls import ControlCalls
from ._cookie import read_cookie
from ._errors import NodeError
from ._event_stream import EventStream, open_event_stream
from ._exit import NoConnection
from ._hubclient import EMIT_TIMEOUT_S, HubClient
from ._node import control_address
from ._node_dir import check_running, resolve_node
from ._notices import Down, Exit
from ._outbox import Outbox, RequestId
from ._publisher import BackgroundPublisher
from ._pubsub_wire import publish_address
from ._replay import replay_log, republish_log
from ._subscription import Subscription
from .transports._messages import DemonitorReq, HubReply, LinkReq, MonitorReq, UnlinkReq

__all__ = ["connect", "NodeConnection", "open_event_stream", "EventStream", "resolve_node",
           "check_running"]


class NodeConnection(ControlCalls):
    """A synchronous connection to one node's control endpoint. Not thread-safe."""

    def __init__(self, node: str | Path, *, timeout: float = 10.0,
                 cookie: str | None = None) -> None:
        self.data_dir = resolve_node(node)
        check_running(self.data_dir)
        self._cookie = cookie if cookie is not None else read_cookie(self.data_dir)
        self.timeout = timeout
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(control_address(self.data_dir))
        self._refs = itertools.count(1)
        self._outbox: Outbox | None = None
        self._publisher: BackgroundPublisher | None = None  # started by the first publish
        # Monitors and links live in the hub while its connection lasts: mref -> (what was
        # monitored, its name); the linked pids.
        self._monitors: dict[int, tuple[Pid, Any]] = {}
        self._links: set[Pid] = set()
        self._losses = 0  # of the hub connection, as far as they were taken into account

    def close(self) -> None:
        """Close the connection; events published so far are delivered first."""
        if self._publisher is not None:
            self._publisher.close()
        if self._outbox is not None:
            self._outbox.close()
            self._outbox.hub.close()
        self._sock.close(0)
        self._ctx.term()

    def __enter__(self) -> NodeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- messaging: the same call / cast / send a worker has (see docs/messaging.md) ------------

    def _messaging(self) -> Outbox:
        # Straight to the process's mailbox on this host; the node is asked only for its name.
        if self._outbox is None:
            node = self.status().node
            self._outbox = Outbox(node, None, HubClient(node, self.timeout))
        return self._outbox

    def call(self, dest: Pid | str, msg: Any, timeout: float = 5.0) -> Any:
        """Call a process by Pid or registered name; as :meth:`Worker.call`."""
        return self._messaging().call(dest, msg, timeout)

    def send_request(self, dest: Pid | str, msg: Any, timeout: float = 5.0) -> RequestId:
        """A call without waiting (``gen_server:send_request``); see :meth:`receive_response`."""
        return self._messaging().send_request(dest, msg, timeout)

    def receive_response(self, request: RequestId, timeout: float = 5.0) -> Any:
        return self._messaging().receive_response(request, timeout)

    def cast(self, dest: Pid | str, msg: Any, timeout: float = 5.0) -> bool:
        return self._messaging().cast(dest, msg, timeout)

    def send(self, dest: Pid | str, msg: Any, timeout: float = 5.0) -> bool:
        return self._messaging().send(dest, msg, timeout)

    def whereis(self, name: str) -> Pid | None:
        return self._messaging().whereis(name)

    # ---- monitors and links: this connection acts as a process that traps exits ----------------

    def monitor(self, dest: Any) -> int:
        """Monitor ``dest`` as :meth:`Worker.monitor` does (a Pid of any member, ``"name"``,
        ``("name", "node")`` or ``Global("name")``, resolved now): one
        :class:`~prismatic.Down` comes to :meth:`receive_notice` when it exits, at once if
        it is not alive (``NoProc()``) or its node is unreachable (``NoConnection()``).
        Returns the monitor's ref. The monitor ends with this connection."""
        outbox = self._messaging()
        target, name = watch_target(dest, outbox.node)
        me = Pid(outbox.node, os.getpid())  # completed by the hub to this process's Pid
        reply = self._hub_request(lambda ref: MonitorReq(ref, me, target, name, True))
        self._monitors[reply.value] = (target, name)
        return int(reply.value)

    def demonitor(self, ref: int) -> None:
        """Drop a monitor; a Down already received stays queued (no flush option)."""
        outbox = self._messaging()
        self._monitors.pop(ref, None)
        self._hub_request(lambda r: DemonitorReq(r, Pid(outbox.node, os.getpid()), ref))

    def link(self, dest: Any) -> None:
        """Link this connection to ``dest`` (a Pid or a name, as :meth:`monitor`).

        A connection is not a process of the tree and cannot be killed by an exit signal:
        it traps exits. When ``dest`` exits (with any reason, ``NoConnection()`` when its
        node becomes unreachable) an :class:`~prismatic.Exit` comes to
        :meth:`receive_notice`, at once with ``NoProc()`` if it is not alive. The other
        direction: :meth:`close` (or this process's exit) removes the link as
        :meth:`unlink` does, so ``dest`` is not signalled (a process that does not trap
        exits ignores a normal exit in OTP too)."""
        outbox = self._messaging()
        b, name = watch_target(dest, outbox.node)
        reply = self._hub_request(lambda ref: LinkReq(ref, Pid(outbox.node, os.getpid()), b,
                                                      name, True))
        resolved = msgspec.convert(reply.value, Pid | None) if reply.value is not None else None
        self._links.add(resolved or b)

    def unlink(self, pid: Pid) -> None:
        outbox = self._messaging()
        self._links = {k for k in self._links if not pid.names(k)}
        self._hub_request(lambda ref: UnlinkReq(ref, Pid(outbox.node, os.getpid()), pid))

    def receive_notice(self, timeout: float = 5.0) -> Down | Exit | None:
        """The next :class:`~prismatic.Down` or :class:`~prismatic.Exit` of this
        connection's monitors and links, in the order they fired; None if none comes within
        ``timeout`` s. If the node is lost, each monitor and link still open fires once with
        ``NoConnection()``; after those, NodeError."""
        hub = self._messaging().hub
        try:
            notice = hub.receive_notice(timeout)
        except NodeError:
            notice = None
        self._hub_lost(hub)
        if notice is None and hub.notices:
            notice = hub.notices.popleft()
        if notice is None and hub.sock is None and hub.losses:
            raise NodeError(f"lost the hub of node {hub.node!r} (the node stopped)")
        if isinstance(notice, Down):
            self._monitors.pop(notice.ref, None)
        elif isinstance(notice, Exit):
            self._links = {k for k in self._links if not k.names(notice.pid)}
        return notice

    def _hub_request(self, make: Callable[[int], Any]) -> HubReply:
        hub = self._messaging().hub
        try:
            reply = hub.request(make)
        finally:
            self._hub_lost(hub)
        if reply.error:
            raise NodeError(f"the hub of {self.node!r} refused: {reply.error}: {reply.detail}")
        return reply

    def _hub_lost(self, hub: HubClient) -> None:
        """If the hub connection broke (the node stopped) since the last look, what it held
        fires NoConnection, once. (Polled, not a callback: a callback from the hub client
        back to this connection would make a reference cycle, and a zmq context freed by
        the cyclic collector can hang in its destructor.)"""
        if hub.losses == self._losses:
            return
        self._losses = hub.losses
        hub.notices.extend(Down(ref, pid, NoConnection(), name)
                           for ref, (pid, name) in sorted(self._monitors.items()))
        hub.notices.extend(Exit(pid, NoConnection()) for pid in sorted(self._links))
        self._monitors.clear()
        self._links.clear()

    def whereis_global(self, name: str) -> Pid | None:
        """The Pid holding global name ``name`` anywhere in the cluster, or None."""
        return self._messaging().whereis_global(name)

    def replay(self, handler: Callable[[Any], object], **filters: Any) -> int:
        """Re-deliver the node's logged events matching ``filters`` (``start_seq``,
        ``end_seq``, ``since_ns``, ``until_ns``, ``pattern``, ``source``, ``limit``) to
        ``handler``, oldest first; how many. Reads the log directly (same host)."""
        return replay_log(self.data_dir, handler, **filters)

    def republish(self, *, prefix: str = "replay", **filters: Any) -> int:
        """Publish the matching logged events again, under ``<prefix>.<topic>``; how many.
        Returns once they are handed to the node."""
        count = republish_log(self.data_dir, self.publish_many, prefix=prefix, **filters)
        self.flush()
        return count

    def emit(self, topic: str, payload: Any, *, correlation_id: str | None = None) -> int:
        """Append one event to the node's durable log; its seq once synced (the ack)."""
        return self.emit_many(topic, [payload], correlation_id=correlation_id)

    def emit_many(self, topic: str, payloads: list[Any], *,
                  correlation_id: str | None = None) -> int:
        return self._messaging().hub.emit(topic, list(payloads), "client", correlation_id,
                                          max(self.timeout, EMIT_TIMEOUT_S))

    def resolve(self, dest: Pid | str) -> Pid | None:
        """The Pid ``dest`` stands for: a Pid as is; a name as this connection last resolved
        it (no round trip after a call, cast or send to it), else asked of the hub."""
        return self._messaging().resolve(dest)

    @property
    def node(self) -> str:
        """The node's name (asked once per connection)."""
        return self._messaging().node

    # ---- pub/sub (docs/pubsub.md) ---------------------------------------------------------------

    def publish(self, topic: str, payload: Any) -> None:
        """Publish ``payload`` (anything msgpack encodes) under ``topic``; returns at once.

        Raises TopicError for a malformed topic and PubSubError for a payload that cannot be
        encoded. Events go out in order from a background thread; :meth:`flush` waits for it.
        """
        publisher = self._publisher or self._start_publisher()
        publisher.publish(topic, payload)

    def publish_many(self, topic: str, payloads: Iterable[Any]) -> None:
        """Publish several events under one topic, in order (the batched form of publish)."""
        publisher = self._publisher or self._start_publisher()
        publisher.publish_many(topic, payloads)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything published so far was handed to ZeroMQ; False on timeout."""
        return self._publisher.flush(timeout) if self._publisher is not None else True

    def _start_publisher(self) -> BackgroundPublisher:
        self._publisher = BackgroundPublisher(self._ctx, publish_address(self.data_dir))
        return self._publisher

    def subscribe(self, pattern: str) -> Subscription:
        """Events whose topic matches ``pattern`` (``*`` one word, ``#`` zero or more), from
        the moment this returns; close the subscription when done."""
        return Subscription(self.data_dir, pattern, timeout=self.timeout)


def connect(node: str | Path, *, timeout: float = 10.0,
            cookie: str | None = None) -> NodeConnection:
    """Connect to a running node by data directory or node name (cookie read from there)."""
    return NodeConnection(node, timeout=timeout, cookie=cookie)
