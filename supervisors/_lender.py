"""The node's shared spare: one process, ``prism:lender``, that keeps a spare made ahead of time
for the first restart under any dormant supervisor, and is the parent of what it lent.

Why: a dormant supervisor (:mod:`._procs`) has let its own spare and zygote go, so its next
start forked the child itself, from deep in a fork chain whose pages ~2,000 processes share,
and the child then ran CPython's after-fork work and its set-up before ``init``: several times
the bare fork-after-death floor. One spare for the whole node has paid all of that ahead of
time, and costs two processes per node, not two per supervisor. Measured, 1,000 dormant
supervisors on 2 CPUs (``bench/bench_supervisors.py``): the first restart's p50 ~7 ms with
the supervisor's own fork, ~3 ms with the shared spare, beside ~2.5 ms for a bare
fork-after-death in an equally idle process.

Ownership: the root supervisor forks the lender (:class:`LenderHandle`), reaps it, forks it
again if it dies (``_DEATHS_TOLERATED`` times, then dormant supervisors fork their own, with a
log line), and stops it last as it exits, after every child. The lender forks the spare; a
supervisor takes it by connecting to it (:mod:`._lending` has the protocol, and why nothing on
the restart's path waits for the lender); the spare becomes the supervisor's child in all but
the kernel's record: the lender is its parent and reaps it, the supervisor watches it by
pidfd, signals it, reads its exit status and decides on its death as on any child's.

Invariants:

* a lent child dies with its supervisor: the lender watches each supervisor it lent to (a
  pidfd, from the moment the spare says who took it) and kills what it lent it;
* a lent child dies with the lender (its PDEATHSIG): its supervisor then sees it killed;
* the spare becomes only a worker its copy of the node's tree has at that path
  (:func:`._shared_spare.resolve`); the supervisor takes it only for a spec that is the very
  object its own copy of the tree has there, so a child changed since the tree was forked
  (``start_child``, a reload) is forked by its supervisor as before;
* a dead child of the lender's stays a zombie until its supervisor has read its status, for
  ``_loans.REAP_GRACE_S`` at most; its process group is killed at once (the bookkeeping, a
  pure state machine, is :mod:`._loans`);
* the lender's other children are swept as a supervisor's are (the orphans a lent child
  left when it died are reparented to the lender, a child subreaper).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from typing import Any

import msgspec

from .._childspec import SupervisorSpec
from .._exit import reason_from_wait_status
from .._nodeinfo import peer_creds
from .._process import child_pids, fork_child, kill_group, raise_fd_limit, send_signal
from .._reactor import open_signal_wakeup, readable, signals_received
from ..transports._channel import Channel
from ..transports._frames import TroubleFrame
from . import _loans as L
from ._lending import ExitOf, LentExit, Reap, Taken, decode, encode, lender_address
from ._shared_spare import spare_main
from ._trouble import Trouble

__all__ = ["lender_main", "LenderHandle"]

log = logging.getLogger(__name__)

_DEATHS_TOLERATED = 3
_STOP_WAIT_S = 2.0
_BACKLOG = 128
# After an accept failed (EMFILE): the link stays queued, so the listener stays readable; it
# is left out of the selector this long, not tried again at every turn of a busy loop.
_ACCEPT_RETRY_S = 0.25


class Lender:
    """The lender's loop: turns what its descriptors say into :mod:`._loans` events and
    carries out the actions. It waits on its listening socket for links, each link, the
    spare's side of ``Taken``, the pidfds of its children and of the supervisors they were
    lent to, its parent's channel and a signal wakeup (SIGCHLD: sweep)."""

    def __init__(self, parent: Channel, tree: SupervisorSpec, node: str,
                 listener: socket.socket) -> None:
        self.parent = parent
        self.tree = tree
        self.node = node
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.state = L.LoanState()
        self.pidfds: dict[int, int] = {}  # each child's, until it is reaped
        self.said: dict[int, socket.socket] = {}  # a child's side of Taken, until it says
        self.owner_fds: dict[int, int] = {}  # each watched owner's pidfd
        self.links: dict[int, socket.socket] = {}  # by the link's descriptor number
        self.sweep_due = False
        self.accept_at = 0.0  # monotonic: listen again then (0: listening)

    def trouble(self, what: Trouble) -> None:
        self.parent.try_send(TroubleFrame((), what.value))

    def feed(self, event: Any) -> None:
        self.state, actions = L.decide(self.state, event)
        for a in actions:
            getattr(self, "do_" + type(a).__name__)(a)

    def run(self) -> int:
        wake_r, _wake_w = open_signal_wakeup()
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd carries it
        self.sel.register(wake_r, selectors.EVENT_READ, ("on_signal", wake_r))
        self.sel.register(self.parent.sock, selectors.EVENT_READ, ("on_parent", None))
        self.sel.register(self.listener, selectors.EVENT_READ, ("on_accept", None))
        while True:
            due = L.next_due(self.state)
            if not self.state.spare:
                due = min(due, self.state.remake_at)
            if self.accept_at:
                due = min(due, self.accept_at)
            timeout = None if due == float("inf") else max(0.0, due - time.monotonic())
            for key, _ in self.sel.select(timeout):
                handler, obj = key.data
                getattr(self, handler)(obj)
            now = time.monotonic()
            if L.next_due(self.state) <= now:
                self.feed(L.Tick(now))
            if not self.state.spare and now >= self.state.remake_at:
                self.fork_spare()
            if self.accept_at and now >= self.accept_at:
                self.accept_at = 0.0
                self.sel.register(self.listener, selectors.EVENT_READ, ("on_accept", None))
            if self.sweep_due:
                self.sweep_due = False
                self.sweep_orphans()

    # ---- events -----------------------------------------------------------------------------

    def fork_spare(self) -> None:
        tree, node = self.tree, self.node
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = fork_child((theirs.fileno(),), lambda: spare_main(theirs, tree, node),
                             "prism:shared-spare")
        except OSError as exc:  # the process limit: supervisors fork their own meanwhile
            mine.close()
            log.error("lender: cannot fork a spare: %s (trying again in 1 s)", exc)
            self.trouble(Trouble.FORK_FAILED)
            self.state = msgspec.structs.replace(self.state, remake_at=time.monotonic() + 1)
            return
        finally:
            theirs.close()
        self.pidfds[pid] = os.pidfd_open(pid)
        self.said[pid] = mine
        self.sel.register(mine, selectors.EVENT_READ, ("on_taken", pid))
        self.sel.register(self.pidfds[pid], selectors.EVENT_READ, ("on_child_exit", pid))
        self.feed(L.SpareMade(pid))

    def on_taken(self, pid: int) -> None:
        """A child says who took it (or closed its side: it died; its pidfd says so)."""
        sock = self.said.pop(pid)
        try:
            data = sock.recv(1 << 10, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            self.said[pid] = sock
            return
        except OSError:
            data = b""
        self.sel.unregister(sock)
        sock.close()
        try:
            taken = decode(data) if data else None
        except (msgspec.DecodeError, ValueError):
            taken = None
        if not isinstance(taken, Taken):
            return  # it died before it was taken
        try:
            owner_fd = self.owner_fds.get(taken.owner) or os.pidfd_open(taken.owner)
        except OSError:  # the supervisor is gone already: so must its child be
            owner_fd = -1
        else:
            self.owner_fds[taken.owner] = owner_fd
        self.feed(L.TakenBy(pid, taken.owner, owner_fd >= 0, time.monotonic()))
        if taken.owner in self.owner_fds and taken.owner not in L.owners(self.state.lent):
            os.close(self.owner_fds.pop(taken.owner))  # opened above, not watched after all

    def on_child_exit(self, pid: int) -> None:
        if pid in self.said:
            self.on_taken(pid)  # what it said before it died, if anything
        self.sel.unregister(self.pidfds[pid])
        try:  # its status, read without reaping: its supervisor may read it from /proc
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
        status = _wait_status(info)
        self.feed(L.ChildDied(pid, status, time.monotonic()))

    def on_owner_exit(self, owner: int) -> None:
        self.feed(L.OwnerDied(owner))

    def on_signal(self, sock: socket.socket) -> None:
        if signal.SIGCHLD in signals_received(sock):
            self.sweep_due = True

    def on_parent(self, _: Any) -> None:
        self.parent.receive()
        if self.parent.closed:  # the root stops it, or is gone: its children go first
            for pid, pidfd in list(self.pidfds.items()):
                kill_group(pid)
                send_signal(pidfd, signal.SIGKILL)
                self.do_Reap(L.Reap(pid))
            os._exit(0)

    def on_accept(self, _: Any) -> None:
        while True:
            try:
                link, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE: the link waits, queued; tried again later
                log.error("lender: cannot accept a link: %s (trying again in %.2f s)", exc,
                          _ACCEPT_RETRY_S)
                self.trouble(Trouble.LENDER_REFUSED)
                self.sel.unregister(self.listener)
                self.accept_at = time.monotonic() + _ACCEPT_RETRY_S
                return
            uid = peer_creds(link)[1]
            if uid != os.geteuid():
                log.error("lender: refused a link from uid %d", uid)
                self.trouble(Trouble.LENDER_REFUSED)
                link.close()
                continue
            link.setblocking(False)
            self.links[link.fileno()] = link
            self.sel.register(link, selectors.EVENT_READ, ("on_link", link))

    def on_link(self, link: socket.socket) -> None:
        """A supervisor's question (ExitOf) or word (Reap); EOF closes its link; anything
        else is refused (answered unknown, counted, logged)."""
        try:
            data = link.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.sel.unregister(link)
            del self.links[link.fileno()]
            self.feed(L.LinkClosed(link.fileno()))
            link.close()
            return
        try:
            message = decode(data)
        except (msgspec.DecodeError, ValueError) as exc:
            message, why = None, f"malformed: {exc}"
        else:
            why = f"{type(message).__name__} is not for the lender"
        if isinstance(message, ExitOf):
            self.feed(L.ExitAsked(message.pid, link.fileno()))
        elif isinstance(message, Reap):
            self.feed(L.ReapAsked(message.pid))
        else:
            log.error("lender: refused a message on a link: %s", why)
            self.trouble(Trouble.LENDER_REFUSED)
            self.send(link, LentExit(0, L.UNKNOWN))

    # ---- actions ----------------------------------------------------------------------------

    def do_Watch(self, a: L.Watch) -> None:
        self.sel.register(self.owner_fds[a.owner], selectors.EVENT_READ,
                          ("on_owner_exit", a.owner))

    def do_Unwatch(self, a: L.Unwatch) -> None:
        pidfd = self.owner_fds.pop(a.owner)
        self.sel.unregister(pidfd)
        os.close(pidfd)

    def do_Kill(self, a: L.Kill) -> None:
        pidfd = self.pidfds.get(a.pid)
        if pidfd is not None:
            send_signal(pidfd, signal.SIGKILL)
            kill_group(a.pid)

    def do_KillGroup(self, a: L.KillGroup) -> None:
        kill_group(a.pid)  # the leader is dead, not reaped: the group id is still its own

    def do_Reap(self, a: L.Reap) -> None:
        pidfd = self.pidfds.pop(a.pid)
        try:
            os.waitpid(a.pid, 0)
        except ChildProcessError:
            pass
        os.close(pidfd)

    def do_Answer(self, a: L.Answer) -> None:
        link = self.links.get(a.link)
        if link is not None:
            self.send(link, LentExit(a.pid, a.status))

    def do_SpareDied(self, a: L.SpareDied) -> None:
        log.warning("lender: spare %d died untaken (%s); the next in %.2f s", a.pid,
                    reason_from_wait_status(a.status), a.delay)
        self.trouble(Trouble.SPARE_DIED)

    def send(self, link: socket.socket, message: Any) -> None:
        try:
            link.send(encode(message))
        except OSError:  # a full buffer of a stuck supervisor, or gone (its EOF closes it)
            log.warning("lender: could not answer pid %d's link", peer_creds(link)[0])

    def sweep_orphans(self) -> None:
        """Kill and reap its children that are none of its own (orphans of a lent child's
        children, reparented here when it died)."""
        try:
            kids = child_pids(os.getpid())
        except OSError:
            return
        for pid in kids:
            if pid in self.pidfds:
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    continue  # it had died: reaped now
                os.kill(pid, signal.SIGKILL)
                log.warning("lender: killed orphan process %d", pid)
            except (ChildProcessError, ProcessLookupError):
                pass


def _wait_status(info: Any) -> int:
    """A ``waitid`` result as ``os.waitpid`` gives the status (0 if there is none)."""
    if info is None:
        return 0
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    return info.si_status & 0x7F  # killed, or dumped core


def lender_main(parent: Channel, tree: SupervisorSpec, node: str) -> int:
    # A link and a pidfd per supervisor with a lent child: past the usual soft limit of
    # 1,024 in a tree of 1,000 supervisors.
    raise_fd_limit("lender")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        listener.bind(lender_address(node))
    except OSError as exc:
        log.error("lender: cannot bind its address: %s", exc)
        parent.try_send(TroubleFrame((), Trouble.LENDER_REFUSED.value))
        return 1
    listener.listen(_BACKLOG)
    listener.setblocking(False)
    return Lender(parent, tree, node, listener).run()


# ---- the root's side ------------------------------------------------------------------------

class LenderHandle:
    """The root supervisor's hold on the lender: fork it, watch it, fork it again."""

    def __init__(self, tree: SupervisorSpec, node: str) -> None:
        self.tree = tree
        self.node = node
        self.pid = 0
        self.pidfd = -1
        self.channel: Channel | None = None
        self.deaths = 0

    def start(self) -> bool:
        from ._procs import fork_with_channel  # noqa: PLC0415 - _procs imports this module

        tree, node = self.tree, self.node
        try:
            self.pid, self.channel = fork_with_channel(
                lambda theirs: lender_main(theirs, tree, node), "prism:lender")
        except OSError as exc:
            log.error("supervisor root: cannot fork the lender: %s (dormant supervisors fork "
                      "their children themselves)", exc)
            return False
        self.pidfd = os.pidfd_open(self.pid)
        return True

    def reap(self) -> int:
        """The lender died (its pidfd said so): reap it; its wait status."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = 0
        os.close(self.pidfd)
        if self.channel is not None:
            self.channel.close()
        self.pid, self.pidfd, self.channel = 0, -1, None
        return status

    def stop(self) -> None:
        """Close its channel: it kills and reaps its children and exits; killed if it has
        not within ``_STOP_WAIT_S``. Reaped."""
        if not self.pid:
            return
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if not readable(self.pidfd, _STOP_WAIT_S):
            log.error("supervisor root: the lender did not stop within %.0f s; killed",
                      _STOP_WAIT_S)
            send_signal(self.pidfd, signal.SIGKILL)
        self.reap()

    def may_restart(self) -> bool:
        self.deaths += 1
        return self.deaths < _DEATHS_TOLERATED
