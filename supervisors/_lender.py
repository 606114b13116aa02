"""The node's shared spare: one process, ``prism:lender``, that keeps a spare made ahead of time
for the first restart under any dormant supervisor, and is the parent of what it lent.

Why: a dormant supervisor (:mod:`._procs`) has let its own spare and zygote go, so its next
start forked the child itself, from deep in a fork chain whose pages ~2,000 processes share,
and the child then ran CPython's after-fork work and its set-up before ``init``: several times
the bare fork-after-death floor. One spare for the whole node has paid all of that ahead of
time, and costs two processes per node, not two per supervisor (measured with bare processes,
``bench/proto_first_restart.py``: 35-45% quicker than the supervisor's own fork).

Ownership: the root supervisor forks the lender (:class:`LenderHandle`), reaps it, forks it
again if it dies (``_DEATHS_TOLERATED`` times, then dormant supervisors fork their own, with a
log line), and kills it last as it exits, after every child. The lender forks its spare, and
a spare it lends becomes the supervisor's child in all but the kernel's record: the lender is
its parent, reaps it and passes its wait status on (:mod:`._lending` has the protocol); the
supervisor watches it by pidfd, signals it, and decides on its death as on any child's.

Invariants:

* a lent process dies with its supervisor: when the supervisor's connection closes, the
  lender kills every process it lent over it (and each one's process group);
* a lent process dies with the lender (its PDEATHSIG): its supervisor then sees it killed;
* the lender lends only a child its copy of the node's tree has at that path
  (:func:`resolve`), and only a worker (a supervisor child, a program keep the fork path);
  the supervisor asks only for a spec that is the very object its own copy of the tree has
  there, so a child changed since the tree was forked (``start_child``, a reload) is forked
  by its supervisor as before;
* the lender's other children are swept as a supervisor's are (the orphans a lent child
  left when it died are reparented to the lender, a child subreaper).
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import signal
import socket
import time
from typing import Any

import msgspec

from .._address import own_pid
from .._childspec import ChildSpec, ChildType, SupervisorSpec
from .._exit import reason_from_exception
from .._errors import ChildSpecError
from .._nodeinfo import creation_of, peer_creds
from .._process import child_pids, kill_group, send_signal, set_process_name
from .._program import Program
from .._reactor import open_signal_wakeup
from .._worker_runtime import WorkerContext
from ..transports._channel import Channel
from ..transports._frames import BecomeAt, ExitingFrame, TroubleFrame
from ._child import proc_name, run_child
from ._lending import Lend, Lent, LentExit, NotLent, decode, encode, lender_address
from ._trouble import Trouble

__all__ = ["resolve", "set_tree", "node_tree", "lender_main", "LenderHandle"]

log = logging.getLogger(__name__)

SPARES = 1
# A spare is made this long after one was lent: made at once, its fork would take a CPU from
# the replacement's init, which is what the restart waits for.
REMAKE_AFTER_S = 0.05
_DEATHS_TOLERATED = 3
_STOP_WAIT_S = 2.0
_BACKLOG = 128

_tree: SupervisorSpec | None = None


def set_tree(tree: SupervisorSpec) -> None:
    """Record the node's tree as the root has it, before it forks anything: every process of
    the tree then holds this very object, which is how a supervisor tells a child spec the
    lender knows (the same object) from one it does not (:func:`resolve`)."""
    global _tree
    _tree = tree


def node_tree() -> SupervisorSpec | None:
    return _tree


def resolve(tree: SupervisorSpec, path: tuple[str, ...], spec_id: str) -> ChildSpec | None:
    """The child spec ``spec_id`` of the supervisor at ``path`` in ``tree``, where every step
    is a static child whose start is a SupervisorSpec; None if there is none."""
    spec = tree
    for part in path:
        child = next((c for c in spec.children if c.id == part), None)
        if child is None or not isinstance(child.start, SupervisorSpec):
            return None
        spec = child.start
    return next((c for c in spec.children if c.id == spec_id), None)


def lendable(spec: ChildSpec) -> bool:
    return spec.type is ChildType.WORKER and not isinstance(spec.start, Program)


# ---- the shared spare -----------------------------------------------------------------------

def _spare_main(channel: Channel, tree: SupervisorSpec, node: str) -> int:
    """Runs in the lender's spare: made ready for any worker, then told which one to become."""
    prepared = WorkerContext(None, own_pid(node, creation_of(node)), "")
    frame = channel.receive_one()
    if not isinstance(frame, BecomeAt):
        return 0
    spec = resolve(tree, frame.path, frame.spec_id)
    if spec is None:  # the lender checked; defensive
        channel.try_send(ExitingFrame(reason_from_exception(ChildSpecError(
            "id", frame.spec_id, f"no such child under {'/'.join(frame.path) or 'root'}"))))
        return 1
    if frame.key != frame.spec_id:
        spec = msgspec.structs.replace(spec, args=tuple(frame.args))
    set_process_name(proc_name(spec, frame.key))
    return run_child(spec, channel, (*frame.path, frame.key), node, prepared, alone=True)


