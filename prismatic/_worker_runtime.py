"""Running one :class:`Worker` inside its own process, on uvloop.

Protocol with the supervisor (over the child's channel, see ``transports/_frames.py``):
``init`` returns -> ``ready``; ``init`` raises :class:`Ignore` -> ``ignored``; any stop ->
``exiting(reason)`` then exit. SIGTERM from the supervisor is an orderly stop with reason
``Shutdown()``: ``terminate`` runs, then the process exits. EOF on the channel means the
supervisor is gone (PDEATHSIG kills us anyway; this is the belt to its braces).

A worker whose handlers are all plain functions runs on a :class:`~._reactor.Reactor` (a
small epoll loop); one with any ``async def`` handler runs on uvloop, imported only then. A
plain handler that returns an awaitable after all moves the worker onto uvloop on the spot.

Messages (see :mod:`._mailbox`) are handled one at a time, in arrival order, as a
``gen_server`` does. A plain handler runs straight from the socket's read callback (no task
switch on the hot path); an ``async def`` handler makes the process *busy*, and the queue
waits until it returns. The queue is bounded (``Worker.mailbox_limit``): at the limit the
mailbox stops reading and senders feel backpressure.
"""

from __future__ import annotations

import collections
import functools
import inspect
import logging
import os
import signal
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ._address import Pid, own_pid, watch_target
from ._direct_counts import counts as direct_counts
from ._direct_counts import report as report_direct_counts
from ._errors import RegistryError
from ._exit import ExitCode, ExitReason, Normal, Shutdown, reason_from_exception
from ._hubclient import HubClient
from ._mailbox import Inbound, Mailbox
from ._mailbox_stats import stats_of
from ._nodeinfo import creation_of
from ._notices import Caller, Down, Exit, GlobalNameConflict
from ._outbox import Outbox
from ._reactor import Reactor
from ._worker import Ignore, Stop, Worker
from ._worker_pubsub import WorkerPubSub
from .transports._channel import Channel
from .transports._framing import encode_frame
from .transports._frames import ExitingFrame, IgnoredFrame, ReadyFrame
from .transports._messages import (
    CallFrame, CallRefused, CallReply, CastFrame, DemonitorReq, DirectFence, DirectHello,
    GlobalRegisterReq,
    GlobalUnregisterReq, InfoFrame, LinkReq, MonitorReq, RegisterReq, StatsReq, UnlinkReq,
    UnregisterReq,
)

if TYPE_CHECKING:
    import asyncio

    from ._reactor import TimerHandle as ReactorTimerHandle

__all__ = ["run_worker", "exit_code_for", "WorkerContext"]

log = logging.getLogger(__name__)
_HANDLERS = ("init", "handle_call", "handle_cast", "handle_info", "terminate")
# What a plain handler returns is almost always one of these, and none is awaitable:
# checking the type first spares the hot path inspect.isawaitable's ABC check (~0.5 us).
_PLAIN_RESULTS = frozenset({type(None), dict, list, tuple, str, int, float, bool, bytes})


def _is_awaitable(value: object) -> bool:
    return type(value) not in _PLAIN_RESULTS and inspect.isawaitable(value)


def exit_code_for(reason: ExitReason) -> int:
    if isinstance(reason, (Normal, Shutdown)):
        return 0
    if isinstance(reason, ExitCode):
        return reason.code
    return 1


