"""Connections libzmq itself cut on the node's endpoints: counted and logged.

Role: libzmq enforces ``ZMQ_MAXMSGSIZE`` (and the ZMTP protocol) below the application: a
peer that sends a frame over an endpoint's cap has its connection closed as soon as the
frame's header arrives, and the application sees nothing but the socket monitor's
``ZMQ_EVENT_DISCONNECTED``. libzmq 4.3.5 reports exactly the same event, with the same value
(the connection's descriptor, no errno), when a peer simply hangs up, and no
``HANDSHAKE_FAILED_*`` event once the handshake is done. So the event alone cannot tell an
attack from a goodbye; what can is whether the *peer* was still connected when libzmq let go.

Protocol: :class:`ConnectionDrops` watches the monitor of each socket given to
:meth:`~ConnectionDrops.watch` (the node's ``control.sock``, ``publish.sock``,
``events.sock`` and the mesh's listener) for ``ACCEPTED`` and ``DISCONNECTED`` only: its cost
is per connection, never per message. On ``ACCEPTED`` it duplicates the accepted
descriptor, so the connection stays open after libzmq closes its own descriptor. On
``DISCONNECTED`` it peeks at that copy (non-blocking, nothing consumed):

* end of stream or a reset: the peer hung up first, an ordinary disconnect;
* data waiting or nothing to read yet: the peer is still there, so libzmq cut it; once
  libzmq has closed its descriptor (so that the copy is of the connection that ended, not of
  a newer one that reused the descriptor's number) the drop is counted per endpoint and
  logged, throttled (one line per 10 s), with the peer's pid (``ipc``) or address (``tcp``).

Then the copy is closed, which is when the peer sees the close. A descriptor whose copy could
not be taken (libzmq closed it before the watcher looked, descriptors ran out) or whose
number another live connection holds by then is counted as unchecked, never as a drop. A
drop is therefore always real; what may go unseen is a connection cut before the watcher
got to it, and a peer that sends an oversized frame whose whole rest libzmq read in one go
(it reads 8 KiB at a time) and hangs up at once: that one looks like a goodbye.

Everything runs on one daemon thread of its own, with plain (non-asyncio) sockets: it never
runs on, or waits for, the node's loop. An exception while handling one event is logged
(throttled) and counted (``errors``) and the next event is served. :meth:`close` must come
before the watched sockets close: closing a socket disconnects its live peers, which would
all look cut.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import zmq

from ._nodeinfo import peer_creds
from ._throttle import throttle_for

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["ConnectionDrops", "Verdict", "peek_verdict", "EVENTS"]

log = logging.getLogger(__name__)
EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
RELEASE_WAIT_S = 0.05  # libzmq closes its descriptor right after reporting the disconnect
_GONE = (errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE, errno.ECONNABORTED)


class Verdict(enum.Enum):
    LEFT = "left"  # the peer hung up: an ordinary disconnect
    DROPPED = "dropped"  # the peer was still connected: libzmq cut it
    UNCHECKED = "unchecked"  # no copy of the connection to look at


def peek_verdict(peeked: bytes | None, err: int | None) -> Verdict:
    """What a non-blocking ``MSG_PEEK`` on our copy of a connection libzmq has closed says:
    ``peeked`` the bytes it returned, or ``err`` its errno."""
    if err is None:
        return Verdict.DROPPED if peeked else Verdict.LEFT  # b"": the peer's end of stream
    if err in (errno.EAGAIN, errno.EWOULDBLOCK):
        return Verdict.DROPPED  # open, and quiet: the peer did not hang up
    return Verdict.LEFT if err in _GONE else Verdict.UNCHECKED


class _Copy(NamedTuple):
    sock: socket.socket
    ident: tuple[int, int]  # st_dev, st_ino of the connection's socket
    peer: str


class _Watched:
    __slots__ = ("label", "monitor", "on_event", "copies", "local", "cap")

    def __init__(self, label: str, monitor: zmq.Socket[bytes],
                 on_event: Callable[[int, int], bool] | None, local: str | int | None,
                 cap: int) -> None:
        self.label = label
        self.monitor = monitor
        self.on_event = on_event
        self.copies: dict[int, _Copy] = {}  # libzmq's descriptor -> our copy of it
        self.local = local  # what an accepted connection's getsockname() shows
        self.cap = cap


class ConnectionDrops:
    """Counts, per endpoint label, the connections libzmq closed while the peer was still
    connected (see the module). Invariant: each copy in ``copies`` is closed exactly once,
    on its ``DISCONNECTED``, on :meth:`close`, or when its descriptor is reported again."""

    def __init__(self) -> None:
        self.dropped: dict[str, int] = {}
        self.unchecked: dict[str, int] = {}
        self.left: dict[str, int] = {}  # ordinary disconnects (not exported: one per peer)
        self.errors = 0
        self._watched: list[_Watched] = []
        self._added: list[_Watched] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._serial = 0

    # ---- the owner's side (any thread) --------------------------------------------------------

    def watch(self, sock: zmq.Socket[Any], label: str, events: int = EVENTS,
              on_event: Callable[[int, int], bool] | None = None) -> None:
        """Watch bound ``sock`` as ``label``; call before its peers connect. ``on_event`` sees
        every monitor event (``events``, at least :data:`EVENTS`) first, on the watcher's
        thread; True for a ``DISCONNECTED`` means it accounted for that connection itself (a
        refused handshake), which is then not judged here."""
        self._serial += 1
        addr = f"inproc://prismatic-connection-drops-{id(self)}-{self._serial}"
        sock.monitor(addr, events | EVENTS)
        monitor: zmq.Socket[bytes] = zmq.Context.shadow(sock.context.underlying).socket(zmq.PAIR)
        monitor.linger = 0
        monitor.connect(addr)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        watched = _Watched(label, monitor, on_event, _local_name(endpoint),
                           int(sock.getsockopt(zmq.MAXMSGSIZE)))
        self.dropped.setdefault(label, 0)
        self.unchecked.setdefault(label, 0)
        self.left.setdefault(label, 0)
        with self._lock:
            self._added.append(watched)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="connection drops",
                                            daemon=True)
            self._thread.start()
        else:
            with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
                os.write(self._wake_w, b"w")

    def close(self) -> None:
        """Stop watching and close every copy; before the watched sockets close."""
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"s")
        if self._thread is not None:
            self._thread.join(5.0)
        if self._thread is None or not self._thread.is_alive():
            os.close(self._wake_r)
            os.close(self._wake_w)

    def watching(self, label: str) -> int:
        """The connections to ``label`` the watcher holds a copy of now."""
        return sum(len(w.copies) for w in list(self._watched) if w.label == label)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        """Prometheus series (the node registers this object as a collector; imported at the
        first scrape, see prismatic._metrics)."""
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily, GaugeMetricFamily,
        )

        dropped = CounterMetricFamily(
            "prismatic_zmq_connections_dropped", "Connections libzmq closed while the peer "
            "was still connected (a frame over the endpoint's cap, or another ZMTP protocol "
            "error), by endpoint", labels=["endpoint"])
        unchecked = CounterMetricFamily(
            "prismatic_zmq_connections_unchecked", "Connections closed before they could be "
            "told apart as dropped or left (not counted as dropped), by endpoint",
            labels=["endpoint"])
        watching = GaugeMetricFamily(
            "prismatic_zmq_connections_watched", "Open connections the drop watcher holds a "
            "copy of (each costs the node one more descriptor), by endpoint",
            labels=["endpoint"])
        for label in list(self.dropped):
            dropped.add_metric([label], self.dropped[label])
            unchecked.add_metric([label], self.unchecked.get(label, 0))
            watching.add_metric([label], self.watching(label))
        yield dropped
        yield unchecked
        yield watching
        errors = CounterMetricFamily("prismatic_zmq_connection_watch_errors",
                                     "Socket monitor events whose handling raised (logged)")
        errors.add_metric([], self.errors)
        yield errors

    # ---- the watcher's thread ----------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        by_monitor: dict[zmq.Socket[bytes], _Watched] = {}
        try:
            while not self._stopping:
                with self._lock:
                    added, self._added = self._added, []
                for w in added:
                    self._watched.append(w)
                    by_monitor[w.monitor] = w
                    poller.register(w.monitor, zmq.POLLIN)
                try:
                    ready = poller.poll()
                except zmq.ZMQError as exc:
                    self._caught("poll", exc)
                    time.sleep(0.1)  # never a busy loop
                    continue
                for sock, _ in ready:
                    if sock == self._wake_r:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                    elif not self._stopping:
                        self._drain(by_monitor[sock])
        finally:
            # Monitors added since the last turn of the loop are closed too: one left open
            # holds the node's context term() forever (a node whose root failed at once
            # stops before this thread first ran: it hung on exit).
            with self._lock:
                added, self._added = self._added, []
            self._watched.extend(added)
            for w in self._watched:
                for copy in w.copies.values():
                    copy.sock.close()
                w.copies.clear()
                w.monitor.close(0)

    def _drain(self, w: _Watched) -> None:
        while True:
            try:
                frames = w.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                self._caught(w.label, exc)
                return
            try:
                head = bytes(frames[0])
                self._on_event(w, int.from_bytes(head[:2], "little"),
                               int.from_bytes(head[2:6], "little"))
            except Exception as exc:  # noqa: BLE001 - one event must not stop the watcher
                self._caught(w.label, exc)

    def _on_event(self, w: _Watched, event: int, fd: int) -> None:
        accounted = False
        if w.on_event is not None:
            try:
                accounted = w.on_event(event, fd)
            except Exception as exc:  # noqa: BLE001 - the hook's failure is not the check's
                self._caught(w.label, exc)
        if event == zmq.EVENT_ACCEPTED:
            self._take_copy(w, fd)
        elif event == zmq.EVENT_DISCONNECTED:
            copy = w.copies.pop(fd, None)
            try:
                if accounted:
                    pass  # a refused handshake: counted by the hook
                elif copy is None:
                    self.unchecked[w.label] += 1
                else:
                    self._judge(w, fd, copy)
            finally:
                if copy is not None:
                    copy.sock.close()

    def _take_copy(self, w: _Watched, fd: int) -> None:
        old = w.copies.pop(fd, None)
        if old is not None:  # its DISCONNECTED never came: a copy of nothing we can judge
            old.sock.close()
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            return  # closed already (or no descriptor left): unchecked at its DISCONNECTED
        try:
            if not _accepted_at(sock, w.local):
                sock.close()  # the number holds another file by now
                return
            st = os.fstat(sock.fileno())
            w.copies[fd] = _Copy(sock, (st.st_dev, st.st_ino), _peer_of(sock))
        except OSError:
            sock.close()

    def _judge(self, w: _Watched, fd: int, copy: _Copy) -> None:
        try:
            verdict = peek_verdict(copy.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT),
                                   None)
        except OSError as exc:
            verdict = peek_verdict(None, exc.errno)
        if verdict is Verdict.DROPPED and not _released(fd, copy.ident):
            verdict = Verdict.UNCHECKED  # the number is a newer, live connection's
        if verdict is Verdict.LEFT:
            self.left[w.label] += 1
        elif verdict is Verdict.UNCHECKED:
            self.unchecked[w.label] += 1
        elif verdict is Verdict.DROPPED:
            self.dropped[w.label] += 1
            cap = f"{w.cap} bytes" if w.cap >= 0 else "the cap"
            throttle_for(log, "zmq drops").warn(
                "%s: libzmq cut a connection from %s that was still open: a frame over %s or "
                "another ZeroMQ protocol error (prismatic_zmq_connections_dropped_total)",
                w.label, copy.peer, cap)

    def _caught(self, where: str, exc: BaseException) -> None:
        self.errors += 1
        throttle_for(log, "zmq drop watch").warn("connection drops (%s): an event raised, "
                                                 "skipped: %r", where, exc, exc_info=exc)


def _released(fd: int, ident: tuple[int, int]) -> bool:
    """Whether libzmq's descriptor ``fd`` no longer holds the socket ``ident``, waiting a
    little: libzmq reports the disconnect just before it closes the descriptor."""
    deadline = time.monotonic() + RELEASE_WAIT_S
    while True:
        try:
            st = os.fstat(fd)
        except OSError:
            return True
        if (st.st_dev, st.st_ino) != ident:
            return True
        if time.monotonic() >= deadline:
            return False
        select.select([], [], [], 0.001)


def _local_name(endpoint: str) -> str | int | None:
    """What identifies a connection accepted at ``endpoint``: its ``ipc://`` path or its
    ``tcp://`` port (None: nothing checked)."""
    if endpoint.startswith("ipc://"):
        return endpoint[len("ipc://"):]
    if endpoint.startswith("tcp://"):
        return int(endpoint.rsplit(":", 1)[1])
    return None


def _accepted_at(sock: socket.socket, local: str | int | None) -> bool:
    """Whether ``sock`` is a connection accepted at the endpoint ``local`` names."""
    if isinstance(local, str):
        return sock.family == socket.AF_UNIX and sock.getsockname() == local
    if isinstance(local, int):
        return sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getsockname()[1] == local
    return True


def _peer_of(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        pid, uid = peer_creds(sock)
        return f"pid {pid} (uid {uid})"
    try:
        host, port, *_ = sock.getpeername()
    except (OSError, ValueError):
        return "an unknown address"
    return f"{host}:{port}"