# ---- the lender process ---------------------------------------------------------------------

class _Spare:
    __slots__ = ("pid", "pidfd", "channel")

    def __init__(self, pid: int, channel: Channel) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.channel = channel


class _Loan:
    __slots__ = ("pid", "pidfd", "conn")

    def __init__(self, pid: int, pidfd: int, conn: socket.socket) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.conn = conn


class Lender:
    """The lender's loop (see the module doc): a selector over its listening socket, each
    supervisor's connection, each spare's and loan's pidfd, its parent's channel and a
    signal wakeup (SIGCHLD: sweep)."""

    def __init__(self, parent: Channel, tree: SupervisorSpec, node: str,
                 listener: socket.socket) -> None:
        self.parent = parent
        self.tree = tree
        self.node = node
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.spares: list[_Spare] = []
        self.loans: dict[int, _Loan] = {}
        self.conns: dict[socket.socket, set[int]] = {}
        self.remake_at = 0.0  # monotonic: fork spares then (0: now, if short)
        self.sweep_due = False

    def trouble(self, what: Trouble) -> None:
        self.parent.try_send(TroubleFrame((), what.value))

    def run(self) -> int:
        wake_r, _wake_w = open_signal_wakeup()
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd carries it
        self.sel.register(wake_r, selectors.EVENT_READ, ("on_signal", wake_r))
        self.sel.register(self.parent.sock, selectors.EVENT_READ, ("on_parent", None))
        self.sel.register(self.listener, selectors.EVENT_READ, ("on_accept", None))
        while True:
            timeout = None
            if len(self.spares) < SPARES:
                timeout = max(0.0, self.remake_at - time.monotonic())
            for key, _ in self.sel.select(timeout):
                handler, obj = key.data
                getattr(self, handler)(obj)
            if len(self.spares) < SPARES and time.monotonic() >= self.remake_at:
                self.fork_spare()
            if self.sweep_due:
                self.sweep_due = False
                self.sweep_orphans()

    def fork_spare(self) -> None:
        from ._procs import fork_with_channel  # noqa: PLC0415 - _procs imports this module

        tree, node = self.tree, self.node
        try:
            pid, mine = fork_with_channel(lambda theirs: _spare_main(theirs, tree, node),
                                          "prism:shared-spare")
        except OSError as exc:  # the process limit: supervisors fork their own meanwhile
            self.remake_at = time.monotonic() + 1.0
            log.error("lender: cannot fork a spare: %s (trying again in 1 s)", exc)
            self.trouble(Trouble.FORK_FAILED)
            return
        spare = _Spare(pid, mine)
        self.spares.append(spare)
        self.sel.register(spare.pidfd, selectors.EVENT_READ, ("on_spare_exit", spare))

    def on_signal(self, sock: socket.socket) -> None:
        try:
            sigs = sock.recv(64)
        except BlockingIOError:
            return
        if signal.SIGCHLD in sigs:
            self.sweep_due = True

    def on_parent(self, _: Any) -> None:
        self.parent.receive()
        if self.parent.closed:  # the root stops it, or is gone: its children go first
            for pid, pidfd in [*((s.pid, s.pidfd) for s in self.spares),
                               *((loan.pid, loan.pidfd) for loan in self.loans.values())]:
                kill_group(pid)
                self.reap(pid, pidfd)
            os._exit(0)

    def on_accept(self, _: Any) -> None:
        while True:
            try:
                conn, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE: the supervisor finds no lender and forks
                log.error("lender: cannot accept a connection: %s", exc)
                self.trouble(Trouble.LENDER_REFUSED)
                return
            uid = peer_creds(conn)[1]
            if uid != os.geteuid():
                log.error("lender: refused a connection from uid %d", uid)
                self.trouble(Trouble.LENDER_REFUSED)
                conn.close()
                continue
            conn.setblocking(False)
            self.conns[conn] = set()
            self.sel.register(conn, selectors.EVENT_READ, ("on_request", conn))

    def on_request(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close_conn(conn)
            return
        try:
            message = decode(data)
        except (msgspec.DecodeError, ValueError) as exc:
            message, why = None, f"malformed: {exc}"
        else:
            why = "" if isinstance(message, Lend) else f"not a request: {type(message).__name__}"
        if message is None or why:
            log.error("lender: dropped a request: %s", why)
            self.trouble(Trouble.LENDER_REFUSED)
            self.answer(conn, NotLent(why))
            return
        self.lend(conn, message)

    def answer(self, conn: socket.socket, message: Any, fds: list[int] | None = None) -> bool:
        try:
            if fds:
                socket.send_fds(conn, [encode(message)], fds)
            else:
                conn.send(encode(message))
            return True
        except OSError:  # gone (its EOF closes it), or a full buffer of a stuck supervisor
            return False

    def lend(self, conn: socket.socket, req: Lend) -> None:
        spec = resolve(self.tree, req.path, req.spec_id)
        if spec is None or not lendable(spec):
            self.answer(conn, NotLent("not a worker of the node's tree"))
            return
        if not self.spares:
            self.answer(conn, NotLent("no spare"))
            return
        spare = self.spares.pop(0)
        self.sel.unregister(spare.pidfd)
        self.remake_at = time.monotonic() + REMAKE_AFTER_S
        loan = _Loan(spare.pid, spare.pidfd, conn)
        self.loans[loan.pid] = loan
        self.conns[conn].add(loan.pid)
        self.sel.register(loan.pidfd, selectors.EVENT_READ, ("on_loan_exit", loan))
        if not self.answer(conn, Lent(spare.pid), [spare.channel.fileno()]):
            send_signal(loan.pidfd, signal.SIGKILL)  # nobody to own it: reaped at its exit
        spare.channel.close()

    def close_conn(self, conn: socket.socket) -> None:
        """A supervisor is gone (or closed its link): what it was lent dies, as its children."""
        self.sel.unregister(conn)
        for pid in self.conns.pop(conn, ()):
            loan = self.loans.get(pid)
            if loan is not None:
                send_signal(loan.pidfd, signal.SIGKILL)
                kill_group(pid)
        conn.close()

    def on_loan_exit(self, loan: _Loan) -> None:
        kill_group(loan.pid)  # before the reap: the group id cannot have been reused
        self.sel.unregister(loan.pidfd)
        del self.loans[loan.pid]
        status = self.reap(loan.pid, loan.pidfd)
        owned = self.conns.get(loan.conn)
        if owned is not None and loan.pid in owned:
            owned.discard(loan.pid)
            if not self.answer(loan.conn, LentExit(loan.pid, status)):
                log.error("lender: could not tell its supervisor that lent process %d died",
                          loan.pid)

    def on_spare_exit(self, spare: _Spare) -> None:
        self.spares.remove(spare)
        self.sel.unregister(spare.pidfd)
        status = self.reap(spare.pid, spare.pidfd)
        spare.channel.close()
        log.warning("lender: its spare %d died (wait status %d)", spare.pid, status)
        self.trouble(Trouble.SPARE_DIED)
        self.remake_at = time.monotonic() + REMAKE_AFTER_S

    @staticmethod
    def reap(pid: int, pidfd: int) -> int:
        """Reap a child (dead, or killed now) and close its pidfd: its wait status."""
        send_signal(pidfd, signal.SIGKILL)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = 0
        os.close(pidfd)
        return status

    def sweep_orphans(self) -> None:
        try:
            kids = child_pids(os.getpid())
        except OSError:
            return
        known = {*self.loans, *(s.pid for s in self.spares)}
        for pid in kids:
            if pid in known:
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    continue  # it had died: reaped now
                os.kill(pid, signal.SIGKILL)
                log.warning("lender: killed orphan process %d", pid)
            except (ChildProcessError, ProcessLookupError):
                pass


def lender_main(parent: Channel, tree: SupervisorSpec, node: str) -> int:
    _raise_fd_limit()
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


def _raise_fd_limit() -> None:
    """A connection and a pidfd per supervisor with a lent child: up to two per supervisor of
    the tree, past the usual soft limit of 1,024 in a tree of 1,000."""
    import resource  # noqa: PLC0415 - only the lender needs it

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("lender: cannot raise its file descriptor limit from %d to %d: %s",
                        soft, hard, exc)


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
        if not select.select([self.pidfd], [], [], _STOP_WAIT_S)[0]:
            log.error("supervisor root: the lender did not stop within %.0f s; killed",
                      _STOP_WAIT_S)
            send_signal(self.pidfd, signal.SIGKILL)
        self.reap()

    def may_restart(self) -> bool:
        self.deaths += 1
        return self.deaths < _DEATHS_TOLERATED