class WorkerContext:
    """What the runtime gives a running worker (``worker.context``).

    Invariant: ``busy`` is True exactly while an ``async`` handler runs; nothing is taken
    from ``queue`` meanwhile, so handlers never overlap.
    """

    def __init__(self, worker: Worker | None, pid: Pid, name: str) -> None:
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop | Reactor | None = None
        self.stopped: asyncio.Event | None = None  # only on an asyncio loop
        self.pid = pid
        self.name = name
        self.queue: collections.deque[tuple[Inbound | None, Any]] = collections.deque()
        self.timers: list[tuple[float, Any]] = []  # send_after before the loop exists
        self.stop_reason: ExitReason | None = None
        self.busy = False
        self.received = 0
        self.names: set[str] = set()
        self.mailbox = Mailbox(pid.node, pid.ospid)
        _close_in_forks(self.mailbox)
        self._pubsub: WorkerPubSub | None = None  # made on first publish/subscribe
        self._outbox: Outbox | None = None  # made on first send
        # Its own listener for other nodes' processes (._direct_listener), made on the
        # first d_hello; direct_failed: it could not be made (the node path serves them).
        self._direct: Any = None
        self.direct_failed = False

    def close_unused(self) -> None:
        """Close a context that will never serve (a spare that became a supervisor, the
        node's warm-up): its mailbox goes, and is forgotten by the fork hook."""
        self.mailbox.close()
        _fork_closes.remove(self.mailbox)

    # Made on first use: every object a fresh fork allocates costs it copy-on-write pages.
    @functools.cached_property
    def hub(self) -> HubClient:
        return HubClient(self.pid.node)

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox(self.pid.node, self.pid, self.hub)
        return self._outbox

    @property
    def pubsub(self) -> WorkerPubSub:
        if self._pubsub is None:
            self._pubsub = WorkerPubSub(self.deliver)
            if self.loop is not None:
                self._pubsub.attach(self.loop)
        return self._pubsub

    def flush_published(self) -> None:
        """After each handled message: what a handler published leaves when it returns."""
        if self._pubsub is not None:
            self._pubsub.flush()

    def close_pubsub(self) -> None:
        """Before exit: what was published is still delivered (for a bounded time)."""
        if self._pubsub is not None:
            self._pubsub.close()

    def attach(self, loop: Any) -> Any:
        """Start using ``loop`` (asyncio's or a Reactor); timers set during a plain ``init``
        are armed now."""
        if not isinstance(loop, Reactor):
            self.use_asyncio(loop)
        self.loop = loop
        for delay, msg in self.timers:
            loop.call_later(delay, self.deliver, msg)
        self.timers.clear()
        if self._pubsub is not None:  # arm the subscription reader, send init's events
            self._pubsub.attach(loop)
        return loop

    def upgrade(self) -> asyncio.AbstractEventLoop:
        """Move from the Reactor onto a new uvloop loop (a plain handler returned an
        awaitable); everything the reactor was watching or had queued moves along."""
        reactor = self.loop
        if not isinstance(reactor, Reactor):
            assert reactor is not None
            return reactor  # type: ignore[return-value]
        loop = _new_asyncio_loop()
        self.use_asyncio(loop)
        self.loop = loop
        reactor.hand_over(loop)
        self.mailbox.loop = loop
        if self._pubsub is not None:
            self._pubsub.move_to(loop)
        if self.stop_reason is not None and self.stopped is not None:  # set by use_asyncio
            self.stopped.set()
        return loop

    def use_asyncio(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on an asyncio loop from now on (``stopped`` is how it learns of a stop)."""
        import asyncio  # noqa: PLC0415 - only workers with async handlers load it

        asyncio.set_event_loop(loop)
        self.stopped = asyncio.Event()

    def serve(self) -> None:
        """Start taking messages (after ``ready``)."""
        assert self.loop is not None
        self.mailbox.attach(self.loop, self.on_frame)
        self.pump()

    def deliver(self, msg: Any) -> None:
        """A message from this process itself (a timer, a pub/sub event) for ``handle_info``."""
        self.queue.append((None, InfoFrame(msg)))
        if self.loop is not None:
            self.pump()

    def on_frame(self, conn: Inbound, frame: Any) -> None:
        if isinstance(frame, StatsReq):
            conn.reply(CallReply(frame.ref, stats_of(self)))
            return
        if isinstance(frame, (DirectHello, DirectFence)):
            self.on_direct(conn, frame)
            return
        self.received += 1
        self.queue.append((conn, frame))
        assert self.worker is not None  # run_worker sets it before serve()
        if len(self.queue) >= self.worker.mailbox_limit:
            self.mailbox.pause()
        self.pump()

    def on_direct(self, conn: Inbound, frame: DirectHello | DirectFence) -> None:
        """A hello or fence of a direct route (._direct_listener, which loads pyzmq)."""
        try:
            from ._direct_listener import take_direct_frame  # noqa: PLC0415 - loads zmq
        except (ImportError, OSError) as exc:  # no descriptor left to read it, or no pyzmq
            if isinstance(frame, DirectHello) and conn.peer_pid == self.mailbox.hub_pid:
                self.direct_failed = True
                direct_counts["listener_failures"] += 1
                log.warning("direct listener of %s: cannot load it (%s); other nodes' "
                            "processes reach it through its node", self.pid, exc)
                conn.reply(CallReply(frame.ref, None))
                report_direct_counts(self.hub)
            return
        take_direct_frame(self, conn, frame)

    def pump(self) -> None:
        queue = self.queue
        assert self.worker is not None
        while queue and not self.busy and self.stop_reason is None:
            conn, frame = queue.popleft()
            if self.mailbox.paused and len(queue) <= self.worker.mailbox_limit // 2:
                self.mailbox.resume()
            try:
                self.dispatch(conn, frame)
            except Stop as stop:
                self.stop(stop.reason)
            except BaseException as exc:  # noqa: BLE001 - a crash is data: the exit reason
                self.stop(reason_from_exception(exc))
            self.flush_published()

    def dispatch(self, conn: Inbound | None, frame: Any) -> None:
        worker = self.worker
        assert worker is not None
        if isinstance(frame, CallFrame):
            assert conn is not None  # a call arrives on a connection
            if frame.to_name is not None and frame.to_name not in self.names:
                conn.reply(CallRefused(frame.ref, "not_registered"))
                return
            result = worker.handle_call(frame.msg, Caller(frame.sender, frame.ref))
            if _is_awaitable(result):
                self.run_async(result, conn, frame.ref)
            else:
                conn.reply(CallReply(frame.ref, result))
            return
        if isinstance(frame, CastFrame):
            result = worker.handle_cast(frame.msg)
        elif isinstance(frame, InfoFrame):
            result = worker.handle_info(frame.msg)
        elif isinstance(frame, Exit) and not worker.trap_exit:
            if not isinstance(frame.reason, Normal):
                self.stop(frame.reason)  # OTP: a linked process's death is ours too
            return
        elif isinstance(frame, (Down, Exit, GlobalNameConflict)):
            result = worker.handle_info(frame)
        else:
            return  # a reply on an inbound connection: nothing of ours awaits it
        if _is_awaitable(result):
            self.run_async(result, None, None)

    def run_async(self, pending: Any, conn: Inbound | None, ref: int | None) -> None:
        self.busy = True
        loop = self.upgrade()

        async def finish() -> None:
            try:
                value = await pending
                if conn is not None and ref is not None:
                    conn.reply(CallReply(ref, value))
            except Stop as stop:
                self.stop(stop.reason)
            except BaseException as exc:  # noqa: BLE001 - a crash is data: the exit reason
                self.stop(reason_from_exception(exc))
            finally:
                self.busy = False
            self.flush_published()
            self.pump()

        loop.create_task(finish())

    def send_after(self, delay: float,
                   msg: Any) -> asyncio.TimerHandle | ReactorTimerHandle | None:
        if self.loop is None:
            # Armed when the loop starts, right after ready: late by well under a millisecond.
            self.timers.append((delay, msg))
            return None
        return self.loop.call_later(delay, self.deliver, msg)

    def stop(self, reason: ExitReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.stopped is not None:
            self.stopped.set()

    # ---- the registry (names of this process) --------------------------------------------------

    def register(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise RegistryError(str(name), "badarg", "a name is a non-empty string")
        reply = self.hub.request(lambda ref: RegisterReq(ref, name, self.pid))
        if reply.error:
            raise RegistryError(name, reply.error, reply.detail)
        self.names.add(name)
        self.outbox.names[name] = self.pid

    def unregister(self, name: str) -> None:
        reply = self.hub.request(lambda ref: UnregisterReq(ref, name, self.pid))
        if reply.error:
            raise RegistryError(name, reply.error, reply.detail)
        self.names.discard(name)
        self.outbox.names.pop(name, None)

    def register_global(self, name: str, drop: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise RegistryError(str(name), "badarg", "a global name is a non-empty string")
        make = GlobalUnregisterReq if drop else GlobalRegisterReq
        reply = self.hub.request(lambda ref: make(ref, name, self.pid))
        if reply.error:
            raise RegistryError(name, reply.error, reply.detail)

    def emit(self, topic: str, payloads: list[Any], correlation_id: str | None) -> int:
        return self.hub.emit(topic, payloads, str(self.pid), correlation_id)

    # ---- monitors and links ---------------------------------------------------------------------

    def monitor(self, dest: Any) -> int:
        target, name = watch_target(dest, self.pid.node)  # a name: the hub resolves it now
        return self.hub.request(lambda ref: MonitorReq(ref, self.pid, target, name)).value

    def demonitor(self, mref: int) -> None:
        self.hub.request(lambda ref: DemonitorReq(ref, self.pid, mref))

    def link(self, dest: Any) -> None:
        b, name = watch_target(dest, self.pid.node)
        self.hub.request(lambda ref: LinkReq(ref, self.pid, b, name))

    def unlink(self, pid: Pid) -> None:
        self.hub.request(lambda ref: UnlinkReq(ref, self.pid, pid))


# O_CLOEXEC covers exec, not fork: a child the worker forks must not hold its mailbox. One
# hook closes the mailbox of every context of this process, registered by the first context:
# the node's warm-up (supervisors/_warm_start.py), so that the tree inherits it and no worker
# pays for a registration of its own (~7 copy-on-write faults each).
_fork_closes: list[Mailbox] = []
_fork_hooked = False


def _close_in_forks(mailbox: Mailbox) -> None:
    global _fork_hooked
    if not _fork_hooked:
        os.register_at_fork(after_in_child=_close_inherited_mailboxes)
        _fork_hooked = True
    _fork_closes.append(mailbox)


def _close_inherited_mailboxes() -> None:
    for mailbox in _fork_closes:
        mailbox.close_in_fork()
    _fork_closes.clear()


def _instantiate(start: Any, args: tuple[Any, ...]) -> tuple[Worker, tuple[Any, ...]]:
    if isinstance(start, type) and issubclass(start, Worker):
        return start(), args
    made = start(*args)
    if not isinstance(made, Worker):
        raise TypeError(f"start callable {getattr(start, '__qualname__', start)!s} returned a "
                        f"{type(made).__name__}, not a prismatic.Worker (a SupervisorSpec "
                        f"needs type='supervisor' in its ChildSpec)")
    return made, ()


def run_worker(start: Any, args: tuple[Any, ...], channel: Channel, node: str,
               name: str, ctx: WorkerContext | None = None,
               after_ready: Callable[[], None] | None = None) -> int:
    """Run a worker to completion in this (freshly forked) process; return the exit code.

    A plain ``init`` runs before the event loop exists, and ``ready`` goes out as soon as it
    returns: a restart waits only for the user's ``init``, not for loop set-up (creating a
    loop in a fresh fork costs a millisecond of copy-on-write faults).
    """
    loop: Any = None
    # Not a spare of its supervisor's (its supervisor forked it just now), or a lone start
    # (``after_ready``: the node's shared spare, lent for one restart, which has to tell its
    # lender it was taken, and does so once the supervisor has its ready).
    forked_for_it = ctx is None or after_ready is not None
    # The mailbox exists from the start: messages sent during init wait in the kernel.
    if ctx is None:
        ctx = WorkerContext(None, own_pid(node, creation_of(node)), name)
    ctx.name = name
    try:
        worker, init_args = _instantiate(start, args)
        ctx.worker = worker
        worker.context = ctx
        info = worker.init(*init_args)
        if _is_awaitable(info):
            loop = ctx.attach(_new_asyncio_loop())
            info = loop.run_until_complete(info)
        ready = _ready_frame(info)
    except Ignore:
        ctx.close_pubsub()
        channel.try_send(IgnoredFrame())
        return 0
    except Stop as stop:
        return _finish(channel, stop.reason, ctx)
    except BaseException as exc:  # noqa: BLE001 - a failed init is a start error, as data
        return _finish(channel, reason_from_exception(exc), ctx)
    channel.send(ready)
    if forked_for_it:
        # The start is done once the supervisor has read that, and the supervisor that just
        # forked us often shares this CPU: let it run before the set-up below (measured, a
        # dormant supervisor's first restart: ready -> seen 0.8 -> 0.3 ms p50). Not after a
        # spare's ready: a pool's start got slower with it (more switches between starts).
        # A lent spare's start is a lone restart, as a forked one is.
        os.sched_yield()
    if after_ready is not None:
        after_ready()
    if loop is None:
        loop = ctx.attach(_new_asyncio_loop() if _has_async_handler(worker) else Reactor())
    loop.add_signal_handler(signal.SIGTERM, ctx.stop, Shutdown())

    def on_channel() -> None:
        channel.receive()
        if channel.closed:
            ctx.loop.remove_reader(channel.fileno())  # type: ignore[union-attr]
            ctx.stop(Shutdown("supervisor gone"))

    loop.add_reader(channel.fileno(), on_channel)
    ctx.serve()
    if ctx.stop_reason is None and isinstance(loop, Reactor):
        loop.run(lambda: ctx.stop_reason is not None)
        loop = ctx.loop  # the same reactor, or the uvloop loop it handed over to
    if ctx.stop_reason is None:
        loop.run_until_complete(ctx.stopped.wait())  # type: ignore[union-attr]
    reason = ctx.stop_reason or Normal()
    try:
        result = worker.terminate(reason)
        if inspect.isawaitable(result):
            ctx.upgrade().run_until_complete(result)
    except Stop as stop:  # Stop means the same here as in every other handler
        reason = stop.reason
    except BaseException as exc:  # noqa: BLE001 - as in gen_server, a crash in terminate
        reason = reason_from_exception(exc)  # becomes the exit reason
    return _finish(channel, reason, ctx)


def _ready_frame(info: Any) -> ReadyFrame:
    """``ready``, carrying what ``init`` returned (OTP's ``{ok, Pid, Info}``); an ``info``
    that cannot cross the wire fails the start, saying why."""
    frame = ReadyFrame(pid=os.getpid(), mono=time.monotonic(), info=info)
    if info is not None:
        try:
            encode_frame(frame)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise TypeError(f"init returned {type(info).__name__} {info!r:.80}, which cannot "
                            f"be sent as the start's info (msgpack): {exc}") from None
    return frame


def _has_async_handler(worker: Worker) -> bool:
    cls = type(worker)
    known = _async_classes.get(cls)
    if known is not None:
        handlers, is_async = known
        own = getattr(worker, "__dict__", None) or ()
        for name, handler in zip(_HANDLERS, handlers, strict=True):
            if name in own or getattr(cls, name, None) is not handler:
                break  # a handler set on the instance, or the class's changed since
        else:
            return is_async
    return any(inspect.iscoroutinefunction(getattr(worker, name, None)) for name in _HANDLERS)


# Worker class -> (its handlers, whether any is async), for classes whose handlers are plain
# functions. Filled by the node's warm-up for every class its image holds, so that a worker
# of one of them compares five attributes instead of running inspect over five bound
# methods in its fresh fork (~25 copy-on-write faults).
_async_classes: dict[type, tuple[tuple[Any, ...], bool]] = {}


def note_worker_classes() -> None:
    """Check every Worker class defined so far for async handlers, once (``_async_classes``);
    a class with a handler that is not a plain function is checked by each worker."""
    todo = [Worker]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        handlers = tuple(getattr(cls, name, None) for name in _HANDLERS)
        if cls.__getattribute__ is object.__getattribute__ \
                and all(type(h) is types.FunctionType for h in handlers):
            _async_classes[cls] = (handlers, any(inspect.iscoroutinefunction(h)
                                                 for h in handlers))


def _new_asyncio_loop() -> asyncio.AbstractEventLoop:
    import uvloop  # noqa: PLC0415 - only workers with async handlers pay for it

    return uvloop.new_event_loop()


def _finish(channel: Channel, reason: ExitReason, ctx: WorkerContext) -> int:
    ctx.close_pubsub()
    if ctx._outbox is not None:  # what it sent to other nodes leaves before its exit
        ctx._outbox.close_links()
    if ctx._direct is not None:  # its replies leave, then its listener and context end
        ctx._direct.close()
    channel.try_send(ExitingFrame(reason))
    return exit_code_for(reason)
