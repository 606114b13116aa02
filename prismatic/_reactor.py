"""A minimal event loop for workers whose handlers are all plain functions.

Why not uvloop for every worker: a uvloop loop costs a fresh process ~0.9 MiB of private
memory and ~200 copy-on-write faults (about a millisecond) to create, and most workers never
await anything. A worker whose ``init``, ``handle_*`` and ``terminate`` are all plain
functions runs on this :class:`Reactor` instead: one ``epoll``, a timer heap, a ready queue.

It implements only what the worker runtime, the mailbox and the pub/sub hooks call, with
asyncio's names and meanings (``add_reader``, ``remove_reader``, ``call_soon``,
``call_later``, ``add_signal_handler``, ``time``, ``is_running``, ``is_closed``). If a plain
handler returns an awaitable after all, the runtime moves the worker onto uvloop mid-flight
(:meth:`Reactor.hand_over`): readers, timers and queued callbacks keep their order.

Invariants: callbacks run one at a time, in the order they became ready; a callback that
raises is logged and counted (``errors``) and never stops the loop (asyncio does the same).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Reactor", "Handle", "TimerHandle", "open_signal_wakeup"]

log = logging.getLogger(__name__)


class Handle:
    """A scheduled callback (``asyncio.Handle``'s ``cancel``/``cancelled``)."""

    __slots__ = ("callback", "args", "_cancelled")

    def __init__(self, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.callback = callback
        self.args = args
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled


class TimerHandle(Handle):
    """A callback due at ``when()`` on the monotonic clock."""

    __slots__ = ("_when",)

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        super().__init__(callback, args)
        self._when = when

    def when(self) -> float:
        return self._when


def open_signal_wakeup() -> tuple[socket.socket, socket.socket]:
    """A non-blocking socket pair whose write end is this process's signal wakeup fd: the
    read end turns readable with a byte per signal number, for a loop to wait on (the
    reactor's, and a supervisor's selector loop)."""
    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    return r, w


def signals_received(wake_r: socket.socket) -> bytes:
    """The signal numbers the wakeup fd (:func:`open_signal_wakeup`) carried since the last
    call, a byte each (b"" if none)."""
    try:
        return wake_r.recv(64)
    except BlockingIOError:
        return b""


def readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` is readable within ``timeout`` seconds (a pidfd: its process exited).
    ``poll``, not ``select.select``: a process holding over 1,024 descriptors (a big
    supervisor) has pidfds past FD_SETSIZE, where select.select raises ValueError."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


# The C function itself: signal.signal wraps it in enum conversions that cost every worker
# ~25 copy-on-write faults as it starts.
_set_handler: Callable[[int, Any], Any] = getattr(sys.modules.get("_signal"), "signal",
                                                 signal.signal)


def _ignore(*_: Any) -> None:
    """The Python-level handler of a signal the wakeup fd carries."""


class Reactor:
    """See the module doc. Not thread-safe: one worker, one thread."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, Handle] = {}
        self._ready: collections.deque[Handle] = collections.deque()
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._signals: dict[int, Handle] = {}
        self._wakeup: tuple[int, int] | None = None  # the signal wakeup pipe (read, write)
        self._running = False
        self._closed = False
        self._handed_over = False
        self.errors = 0

    # ---- asyncio's names ----------------------------------------------------------------------

    def time(self) -> float:
        return time.monotonic()

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return self._closed

    def add_reader(self, fd: int, callback: Callable[..., Any], *args: Any) -> None:
        old = self._readers.get(fd)
        if old is not None:
            old.cancel()
            try:
                self._epoll.modify(fd, select.EPOLLIN)
            except FileNotFoundError:  # closed and reused since: the kernel forgot it
                self._epoll.register(fd, select.EPOLLIN)
        else:
            self._epoll.register(fd, select.EPOLLIN)
        self._readers[fd] = Handle(callback, args)

    def remove_reader(self, fd: int) -> bool:
        handle = self._readers.pop(fd, None)
        if handle is None:
            return False
        handle.cancel()  # an event for it may already be queued in this very batch
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # closed before it was removed: the kernel dropped it already
        return True

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> Handle:
        handle = Handle(callback, args)
        self._ready.append(handle)
        return handle

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback, args)
        heapq.heappush(self._timers, (handle.when(), next(self._seq), handle))
        return handle

    def add_signal_handler(self, sig: int, callback: Callable[..., Any], *args: Any) -> None:
        """As asyncio's: ``callback`` runs from the loop, not from the signal handler."""
        if self._wakeup is None:
            # A pipe, not open_signal_wakeup's socket pair: every worker makes one as it
            # starts, and two socket objects cost a fresh fork ~50 copy-on-write faults more.
            self._wakeup = r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self.add_reader(r, self._on_wakeup)
        self._signals[sig] = Handle(callback, args)
        _set_handler(sig, _ignore)  # the wakeup fd carries it

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._wakeup is not None:
            signal.set_wakeup_fd(-1)
            for fd in self._wakeup:
                os.close(fd)
        self._epoll.close()

    # ---- running ----------------------------------------------------------------------------

    def run(self, done: Callable[[], bool]) -> bool:
        """Run callbacks until ``done()`` is true after one of them, or until the worker has
        been handed over to another loop; return False in the latter case."""
        self._running = True
        try:
            while not done():
                if self._handed_over:
                    return False
                self._run_once()
            return True
        finally:
            self._running = False

    def _run_once(self) -> None:
        timeout = -1.0
        if self._ready:
            timeout = 0.0
        elif self._timers:
            timeout = max(0.0, self._timers[0][0] - time.monotonic())
        for fd, _ in self._epoll.poll(timeout):
            handle = self._readers.get(fd)
            if handle is not None:
                self._ready.append(handle)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            self._ready.append(heapq.heappop(self._timers)[2])
        for _ in range(len(self._ready)):
            handle = self._ready.popleft()
            if handle.cancelled():
                continue
            try:
                handle.callback(*handle.args)
            except Exception:  # noqa: BLE001 - asyncio's contract: log it, keep the loop
                self.errors += 1
                log.exception("reactor: callback %r raised (%d so far)", handle.callback,
                              self.errors)
            if self._handed_over:
                return

    def _on_wakeup(self) -> None:
        assert self._wakeup is not None
        try:
            signums = os.read(self._wakeup[0], 64)
        except BlockingIOError:
            return
        for signum in signums:
            handle = self._signals.get(signum)
            if handle is not None:
                self._ready.append(handle)

    # ---- moving to a real asyncio loop -------------------------------------------------------

    def hand_over(self, loop: Any) -> None:
        """Move every reader, pending timer, queued callback and signal handler to ``loop``
        (a fresh asyncio loop) and stop; this reactor is closed afterwards."""
        self._handed_over = True
        for fd, handle in self._readers.items():
            if self._wakeup is None or fd != self._wakeup[0]:
                loop.add_reader(fd, handle.callback, *handle.args)
        now = time.monotonic()
        for _, _, timer in sorted(self._timers):  # the caller may still cancel() its handle
            loop.call_later(max(0.0, timer.when() - now), _run_unless_cancelled, timer)
        for handle in self._ready:
            loop.call_soon(_run_unless_cancelled, handle)
        signals = dict(self._signals)
        self._readers.clear()  # close() below closes the epoll that watched them
        self._timers.clear()
        self._ready.clear()
        self.close()
        for sig, handle in signals.items():
            loop.add_signal_handler(sig, handle.callback, *handle.args)


def _run_unless_cancelled(handle: Handle) -> None:
    if not handle.cancelled():
        handle.callback(*handle.args)
