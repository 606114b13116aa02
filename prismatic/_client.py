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
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import zmq

from ._address import Pid, watch_target
from ._childspec import ChildSpec, spec_from_wire
from ._program import Program
from ._control import (
    CONTROL_MAX_BYTES, METRICS_FAILED, UNAUTHORIZED, ControlReply, MetricsCall, NodeStatus,
    ReloadCall, StatusCall, SupervisorCall, TreeCall, TreeRow,
)
from ._cookie import CookieRefused, read_cookie
from ._errors import (
    ChildSpecError, ControlError, NodeError, PubSubError, StartError, SupervisorError,
)
from ._exit import NoConnection
from ._hubclient import EMIT_TIMEOUT_S, HubClient
from ._node import control_address, default_data_dir
from ._nodelock import lock_holder
from ._notices import Down, Exit
from ._outbox import Outbox, RequestId
from ._publisher import BackgroundPublisher
from ._replay import replay_log, republish_log
from ._pubsub_wire import (
    HELLO_PREFIX, GapCounter, array_length, events_address, publish_address, read_stamp,
)
from ._subscription import Subscription, await_hello, warn_lost
from ._throttle import ThrottledWarning
from .supervisors._events import (
    ChildInfo, CountChildren, DeleteChild, Err, GetChildSpec, Ok, RestartChild, StartChild,
    StartDynamic, TerminateChild, WhichChild, WhichChildren,
)
from .transports._frames import LifecycleFrame
from .transports._messages import DemonitorReq, HubReply, LinkReq, MonitorReq, UnlinkReq

__all__ = ["connect", "NodeConnection", "open_event_stream", "EventStream", "resolve_node",
           "check_running"]

log = logging.getLogger(__name__)
_encoder = msgspec.msgpack.Encoder()
_reply_decoder = msgspec.msgpack.Decoder(ControlReply)
_result_decoder = msgspec.msgpack.Decoder(Ok | Err)


def resolve_node(node: str | Path) -> Path:
    """A node's data directory, from the directory itself or the node's name: anything that
    looks like a path (``./data``, ``a/b``, ``~/x``, ``.``) or is a directory here is one."""
    text = str(node)
    p = Path(text).expanduser()
    if isinstance(node, Path) or p.is_dir() or "/" in text or text.startswith((".", "~")):
        return p
    return default_data_dir(text)


def check_running(data_dir: Path) -> int:
    """The pid of the node running in ``data_dir``; ControlError at once if none is (told
    by the data directory's lock, see :mod:`._nodelock`: no waiting for an answer)."""
    if not data_dir.is_dir():
        raise ControlError(f"no node is running in {data_dir.resolve()} (no such directory)")
    pid = lock_holder(data_dir)
    if pid is None or not (data_dir / "control.sock").exists():
        raise ControlError(f"no node is running in {data_dir.resolve()}")
    return pid


