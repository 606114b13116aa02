"""Running one :class:`Worker` inside its own process, on uvloop.

Protocol with the supervisor (over the child's channel, see ``transports/_frames.py``):
``init`` returns -> ``ready``; ``init`` raises :class:`Ignore` -> ``ignored``; any stop ->
``exiting(reason)`` then exit. SIGTERM from the supervisor is an orderly stop with reason
``Shutdown()``: ``terminate`` runs, then the process exits. EOF on the channel means the
supervisor is gone (PDEATHSIG kills us anyway; this is the belt to its braces).

Messages are handled one at a time, in arrival order, as a ``gen_server`` does: one consumer
task drains the mailbox and awaits an ``async def`` handler before taking the next message.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import os
import signal
import time
from typing import Any

import uvloop

from ._address import Pid
from ._exit import ExitCode, ExitReason, Normal, Shutdown, reason_from_exception
from ._worker import Ignore, Stop, Worker
from ._worker_pubsub import WorkerPubSub
from .transports._channel import Channel
from .transports._frames import ExitingFrame, IgnoredFrame, ReadyFrame

__all__ = ["run_worker", "exit_code_for"]


def exit_code_for(reason: ExitReason) -> int:
    if isinstance(reason, (Normal, Shutdown)):
        return 0
    if isinstance(reason, ExitCode):
        return reason.code
    return 1


class WorkerContext:
    """What the runtime gives a running worker (``worker.context``)."""

    def __init__(self, pid: Pid, name: str) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pid = pid
        self.name = name
        self.mailbox: collections.deque[tuple[str, Any]] = collections.deque()
        self.timers: list[tuple[float, Any]] = []  # send_after before the loop exists
        self.stop_reason: ExitReason | None = None
        self.pubsub = WorkerPubSub(self.deliver)  # pub/sub: no ZeroMQ until first used

    def attach(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        """Start using ``loop``; timers set during a plain ``init`` are armed now."""
        asyncio.set_event_loop(loop)
        self.loop = loop
        self.wakeup = asyncio.Event()
        self.stopped = asyncio.Event()
        for delay, msg in self.timers:
            loop.call_later(delay, self.deliver, "info", msg)
        self.timers.clear()
        self.pubsub.attach(loop)  # pub/sub: arm the subscription reader, send init's events
        if self.mailbox:
            self.wakeup.set()
        return loop

    def deliver(self, kind: str, msg: Any) -> None:
        self.mailbox.append((kind, msg))
        if self.loop is not None:
            self.wakeup.set()

    def send_after(self, delay: float, msg: Any) -> asyncio.TimerHandle | None:
        if self.loop is None:
            # Armed when the loop starts, right after ready: late by well under a millisecond.
            self.timers.append((delay, msg))
            return None
        return self.loop.call_later(delay, self.deliver, "info", msg)

    def stop(self, reason: ExitReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stopped.set()
        self.wakeup.set()


async def _call(fn: Any, *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _serve(worker: Worker, ctx: WorkerContext) -> None:
    """The mailbox consumer: one message at a time; an escaping exception stops the worker."""
    handlers = {"info": worker.handle_info, "cast": worker.handle_cast}
    while ctx.stop_reason is None:
        if not ctx.mailbox:
            ctx.wakeup.clear()
            await ctx.wakeup.wait()
            continue
        kind, msg = ctx.mailbox.popleft()
        try:
            await _call(handlers[kind], msg)
        except Stop as stop:
            ctx.stop(stop.reason)
        except BaseException as exc:  # noqa: BLE001 - a crash is data: the exit reason
            ctx.stop(reason_from_exception(exc))
        ctx.pubsub.flush()  # pub/sub: a handler's publishes leave when it returns


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
               name: str) -> int:
    """Run a worker to completion in this (freshly forked) process; return the exit code.

    A plain ``init`` runs before the event loop exists, and ``ready`` goes out as soon as it
    returns: a restart waits only for the user's ``init``, not for loop set-up (creating a
    loop in a fresh fork costs a millisecond of copy-on-write faults).
    """
    worker: Worker | None = None
    loop: asyncio.AbstractEventLoop | None = None
    ctx = WorkerContext(Pid(node, os.getpid()), name)
    try:
        worker, init_args = _instantiate(start, args)
        worker.context = ctx
        result = worker.init(*init_args)
        if inspect.isawaitable(result):
            loop = ctx.attach(uvloop.new_event_loop())
            loop.run_until_complete(result)
    except Ignore:
        ctx.pubsub.close()  # pub/sub: deliver what init published
        channel.try_send(IgnoredFrame())
        return 0
    except Stop as stop:
        return _finish(channel, stop.reason, ctx)
    except BaseException as exc:  # noqa: BLE001 - a failed init is a start error, as data
        return _finish(channel, reason_from_exception(exc), ctx)
    channel.send(ReadyFrame(pid=os.getpid(), mono=time.monotonic()))
    if loop is None:
        loop = ctx.attach(uvloop.new_event_loop())
    loop.add_signal_handler(signal.SIGTERM, ctx.stop, Shutdown())

    def on_channel() -> None:
        channel.receive()
        if channel.closed:
            loop.remove_reader(channel.fileno())
            ctx.stop(Shutdown("supervisor gone"))

    loop.add_reader(channel.fileno(), on_channel)
    server = loop.create_task(_serve(worker, ctx))
    loop.run_until_complete(ctx.stopped.wait())
    server.cancel()
    reason = ctx.stop_reason or Normal()
    try:
        loop.run_until_complete(_call(worker.terminate, reason))
    except BaseException as exc:  # noqa: BLE001 - as in gen_server, a crash in terminate
        reason = reason_from_exception(exc)  # becomes the exit reason
    return _finish(channel, reason, ctx)


def _finish(channel: Channel, reason: ExitReason, ctx: WorkerContext) -> int:
    ctx.pubsub.close()  # pub/sub: what was published before the exit is still delivered
    channel.try_send(ExitingFrame(reason))
    return exit_code_for(reason)
