"""A supervisor's side of the node's shared spare (see :mod:`._lender`), a mixin of
:class:`~._runtime.SupervisorRuntime`: a dormant supervisor borrows the spare for a restart
(:meth:`Borrowing.borrow`), reads a lent child's exit status (:meth:`lent_exit_status`), and
the root keeps the lender (:meth:`start_lender`, its death and its reports).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
from typing import TYPE_CHECKING, Any

import msgspec

from .._childspec import ChildSpec, SupervisorSpec
from .._exit import reason_from_wait_status
from .._reactor import readable
from ..transports._channel import Channel
from ..transports._frames import BecomeAt, TroubleFrame
from ._lending import LenderLink, take_spare
from ._procs import Proc
from ._shared_spare import lendable, node_tree, resolve, set_tree
from ._trouble import Trouble

if TYPE_CHECKING:  # imported by the root alone, when it starts the lender (_borrowing)
    from ._lender import LenderHandle

__all__ = ["Borrowing"]

log = logging.getLogger(__name__)

_DYING_S = 0.05  # see lent_on_child


class Borrowing:
    """The shared-spare half of :class:`~._runtime.SupervisorRuntime` (a mixin: it works on
    the runtime's selector, process table and decision state)."""

    sel: selectors.BaseSelector
    procs: dict[int, Proc]
    spec: SupervisorSpec
    path: tuple[str, ...]
    node: str
    parent: Channel
    starting: Proc | None
    state: Any  # the decision state (its children)
    lender: LenderHandle | None  # the root's
    lending: LenderLink | None  # a link to the lender, open while a lent child lives
    taken: tuple[int, Channel] | None  # the shared spare, taken and not told yet

    def name(self) -> str:
        raise NotImplementedError

    def trouble(self, what: Trouble) -> None:
        raise NotImplementedError

    def watch(self, proc: Proc) -> None:
        raise NotImplementedError

    def forget(self, proc: Proc) -> None:
        raise NotImplementedError

    def fork_for(self, key: str, spec: ChildSpec) -> Proc | None:
        raise NotImplementedError

    def lent_on_child(self, proc: Proc, frames: list[Any]) -> bool:
        """Whether a lent child's channel closed before any frame while the process lives on
        (then it is :meth:`not_taken`). A process that is dying closes its descriptors before
        its pidfd turns readable: given a moment, so a child of ours killed in its init is
        not taken for another's (a reset connection's spare lives on)."""
        return (not frames and proc.channel.closed and not proc.ready and proc.reason is None
                and not proc.ignored and not readable(proc.pidfd, _DYING_S))

    def may_borrow(self, spec: ChildSpec) -> bool:
        """Whether the shared spare may become a child started from ``spec``: a worker whose
        spec is the very object the node's tree has here (the spare resolves it there)."""
        tree = node_tree()
        return tree is not None and lendable(spec) and resolve(tree, self.path, spec.id) is spec

    def take_early(self, proc: Proc) -> None:
        """A dormant supervisor's child ``proc`` died: take the shared spare now (connected,
        told nothing yet), so its wake-up overlaps the reaping and the decision; the
        restart's :meth:`borrow` tells it what to become, and a decision that starts nothing
        lets it go. Not for a child it could not become (it would be let go every time)."""
        child = next((c for c in self.state.children if c.pid == proc.pid), None)
        if self.taken is None and child is not None and self.may_borrow(child.spec):
            self.taken = take_spare(self.node)

    def borrow(self, key: str, spec: ChildSpec) -> Proc | None:
        """The node's shared spare, told to become child ``key`` (see ``_lending``); None if
        the lender does not know the child as this process does, or none waits."""
        if not self.may_borrow(spec):
            return None
        got, self.taken = self.taken or take_spare(self.node), None
        if got is None:
            return None
        pid, channel = got
        args = spec.args if key != spec.id else ()
        try:
            channel.send(BecomeAt(self.path, key, spec.id, args))
            os.sched_yield()  # the spare often waits for this CPU (as in fork_for)
            proc = Proc(pid, channel, key, spec.type)  # type: ignore[arg-type]
        except (OSError, TypeError, msgspec.EncodeError):  # gone already; args that do not encode
            channel.close()  # it was never told what to become: it exits
            return None
        proc.lent = spec
        self.watch(proc)
        # Its exit's status comes over a link to the lender (see _lending), opened when it
        # is first needed: connecting now would wake the lender during this start.
        self.lending = self.lending or LenderLink(self.node, self.name())
        return proc

    def not_taken(self, proc: Proc) -> None:
        """A lent child's channel closed before any frame while the process lives on: the
        spare took another supervisor's connection, queued just before ours (see
        ``_lending``). Not ours: forget it and fork the child here."""
        spec = proc.lent
        assert spec is not None and proc.key is not None
        log.info("supervisor %s: the shared spare %d was taken by another; forking %r",
                 self.name(), proc.pid, proc.key)
        self.forget(proc)
        if proc is self.starting:
            self.starting = self.fork_for(proc.key, spec)

    def lent_exit_status(self, proc: Proc) -> int:
        """The wait status of a lent child that died, as its parent, the lender, read it (it
        killed the child's group first). A lender gone or mute: killed, and logged."""
        status = (self.lending.exit_status(proc.pid, proc.pidfd)
                  if self.lending is not None else None)
        if status is None:
            log.error("supervisor %s: the lender did not say how lent child %d died; taken "
                      "as killed", self.name(), proc.pid)
            self.trouble(Trouble.LENT_EXIT_UNKNOWN)
            return int(signal.SIGKILL)
        if self.lending is not None and not any(
                p.lent is not None for p in self.procs.values() if p is not proc):
            self.lending.close()  # nothing lent left: the lender holds no link per supervisor
            self.lending = None
        return status

    # ---- the root's lender ------------------------------------------------------------------

    def start_lender(self, lender: LenderHandle | None = None) -> None:
        """Fork the lender (``lender``: the handle of one that died, which counts deaths)."""
        # Imported here, by the root only: the lender's loop and its bookkeeping have no
        # place in the image every process of the tree is forked from (its pages, and
        # CPython's type attribute cache, which the node's warm-up fills for the children's
        # start: see _warm_start).
        from ._lender import LenderHandle  # noqa: PLC0415

        set_tree(self.spec)
        lender = lender or LenderHandle(self.spec, self.node)
        if not lender.start():
            self.trouble(Trouble.FORK_FAILED)
            self.lender = None
            return
        self.lender = lender
        self.sel.register(lender.pidfd, selectors.EVENT_READ, ("on_lender_exit", None))
        self.sel.register(lender.channel.sock, selectors.EVENT_READ,  # type: ignore[union-attr]
                          ("on_lender", None))

    def on_lender(self, _: Any) -> None:
        lender = self.lender
        if lender is None or lender.channel is None:
            return
        for frame in lender.channel.receive():
            if isinstance(frame, TroubleFrame):
                self.parent.try_send(frame)
        if lender.channel.closed:
            self.sel.unregister(lender.channel.sock)
            lender.channel.close()
            lender.channel = None

    def detach_lender(self) -> LenderHandle | None:
        """Stop watching the lender and forget it; the caller reaps or stops it."""
        lender, self.lender = self.lender, None
        if lender is not None:
            self.sel.unregister(lender.pidfd)
            if lender.channel is not None:
                self.sel.unregister(lender.channel.sock)
        return lender

    def stop_lender(self) -> None:
        """On the way out, after every child (lent ones too) is gone."""
        lender = self.detach_lender()
        if lender is not None:
            lender.stop()

    def on_lender_exit(self, _: Any) -> None:
        self.on_lender(None)  # what it said before it died
        lender = self.detach_lender()
        if lender is None:
            return
        status = lender.reap()
        log.warning("supervisor root: the lender died (%s)",
                    reason_from_wait_status(status))
        self.trouble(Trouble.LENDER_DIED)
        if lender.may_restart():
            self.start_lender(lender)
        else:
            log.error("supervisor root: the lender died %d times; dormant supervisors fork "
                      "their children themselves from now on", lender.deaths)
            self.trouble(Trouble.LENDER_GIVEN_UP)
            self.lender = None