class NodeConnection:
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

    def _call(self, make: Callable[[int, str], Any], timeout: float | None = None) -> Any:
        return self._call_ok(make, timeout).value

    def _call_ok(self, make: Callable[[int, str], Any], timeout: float | None = None) -> Ok:
        ref = next(self._refs)
        request = _encoder.encode(make(ref, self._cookie))
        if len(request) > CONTROL_MAX_BYTES:  # the node would drop the connection unanswered
            raise ControlError(f"request of {len(request)} bytes, over the control limit of "
                               f"{CONTROL_MAX_BYTES}")
        self._sock.send(request)
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1):
                raise ControlError(f"node at {self.data_dir} did not answer within "
                                   f"{timeout or self.timeout:.1f}s")
            reply = _reply_decoder.decode(self._sock.recv())
            if reply.ref != ref:
                continue  # the answer to an earlier call that timed out
            result = _result_decoder.decode(reply.result)
            if isinstance(result, Err):
                if result.reason == UNAUTHORIZED:
                    raise CookieRefused(f"node at {self.data_dir} refused the request: "
                                        f"{result.detail}")
                if result.reason == "failed_to_start_child":
                    raise StartError(result.detail, result.exit_reason)
                if result.reason == METRICS_FAILED:
                    raise ControlError(f"node at {self.data_dir} could not produce its "
                                       f"metrics: {result.detail}")
                raise SupervisorError(result.reason, result.detail)
            return result

    def _sup(self, sup: str, op: Any, timeout: float | None = None,
             node: str | None = None) -> Any:
        return self._sup_ok(sup, op, timeout, node).value

    def _sup_ok(self, sup: str, op: Any, timeout: float | None = None,
                node: str | None = None) -> Ok:
        """``sup`` is a path (``"a/b"``, ``""`` the root) or ``"@name"``, optionally with a
        path below the named supervisor (``"@pool/sub"``); ``node``: another member of the
        cluster, where the request is carried out."""
        name = ""
        if sup.startswith("@"):
            name, _, sup = sup[1:].partition("/")
            if not name:
                raise SupervisorError("badarg", "'@' must be followed by a supervisor name")
        path = tuple(p for p in sup.split("/") if p)
        raw = msgspec.Raw(_encoder.encode(op))
        return self._call_ok(lambda ref, cookie: SupervisorCall(ref, path, raw, cookie,
                                                                name=name, node=node or ""),
                             timeout)

    # ---- OTP's supervisor API -----------------------------------------------------------------
    # ``node=``: a member of this node's cluster, where the operation is carried out (this
    # node forwards it over the mesh); None is this node.

    def which_children(self, sup: str = "", *, node: str | None = None) -> list[ChildInfo]:
        return msgspec.convert(self._sup(sup, WhichChildren(), node=node), list[ChildInfo])

    def count_children(self, sup: str = "", *, node: str | None = None) -> dict[str, int]:
        return msgspec.convert(self._sup(sup, CountChildren(), node=node), dict[str, int])

    def which_child(self, sup: str, child: str | int) -> ChildInfo:
        """OTP 26's ``which_child``: the row ``which_children`` has for ``child`` (an id, or
        the pid of a simple_one_for_one child); ``SupervisorError('not_found')`` if none."""
        return msgspec.convert(self._sup(sup, WhichChild(child)), ChildInfo)

    def get_childspec(self, sup: str, child: str | int) -> ChildSpec:
        """OTP's ``get_childspec``: the validated spec the supervisor holds for ``child``
        (an id, or a simple_one_for_one child's pid). A ``start`` that was a class or a
        function comes back as the ``"module:qualname"`` naming it."""
        return spec_from_wire(self._sup(sup, GetChildSpec(child)))

    def start_child(self, sup: str, spec_or_args: ChildSpec | tuple[Any, ...] | list[Any],
                    timeout: float | None = None, *, node: str | None = None) -> int | None:
        """Start a child from a spec, or (simple_one_for_one) from extra args; its pid, or
        None if its ``init`` raised Ignore. With ``node=``, ``start`` must be importable
        there (a ``module:attr`` reference: code does not travel)."""
        return self.start_child_info(sup, spec_or_args, timeout, node=node)[0]

    def start_child_info(self, sup: str,
                         spec_or_args: ChildSpec | tuple[Any, ...] | list[Any],
                         timeout: float | None = None, *,
                         node: str | None = None) -> tuple[int | None, Any]:
        """As :meth:`start_child`, with what the worker's ``init`` returned beside the pid
        (OTP's ``{ok, Pid, Info}``; None when it returned nothing)."""
        if isinstance(spec_or_args, ChildSpec):
            ok = self._sup_ok(sup, StartChild(_wire_spec(spec_or_args)), timeout, node)
        else:
            ok = self._sup_ok(sup, StartDynamic(tuple(spec_or_args)), timeout, node)
        return msgspec.convert(ok.value, int | None), ok.info

    def terminate_child(self, sup: str, child: str | int, timeout: float | None = None, *,
                        node: str | None = None) -> None:
        self._sup(sup, TerminateChild(child), timeout, node)

    def restart_child(self, sup: str, child: str, timeout: float | None = None, *,
                      node: str | None = None) -> int | None:
        return self.restart_child_info(sup, child, timeout, node=node)[0]

    def restart_child_info(self, sup: str, child: str, timeout: float | None = None, *,
                           node: str | None = None) -> tuple[int | None, Any]:
        """As :meth:`restart_child`, with the new process's start info (as
        :meth:`start_child_info`)."""
        ok = self._sup_ok(sup, RestartChild(child), timeout, node)
        return msgspec.convert(ok.value, int | None), ok.info

    def delete_child(self, sup: str, child: str, *, node: str | None = None) -> None:
        self._sup(sup, DeleteChild(child), node=node)

    # ---- the node -----------------------------------------------------------------------------

    def tree(self, *, node: str | None = None) -> list[TreeRow]:
        """The node's picture of the tree, depth-first; ``last_exit`` decoded to a typed
        exit reason (never the wire's dict). ``node=``: another member's tree."""
        return msgspec.convert(self._call(lambda ref, cookie: TreeCall(ref, cookie, node or "")),
                               list[TreeRow])

    def status(self, *, node: str | None = None) -> NodeStatus:
        return msgspec.convert(
            self._call(lambda ref, cookie: StatusCall(ref, cookie, node or "")), NodeStatus)

    def reload(self, timeout: float | None = None) -> dict[str, Any]:
        """Re-read the node's config file and apply its tree (``prismatic reload``, see
        ``prismatic._config_reload``): what was started, stopped, restarted... A file that
        does not load is refused whole: ``SupervisorError('reload_refused', line)``."""
        return dict(self._call(lambda ref, cookie: ReloadCall(ref, cookie), timeout))

    def metrics(self) -> str:
        """The node's metrics in Prometheus text format (also without an HTTP endpoint)."""
        return self._call(MetricsCall)

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

    def pid_of(self, path: str) -> int | None:
        """The pid of the process at ``path`` in the tree (``""`` is the root)."""
        for row in self.tree():
            if row.path == path:
                return row.pid
        return None


def connect(node: str | Path, *, timeout: float = 10.0,
            cookie: str | None = None) -> NodeConnection:
    """Connect to a running node by data directory or node name (cookie read from there)."""
    return NodeConnection(node, timeout=timeout, cookie=cookie)


def _wire_spec(spec: ChildSpec) -> ChildSpec:
    start = spec.start
    if isinstance(start, Program):
        return spec  # plain data: it crosses the wire as it is
    if not isinstance(start, str):
        module = getattr(start, "__module__", None)
        qualname = getattr(start, "__qualname__", None)
        if not module or not qualname or "<" in qualname or module == "__main__":
            raise ChildSpecError("start", start, "must be importable by the node "
                                 "(a module-level class or function, or 'module:attr')")
        start = f"{module}:{qualname}"
    return msgspec.structs.replace(spec, start=start)


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
