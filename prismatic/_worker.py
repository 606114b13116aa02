"""The Worker behaviour: what a user subclasses to write a supervised process.

Mirrors OTP's ``gen_server``. One Worker instance lives in its own OS process, forked by its
supervisor. The runtime calls, in order:

* ``init(*args)`` once; when it returns the process is *started* and its supervisor is told.
  Raising from ``init`` is a start failure (OTP's ``{error, Reason}``); raising
  :class:`Ignore` is OTP's ``ignore``; a value it returns is the start's info (OTP's
  ``{ok, Pid, Info}``).
* ``handle_call(msg, caller)`` / ``handle_cast(msg)`` / ``handle_info(msg)`` for each message.
  A handler may be a plain function or ``async def`` (run on uvloop).
* ``terminate(reason)`` when the process is told to stop (SIGTERM from its supervisor) or a
  handler raised. Python workers always get ``terminate`` on an orderly stop, as a
  ``gen_server`` that traps exits does: an OS process has no untrappable ``shutdown`` signal.
  Raising :class:`Stop` from it ends the process with that reason, as from any handler.

An exception escaping a handler crashes the process with that exception as the exit reason.
A normal stop is explicit: raise :class:`Stop` (default reason ``Normal()``).

Child processes a worker makes (``os.fork``, ``subprocess``, ``multiprocessing``) die with
it, however it ends: they stay in its process group, which its supervisor kills, and the
worker is a child subreaper, so a descendant orphaned while it lives (a daemon's double
fork) becomes its child, and dies with it too. Such an adopted process that exits first
stays a zombie until the worker reaps it (``os.waitpid(pid, 0)``) or exits. A forked child
does not inherit the worker's mailbox: messages to a dead worker are dead letters at once.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from ._errors import EventLogError
from ._exit import ExitReason, Normal

__all__ = ["Worker", "Stop", "Ignore"]


class Stop(BaseException):
    """Raised from a handler (or ``init``) to stop the process with ``reason``.

    A BaseException so that a handler's own ``except Exception`` cannot swallow it.
    """

    def __init__(self, reason: ExitReason | None = None) -> None:
        self.reason: ExitReason = reason if reason is not None else Normal()
        super().__init__(self.reason)


class Ignore(BaseException):
    """Raised from ``init`` to decline to start (OTP's ``ignore``): no process, no error."""


class Worker:
    """Base class of supervised workers; override the callbacks you need.

    Invariant: an instance is only ever used inside the process its supervisor forked for it;
    ``self.context`` is set by the runtime before ``init`` runs.
    """

    context: Any = None
    #: OTP's ``process_flag(trap_exit, true)``: exits of linked processes arrive at
    #: ``handle_info`` as :class:`~prismatic.Exit` instead of stopping this process.
    trap_exit: bool = False
    #: Messages queued in the process before its mailbox stops reading (the high-water mark;
    #: senders then block until their timeout and get :class:`~prismatic.MailboxFull`); it
    #: reads again once half of them are handled. Only a worker with ``async`` handlers
    #: queues: a plain handler holds the whole process, so nothing is read while it runs
    #: and the kernel's socket buffers are the only queue.
    mailbox_limit: int = 10_000

    def init(self, *args: Any) -> Awaitable[Any] | Any:
        """Set up state; return to report the process started. A value returned (anything
        msgpack encodes) is the start's info, which ``start_child_info`` gives beside the
        pid (OTP's ``{ok, Pid, Info}``)."""

    def handle_call(self, msg: Any, caller: Any) -> Any:
        """Answer a call; the return value is the reply."""
        raise NotImplementedError(f"{type(self).__name__} does not handle calls: {msg!r}")

    def handle_cast(self, msg: Any) -> Awaitable[None] | None:
        """Handle a one-way request."""

    def handle_info(self, msg: Any) -> Awaitable[None] | None:
        """Handle any other message: timers from ``send_after``, DOWN and EXIT notices,
        :class:`~prismatic.Event` from :meth:`subscribe`."""

    def terminate(self, reason: ExitReason) -> Awaitable[None] | None:
        """Clean up before the process exits with ``reason``."""

    # Services the runtime provides to a running worker.

    def send_after(self, delay: float, msg: Any) -> Any:
        """Deliver ``msg`` to ``handle_info`` after ``delay`` seconds (``erlang:send_after``).

        Returns a handle with ``cancel()``; from a plain (non-async) ``init`` it returns None,
        because the event loop starts only after ``init`` has returned and the timer is armed
        then (so a restart never waits for loop set-up).
        """
        return self.context.send_after(delay, msg)

    def publish(self, topic: str, payload: Any) -> None:
        """Publish ``payload`` (anything msgpack encodes) under ``topic`` on this node.

        Buffered and sent when the current handler returns (``docs/pubsub.md``). Raises
        TopicError for a malformed topic, PubSubError for a payload that cannot be encoded.
        """
        self.context.pubsub.publish(topic, payload)

    def publish_many(self, topic: str, payloads: Any) -> None:
        """Publish several events under one topic, in order."""
        self.context.pubsub.publish_many(topic, payloads)

    def subscribe(self, pattern: str) -> int:
        """Receive events matching ``pattern`` (``*`` one word, ``#`` zero or more) in
        ``handle_info`` as :class:`~prismatic.Event`, from the moment this returns; returns
        a ref for :meth:`unsubscribe`. Also works from a plain ``init``."""
        return self.context.pubsub.subscribe(pattern)

    def unsubscribe(self, ref: int) -> bool:
        """Stop a subscription made by :meth:`subscribe`; False if it was not active."""
        return self.context.pubsub.unsubscribe(ref)

    @property
    def pid(self) -> Any:
        """This process's :class:`~prismatic.Pid`."""
        return self.context.pid

    # Messaging (see docs/messaging.md). ``dest`` is a Pid (of this node or any member of
    # its cluster: docs/cluster.md), a name registered on this node, or ``(name, node)``.

    def call(self, dest: Any, msg: Any, timeout: float = 5.0) -> Any:
        """``gen_server:call``: block this process until ``dest`` replies; the reply.

        Raises :class:`~prismatic.CallTimeout`, :class:`~prismatic.NoProcError` (no such
        process or name) or :class:`~prismatic.ProcessDown` (it exited before replying,
        ``.reason`` says how). A reply arriving after the timeout is dropped.
        """
        return self.context.outbox.call(dest, msg, timeout)

    def send_request(self, dest: Any, msg: Any, timeout: float = 5.0) -> Any:
        """``gen_server:send_request``: a call without waiting; many may be in flight.
        Collect each with :meth:`receive_response` (``timeout`` bounds only the send)."""
        return self.context.outbox.send_request(dest, msg, timeout)

    def receive_response(self, request: Any, timeout: float = 5.0) -> Any:
        """The reply to ``request``; raises as :meth:`call` does."""
        return self.context.outbox.receive_response(request, timeout)

    def cast(self, dest: Any, msg: Any, timeout: float = 5.0) -> bool:
        """``gen_server:cast`` to ``handle_cast``. False if it became a dead letter (no such
        process); :class:`~prismatic.MailboxFull` if ``dest`` stayed full for ``timeout``."""
        return self.context.outbox.cast(dest, msg, timeout)

    def send(self, dest: Any, msg: Any, timeout: float = 5.0) -> bool:
        """``dest ! msg``: to ``handle_info``; returns as :meth:`cast` does."""
        return self.context.outbox.send(dest, msg, timeout)

    def emit(self, topic: str, payload: Any, *, correlation_id: str | None = None) -> int:
        """Append an event to the node's durable event log; returns its sequence number
        once the log's transaction is synced (the acknowledgement: an acknowledged event
        survives any crash). Blocks this process meanwhile (about a millisecond)."""
        return self.context.emit(topic, [payload], correlation_id)

    def emit_many(self, topic: str, payloads: list[Any], *,
                  correlation_id: str | None = None) -> int:
        """Several events under one topic in one transaction; the first one's sequence
        number (the rest follow it in order)."""
        return self.context.emit(topic, list(payloads), correlation_id)

    def replay(self, handler: Any, **filters: Any) -> int:
        """Re-deliver the node's logged events matching ``filters`` (``pattern``,
        ``start_seq``, ``since_ns``... as ``EventLog.query``) to ``handler``, oldest first:
        e.g. from ``init``, to rebuild this worker's state after a restart. How many."""
        from ._nodeinfo import current  # noqa: PLC0415
        from ._replay import replay_log  # noqa: PLC0415 - LMDB only where it is read

        info = current()
        if info is None:
            raise EventLogError("replay needs a node: this process is not part of a tree")
        return replay_log(info.data_dir, handler, **filters)

    def register(self, name: str) -> None:
        """Register this process as ``name`` on its node (OTP's ``register/2``): unique per
        node, one name per process, dropped when the process exits. A restarted child
        registers again in its ``init``. Raises :class:`~prismatic.RegistryError`."""
        self.context.register(name)

    def unregister(self, name: str) -> None:
        self.context.unregister(name)

    def whereis(self, name: str) -> Any:
        """The Pid registered as ``name``, or None."""
        return self.context.outbox.whereis(name)

    def register_global(self, name: str) -> None:
        """Register this process as ``name`` across the cluster (OTP's
        ``global:register_name/2``): unique cluster-wide, dropped when the process exits or
        its node is lost. A process may hold several global names. Blocks for one round
        trip to the name's arbiter node. Raises :class:`~prismatic.RegistryError`
        (``already_registered``: another process holds it). After a partition heals with the
        name held on both sides, the loser gets a :class:`~prismatic.GlobalNameConflict` in
        ``handle_info`` (docs/cluster.md, "Global names")."""
        self.context.register_global(name)

    def unregister_global(self, name: str) -> None:
        self.context.register_global(name, drop=True)

    def whereis_global(self, name: str) -> Any:
        """The Pid holding global name ``name`` on any node, or None. Address it with
        ``Global(name)`` to resolve at each send."""
        return self.context.outbox.whereis_global(name)

    def monitor(self, dest: Any) -> int:
        """Monitor ``dest``: one :class:`~prismatic.Down` with its exit reason reaches
        ``handle_info`` when it exits, at once (``NoProc()``) if it is not alive. A process
        of another node: ``NoConnection()`` when that node becomes unreachable. Returns the
        monitor's ref.

        ``dest`` is a Pid of any node, or a name resolved now, on its node: ``"name"`` (this
        node), ``("name", "node")`` (OTP's ``{Name, Node}``) or ``Global("name")``; the
        Down names it (``Down.name``), and an unregistered name fires at once with
        ``NoProc()``."""
        return self.context.monitor(dest)

    def demonitor(self, ref: int) -> None:
        """Drop a monitor; a Down already delivered stays delivered (no flush option)."""
        self.context.demonitor(ref)

    def link(self, pid: Any) -> None:
        """Link this process and ``pid``: when either exits abnormally, the other exits
        with the same reason, unless it traps exits (then it gets an :class:`~prismatic.Exit`).
        ``pid`` may be a name as for :meth:`monitor`, resolved now (nobody holds it:
        ``Exit(Pid(node, 0), NoProc())``)."""
        self.context.link(pid)

    def unlink(self, pid: Any) -> None:
        self.context.unlink(pid)
