"""The mesh listener's descriptor number: high, so a killed node's listener closes first.

Role: when a node process is killed, its kernel closes its descriptors, and the other
members confirm the death by finding nothing listening at its address (:mod:`._knock`).
A member starts knocking when its link's connection to the dead node closes, so the sooner
the dead node's listener closes relative to its connections, the sooner the knock is
refused. The kernel (Linux since 5.x) drops a dying process's descriptors in number order
but finishes closing the files last to first (the deferred closes run as a stack): the file
whose last descriptor has the highest number closes first. The listening socket, bound when
the mesh starts, normally has a low number, below the connections accepted later, so it
closed last: 1-2 ms after the first connection at p50 here, 4-8 ms at p99 on a busy host
(the woken members take the CPU the dying process needs), and every knock waited for it.

Protocol: :func:`open_descriptor_floor` holds every free descriptor number below a floor
(copies of ``/dev/null``) while the listener is bound, so the listening socket gets a number
above them; they are released at once, so the connections (libzmq's descriptors and the
node's copies of them) get the low numbers, and the listener closes before any of them
when the process is killed. If the descriptor limit leaves no room above the floor, nothing
is held (the listener closes last, as before: the knock then waits for it). A kernel that
finishes the closes in number order closes such a listener last instead; the knock's
wait for the listener (:mod:`._knock`) covers that order too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from collections.abc import Iterator

__all__ = ["open_descriptor_floor", "LISTENER_FD_FLOOR"]

log = logging.getLogger(__name__)

# Above every descriptor a node normally holds (a clustered node: a few per member and per
# client); below FD_SETSIZE, so even a select() on it would work.
LISTENER_FD_FLOOR = 1000


@contextlib.contextmanager
def open_descriptor_floor(floor: int = LISTENER_FD_FLOOR) -> Iterator[None]:
    """While inside, every free descriptor number below ``floor`` is taken: a socket made
    here gets ``floor`` or above (unless another thread made one meanwhile)."""
    held: list[int] = []
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft >= 2 * floor:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            held.append(fd)
            while fd < floor - 1:
                fd = os.dup(fd)  # the lowest free number: the holes first, then upwards
                held.append(fd)
    except OSError as exc:  # no descriptor left below the floor: bind where the kernel says
        log.warning("mesh listener bound below descriptor %d (%s): a killed node's listener "
                    "may close after its connections, and its loss be confirmed later",
                    floor, exc)
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
