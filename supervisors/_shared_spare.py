"""The node's shared spare itself (see :mod:`._lender`): what it may become, and its life.

The spare is forked by the lender from the image the tree was forked from, so it holds the
node's tree as the root had it (:func:`set_tree`). It makes what every worker needs, then
waits at the spare's address (:func:`~._lending.spare_address`) for the one supervisor that
takes it, becomes the worker that supervisor names by path (``BecomeAt``; only one the tree
has there: :func:`resolve`), and once its ``ready`` is sent, tells the lender who took it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket

import msgspec

from .._address import own_pid
from .._childspec import ChildSpec, ChildType, SupervisorSpec
from .._errors import ChildSpecError
from .._exit import reason_from_exception
from .._nodeinfo import creation_of, peer_creds
from .._process import set_process_name
from .._reactor import _set_handler, readable
from .._program import Program
from .._worker_runtime import WorkerContext
from ..transports._channel import Channel
from ..transports._frames import BecomeAt, ExitingFrame
from ._child import proc_name, run_child
from ._lending import Taken, encode, spare_address

__all__ = ["set_tree", "node_tree", "resolve", "lendable", "spare_main", "TOLD_WITHIN_S"]

log = logging.getLogger(__name__)

_tree: SupervisorSpec | None = None
# A supervisor that takes the spare tells it what to become within the on_exit that took it
# (its reaping, at most EXIT_TIMEOUT_S waiting for the lender, and its decision): a taker
# silent this long is not one, or is stuck; the spare is not held for it.
TOLD_WITHIN_S = 3.0


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



def _die_at_eof(conn: socket.socket, on: bool) -> None:
    """Have the kernel send this process SIGIO (default action: end it) when ``conn`` turns
    readable (its peer wrote, or is gone), or stop it."""
    flags = fcntl.fcntl(conn.fileno(), fcntl.F_GETFL)
    if on:
        _set_handler(int(signal.SIGIO), int(signal.SIG_DFL))
        fcntl.fcntl(conn.fileno(), fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(conn.fileno(), fcntl.F_SETFL, flags | os.O_ASYNC)
    else:
        fcntl.fcntl(conn.fileno(), fcntl.F_SETFL, flags & ~os.O_ASYNC)


def spare_main(lender: socket.socket, tree: SupervisorSpec, node: str) -> int:
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
    if not readable(conn.fileno(), TOLD_WITHIN_S):
        log.warning("lender: its spare was taken by pid %d and not told what to become "
                    "within %.0f s; let go", owner, TOLD_WITHIN_S)
        return 0  # as if let go: the lender makes another (and the taker, if it ever
        # sends BecomeAt, finds the connection closed and forks its child itself)
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
    # Until the lender knows who took it (after ready, below), nothing would kill this
    # process if its supervisor died during its init: so its channel's EOF does, by SIGIO
    # (whose default action ends the process), in any init, even one that never returns
    # to Python's loop. A supervisor sends a worker nothing after BecomeAt, so only its
    # death makes the channel readable now.
    _die_at_eof(conn, True)
    if readable(conn.fileno(), 0):
        return 0  # gone already, before the above: no SIGIO comes for an EOF that came

    def tell_lender() -> None:
        # After ready, not before: the lender, long asleep, would take this CPU from the
        # start the supervisor waits for (until then, the SIGIO above stands in for it).
        if lender.fileno() < 0:
            return
        _die_at_eof(conn, False)
        try:
            lender.send(encode(Taken(owner)))
        except OSError:  # the lender is gone: this process dies with it (PDEATHSIG)
            pass
        lender.close()

    try:
        return run_child(spec, channel, (*frame.path, frame.key), node, prepared,
                         tell_lender)
    finally:
        # Told what to become, it was taken, whatever became of its start: a lent child
        # whose init failed (or was ignored) tells the lender on its way out, so its death
        # is its supervisor's (left a zombie for it to read), not a spare's that died
        # untaken (counted, and the next spare made later and later). Only SIGKILL during
        # init leaves it unsaid.
        tell_lender()
