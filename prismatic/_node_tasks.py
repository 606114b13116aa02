"""The node loop's long-lived tasks, watched: one message never ends one, and a death is loud.

Every long-lived piece of the node loop (the control endpoint, the heartbeat, the tree
printer, the pub/sub forwarder's readers, the root channel's reader) handles each message
inside :meth:`NodeTasks.guard`: an exception there is logged with its traceback (throttled
per task, node-wide: :func:`~._throttle.throttle_for`), counted (``on_error``, exported as
``prismatic_node_task_errors_total{task}``) and swallowed, so the next message is served.

A task that ends anyway (a bug outside its per-message guard, or a socket that fails for
good) is recorded in :attr:`NodeTasks.dead`, logged at ERROR with its exception and reported
to ``on_death``: the node then answers 503 on ``/health`` and ``/ready`` and names the task
in ``status``, so an operator or an orchestrator learns that the node must be restarted
instead of trusting a node whose control endpoint no longer answers. Tasks end quietly only
when :meth:`close` cancels them (the node is stopping).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from ._throttle import throttle_for

__all__ = ["NodeTasks"]

log = logging.getLogger(__name__)


class NodeTasks:
    """Invariant: a name is in :attr:`dead` once its task ended while not closing."""

    def __init__(self, on_error: Callable[[str], None] = lambda task: None,
                 on_death: Callable[[str], None] = lambda task: None) -> None:
        self.on_error = on_error
        self.on_death = on_death
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.dead: dict[str, str] = {}  # task -> why it ended
        self.errors: dict[str, int] = {}  # task -> exceptions caught per message
        self.closing = False

    def start(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as the long-lived task ``name``; its end is watched."""
        task = asyncio.get_running_loop().create_task(coro, name=f"node:{name}")
        self.tasks[name] = task
        task.add_done_callback(lambda t: self._ended(name, t))
        return task

    def _ended(self, name: str, task: asyncio.Task[Any]) -> None:
        if self.closing:
            return
        if task.cancelled():
            self.died(name, "cancelled")
        else:
            exc = task.exception()
            self.died(name, repr(exc) if exc is not None else "returned", exc)

    def died(self, name: str, why: str, exc: BaseException | None = None) -> None:
        """Record that the task (or server) ``name`` no longer runs: logged, reported."""
        if name in self.dead:
            return
        self.dead[name] = why
        log.error("node task %s died (%s): the node is unhealthy from now on; restart it",
                  name, why, exc_info=exc)
        self.on_death(name)

    @contextmanager
    def guard(self, name: str) -> Iterator[None]:
        """Handle one message of ``name``: an exception is logged, counted, and swallowed."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - one message must never end a task
            self.caught(name, exc)

    def caught(self, name: str, exc: BaseException) -> None:
        n = self.errors[name] = self.errors.get(name, 0) + 1
        self.on_error(name)
        throttle_for(log, f"task:{name}").warn(
            "node task %s: a message raised (%d so far), dropped: %r", name, n, exc,
            exc_info=exc)

    def guarded(self, name: str, fn: Callable[[], None]) -> Callable[[], None]:
        """``fn`` (a loop reader callback) with every call guarded."""
        def call() -> None:
            with self.guard(name):
                fn()
        return call

    def close(self) -> None:
        """The node is stopping: cancel every task; their ends are no deaths."""
        self.closing = True
        for task in self.tasks.values():
            task.cancel()
