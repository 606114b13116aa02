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
  (:func:`resolve`); the supervisor takes it only for a spec that is the very object its own
  copy of the tree has there, so a child changed since the tree was forked (``start_child``, a
  reload) is forked by its supervisor as before;
* a dead child of the lender's stays a zombie until its supervisor has read its status, for
  ``REAP_GRACE_S`` at most; its process group is killed at once;
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
from .._process import child_pids, fork_child, kill_group, send_signal, set_process_name
from .._program import Program
from .._reactor import open_signal_wakeup
from .._worker_runtime import WorkerContext
from ..transports._channel import Channel
from ..transports._frames import BecomeAt, ExitingFrame, TroubleFrame
from ._child import proc_name, run_child
from ._lending import ExitOf, LentExit, Reap, Taken, decode, encode, lender_address, spare_address
from ._trouble import Trouble

__all__ = ["resolve", "set_tree", "node_tree", "lender_main", "LenderHandle"]

log = logging.getLogger(__name__)

SPARES = 1
# A spare is made this long after one was lent: made at once, its fork would take a CPU from
# the replacement's init, which is what the restart waits for.
REMAKE_AFTER_S = 0.05
_REMAKE_MAX_S = 5.0
_DEATHS_TOLERATED = 3
# A dead child is left a zombie this long at most, so its supervisor can read its status
# from /proc (see _lending); then it is reaped, its status kept for an ExitOf.
REAP_GRACE_S = 1.0
_STATUSES_KEPT = 256  # exits not asked for yet: a supervisor asks at once, or is gone
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

def _spare_main(lender: socket.socket, tree: SupervisorSpec, node: str) -> int:
    """Runs in the lender's spare: made ready for any worker, it waits at the spare's address
    for the one supervisor that takes it, tells the lender who, and becomes the child that
    supervisor names (``BecomeAt``, the first frame on the connection)."""
    prepared = WorkerContext(None, own_pid(node, creation_of(node)), "")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind(spare_address(node))
    except OSError as exc:
        log.error("lender: its spare cannot bind the spare's address: %s", exc)
        return 1
    listener.listen(0)  # one waiting connection at most: a second supervisor finds none
    while True:
        conn, _ = listener.accept()
        owner, uid = peer_creds(conn)
        if uid == os.geteuid() and owner > 0:
            break
        log.error("lender: its spare refused a connection from uid %d", uid)
        conn.close()
    listener.close()  # a connection queued meanwhile is reset: its supervisor forks instead
    channel = Channel(conn)
    frame = channel.receive_one()
    if not isinstance(frame, BecomeAt):
        return 0  # not told what to become (EOF): nothing was lent
    spec = resolve(tree, frame.path, frame.spec_id)
    if spec is None or not lendable(spec):  # the supervisor checked: another process's doing
        channel.try_send(ExitingFrame(reason_from_exception(ChildSpecError(
            "id", frame.spec_id, f"no worker {frame.spec_id!r} under "
                                 f"{'/'.join(frame.path) or 'root'} in the node's tree"))))
        return 1
    if frame.key != frame.spec_id:
        spec = msgspec.structs.replace(spec, args=tuple(frame.args))
    set_process_name(proc_name(spec, frame.key))

    def tell_lender() -> None:
        # After ready, not before: the lender, long asleep, would take this CPU from the
        # start the supervisor waits for. Until the lender knows, this process would not die
        # with its supervisor; the lender kills it if that supervisor is gone by then.
        lender.send(encode(Taken(owner)))
        lender.close()

    return run_child(spec, channel, (*frame.path, frame.key), node, prepared, tell_lender)


# ---- the lender process ---------------------------------------------------------------------

class _Child:
    """The spare, then (once taken) a lent child."""

    __slots__ = ("pid", "pidfd", "sock", "owner")

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.sock: socket.socket | None = sock  # the spare's side of Taken; None once lent
        self.owner = 0  # the supervisor it was lent to (0: not lent)


class _Owner:
    """A supervisor that took the spare: its pidfd, its link (once it opened one) and its
    lent children."""

    __slots__ = ("pid", "pidfd", "link", "lent")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.link: socket.socket | None = None
        self.lent: set[int] = set()


class Lender:
    """The lender's loop (see the module doc): a selector over its listening socket for links,
    each link, the spare's side of ``Taken``, the pidfds of its children and of the
    supervisors they were lent to, its parent's channel and a signal wakeup (SIGCHLD: sweep).
    """

    def __init__(self, parent: Channel, tree: SupervisorSpec, node: str,
                 listener: socket.socket) -> None:
        self.parent = parent
        self.tree = tree
        self.node = node
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.spare: _Child | None = None
        self.lent: dict[int, _Child] = {}
        self.owners: dict[int, _Owner] = {}
        self.links: dict[socket.socket, int] = {}  # link -> the pid at its other end
        self.statuses: dict[int, int] = {}  # dead children's, not told yet (oldest first)
        self.asked: dict[int, socket.socket] = {}  # ExitOf a child not dead yet
        self.zombies: dict[int, tuple[int, float]] = {}  # dead, unreaped: pidfd, reap by
        self.remake_at = 0.0  # monotonic: fork the next spare then
        self.spare_deaths = 0  # spares in a row that died before they were taken
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
            due = min((d for _, d in self.zombies.values()), default=float("inf"))
            if self.spare is None:
                due = min(due, self.remake_at)
            timeout = None if due == float("inf") else max(0.0, due - time.monotonic())
            for key, _ in self.sel.select(timeout):
                handler, obj = key.data
                getattr(self, handler)(obj)
            if self.zombies:
                self.reap_overdue()
            if self.spare is None and time.monotonic() >= self.remake_at:
                self.fork_spare()
            if self.sweep_due:
                self.sweep_due = False
                self.sweep_orphans()

    def fork_spare(self) -> None:
        tree, node = self.tree, self.node
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = fork_child((theirs.fileno(),), lambda: _spare_main(theirs, tree, node),
                             "prism:shared-spare")
        except OSError as exc:  # the process limit: supervisors fork their own meanwhile
            mine.close()
            self.remake_at = time.monotonic() + 1.0
            log.error("lender: cannot fork a spare: %s (trying again in 1 s)", exc)
            self.trouble(Trouble.FORK_FAILED)
            return
        finally:
            theirs.close()
        spare = self.spare = _Child(pid, mine)
        self.sel.register(mine, selectors.EVENT_READ, ("on_taken", spare))
        self.sel.register(spare.pidfd, selectors.EVENT_READ, ("on_child_exit", spare))

    def on_taken(self, spare: _Child) -> None:
        """The spare says who took it (or closed its side: it died; its pidfd says so)."""
        sock = spare.sock
        assert sock is not None
        try:
            data = sock.recv(1 << 10, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self.sel.unregister(sock)
        sock.close()
        spare.sock = None
        if self.spare is spare:
            self.spare = None
            self.remake_at = time.monotonic() + REMAKE_AFTER_S
        try:
            taken = decode(data) if data else None
        except (msgspec.DecodeError, ValueError):
            taken = None
        if not isinstance(taken, Taken):
            return  # it died before it was taken (or said something else: killed below)
        try:
            owner = self.owners.get(taken.owner) or self.add_owner(taken.owner)
        except OSError:  # the supervisor is gone already: so is what it took
            send_signal(spare.pidfd, signal.SIGKILL)
            return
        spare.owner = owner.pid
        self.spare_deaths = 0
        owner.lent.add(spare.pid)
        self.lent[spare.pid] = spare

    def add_owner(self, pid: int) -> _Owner:
        owner = self.owners[pid] = _Owner(pid)
        self.sel.register(owner.pidfd, selectors.EVENT_READ, ("on_owner_exit", owner))
        for link, peer in self.links.items():
            if peer == pid:
                owner.link = link
        return owner

    def on_child_exit(self, child: _Child) -> None:
        """A child died: its group is killed now; it is reaped once its supervisor has read
        its status from /proc (and says so: Reap), or asks for it (ExitOf), or after
        ``REAP_GRACE_S`` (see ``_lending``)."""
        if child.sock is not None:
            self.on_taken(child)  # what it said before it died, if anything
        kill_group(child.pid)  # the group id cannot be reused: the leader is not reaped
        self.sel.unregister(child.pidfd)
        if self.spare is child:
            self.spare = None
            self.remake_at = time.monotonic() + REMAKE_AFTER_S
        owner = self.owners.get(child.owner) if child.owner else None
        if child.owner:
            del self.lent[child.pid]
        if owner is not None:
            owner.lent.discard(child.pid)
            if not owner.lent:
                self.drop_owner(owner)
        elif not child.owner and _let_go(child.pid):
            # Taken, then let go before it was told anything (a decision that restarted
            # nothing: see _runtime.on_exit): nobody asks for it; made again as after a lend.
            self.reap(child.pid, child.pidfd)
            self.remake_at = time.monotonic() + REMAKE_AFTER_S
            return
        elif not child.owner:
            # Before it said it was taken: a spare nobody took, or one taken and dead
            # during its start (its supervisor asks for the status).
            # One that cannot even start (its address held by another user's process, say)
            # is made again less and less often, not every 50 ms.
            self.spare_deaths += 1
            delay = min(REMAKE_AFTER_S * 2 ** self.spare_deaths, _REMAKE_MAX_S)
            self.remake_at = time.monotonic() + delay
            log.warning("lender: spare %d died before it said it was taken (the next in "
                        "%.2f s)", child.pid, delay)
            self.trouble(Trouble.SPARE_DIED)
        self.zombies[child.pid] = (child.pidfd, time.monotonic() + REAP_GRACE_S)
        asker = self.asked.pop(child.pid, None)
        if asker is not None:
            self.send(asker, LentExit(child.pid, self.reap_zombie(child.pid)))

    def reap_zombie(self, pid: int) -> int:
        pidfd, _ = self.zombies.pop(pid)
        return self.reap(pid, pidfd)

    def reap_overdue(self) -> None:
        """Zombies nobody read in time (a stopped supervisor, a dead one): reaped, their
        statuses kept for an ExitOf."""
        now = time.monotonic()
        for pid, (_, due) in list(self.zombies.items()):
            if due <= now:
                self.statuses[pid] = self.reap_zombie(pid)
        while len(self.statuses) > _STATUSES_KEPT:
            del self.statuses[next(iter(self.statuses))]

    def send(self, link: socket.socket, message: Any) -> bool:
        try:
            link.send(encode(message))
            return True
        except OSError:  # a full buffer of a stuck supervisor, or gone (its EOF closes it)
            return False

    def on_owner_exit(self, owner: _Owner) -> None:
        """A supervisor died: what it was lent dies too (reaped when its pidfd says so)."""
        for pid in owner.lent:
            child = self.lent.get(pid)
            if child is not None:
                send_signal(child.pidfd, signal.SIGKILL)
                kill_group(pid)
        owner.lent.clear()
        self.drop_owner(owner)

    def drop_owner(self, owner: _Owner) -> None:
        if self.owners.pop(owner.pid, None) is owner:
            self.sel.unregister(owner.pidfd)
            os.close(owner.pidfd)

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
            children = [*self.lent.values(), *([self.spare] if self.spare else [])]
            for child in children:
                kill_group(child.pid)
                self.reap(child.pid, child.pidfd)
            for pid in list(self.zombies):
                self.reap_zombie(pid)
            os._exit(0)

    def on_accept(self, _: Any) -> None:
        while True:
            try:
                link, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE: the supervisor finds no link, logs, carries on
                log.error("lender: cannot accept a link: %s", exc)
                self.trouble(Trouble.LENDER_REFUSED)
                return
            pid, uid = peer_creds(link)
            if uid != os.geteuid():
                log.error("lender: refused a link from uid %d", uid)
                self.trouble(Trouble.LENDER_REFUSED)
                link.close()
                continue
            link.setblocking(False)
            self.links[link] = pid
            self.sel.register(link, selectors.EVENT_READ, ("on_link", link))
            owner = self.owners.get(pid)
            if owner is not None:
                owner.link = link

    def on_link(self, link: socket.socket) -> None:
        """A supervisor asks for a lent child's status (ExitOf); EOF closes its link; anything
        else is refused (answered, counted, logged)."""
        try:
            data = link.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            try:
                ask = decode(data)
            except (msgspec.DecodeError, ValueError) as exc:
                ask, why = None, f"malformed: {exc}"
            else:
                why = f"{type(ask).__name__} is not a question"
            if not isinstance(ask, (ExitOf, Reap)):
                log.error("lender: refused a message from pid %d: %s", self.links[link], why)
                self.trouble(Trouble.LENDER_REFUSED)
                self.send(link, LentExit(0, -1))
            elif isinstance(ask, Reap):
                if ask.pid in self.zombies:
                    self.reap_zombie(ask.pid)  # its supervisor read the status
            elif ask.pid in self.zombies:
                self.send(link, LentExit(ask.pid, self.reap_zombie(ask.pid)))
            elif ask.pid in self.statuses:
                self.send(link, LentExit(ask.pid, self.statuses.pop(ask.pid)))
            elif ask.pid in self.lent or (self.spare is not None and self.spare.pid == ask.pid):
                self.asked[ask.pid] = link  # answered when it is reaped
            else:
                self.send(link, LentExit(ask.pid, -1))  # not one of the lender's
            return
        for pid, asker in list(self.asked.items()):
            if asker is link:
                del self.asked[pid]
        pid = self.links.pop(link)
        owner = self.owners.get(pid)
        if owner is not None and owner.link is link:
            owner.link = None
        self.sel.unregister(link)
        link.close()

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
        known = {*self.lent, *self.zombies, *([self.spare.pid] if self.spare else [])}
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


def _let_go(pid: int) -> bool:
    """Whether dead child ``pid`` (not reaped) is a spare that was let go: it exited 0."""
    try:
        result = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return result is not None and result.si_code == os.CLD_EXITED and result.si_status == 0


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
