"""A supervisor's zygote: the one process it forks after starting, which makes all the others.

Why: see :mod:`prismatic._clone`. In short, a supervisor that forks pays a copy-on-write fault
for each page it writes afterwards, on the very path that restarts a child, and its forks
slow down as it grows; the zygote stays small and idle, so neither happens.

The zygote makes *spares*: idle processes that wait on a channel to be told which child to
become (``Become``). Each spare is cloned with ``CLONE_PARENT``, so it is the supervisor's own
child: the supervisor watches it with a pidfd and reaps it, and its PDEATHSIG is armed against
the supervisor. The zygote itself is a plain child of the supervisor and dies with it.

Protocol on the zygote socket (``AF_UNIX`` stream, private to the pair):

* supervisor -> zygote: one byte ``b"s"`` per spare wanted, carrying (``SCM_RIGHTS``) the
  spare's end of a new channel, which the supervisor made and keeps the other end of;
* zygote -> supervisor: one little-endian ``int32`` per request, in request order: the
  spare's pid, or ``-errno`` when the clone failed;
* EOF from the supervisor: the zygote answers what it has read, then exits 0.

Invariant: every spare the zygote made is answered for before the zygote exits, except when
it is killed; then the supervisor kills the spares it never heard of: they are its children
still in the dead zygote's process group (a spare leads a group of its own only once it
becomes a child; ``_procs.SpareKeeping.sweep_orphans``).
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable

from .._process import fork_child, fork_sibling, send_signal
from ..transports._channel import Channel, open_channel_pair

__all__ = ["Zygote"]

log = logging.getLogger(__name__)

_REQUEST = b"s"
_MAX_BATCH = 64
CLOSE_WAIT_S = 1.0  # a zygote's pending clones take ms; one that takes this long is stuck


class Zygote:
    """The supervisor's handle on its zygote process."""

    def __init__(self, spare_main: Callable[[Channel], int], name: str) -> None:
        self.hung = False  # close() found it not answering and killed it
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.pid = fork_child((theirs.fileno(),), lambda: _zygote_main(theirs, spare_main),
                                  name)
        except BaseException:
            mine.close()  # the fork failed (the process limit): nothing holds the pair
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        self.sock = mine
        self.pidfd = os.pidfd_open(self.pid)
        self.pending: collections.deque[Channel] = collections.deque()
        self._partial = b""

    def request(self) -> bool:
        """Ask for one more spare (its channel waits in ``pending`` until answered); False if
        the zygote is gone (its death is reported by its pidfd)."""
        mine, theirs = open_channel_pair()
        try:
            socket.send_fds(self.sock, [_REQUEST], [theirs.fileno()])
        except OSError:
            mine.close()
            return False
        finally:
            theirs.close()
        self.pending.append(mine)
        return True

    def answers(self) -> list[tuple[Channel, int]]:
        """The requests answered so far: (channel, pid or -errno), in request order."""
        return self._read()[0]

    def _read(self) -> tuple[list[tuple[Channel, int]], bool]:
        try:
            data = self.sock.recv(4 * _MAX_BATCH)
        except (BlockingIOError, InterruptedError):
            return [], False
        except OSError:
            data = b""
        if not data:
            return [], True
        data = self._partial + data
        whole = len(data) // 4 * 4
        self._partial = data[whole:]
        pids = struct.unpack(f"<{whole // 4}i", data[:whole])
        return [(self.pending.popleft(), pid) for pid in pids if self.pending], False

    def close(self) -> list[tuple[Channel, int]]:
        """Stop the zygote in order: it answers what it was asked, then exits. Returns those
        last answers; blocks for as long as its pending clones take, at most ``CLOSE_WAIT_S``
        (a zygote that does not answer, stopped or stuck, is killed then: the supervisor's
        loop must not wait on it, and the spares it never answered for are swept)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already dead: kill() below reaps it
        deadline = time.monotonic() + CLOSE_WAIT_S
        got: list[tuple[Channel, int]] = []
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("zygote %d did not answer %d spare request(s) within %.1f s of "
                            "its stop: killed", self.pid, len(self.pending), CLOSE_WAIT_S)
                self.hung = True  # the owner counts it (its Trouble.ZYGOTE_HUNG)
                break
            self.sock.settimeout(left)  # a timeout reads as the end: then the check above
            answered, eof = self._read()
            got += answered
            if eof and time.monotonic() < deadline:
                break
        self.kill()
        return got

    def kill(self) -> None:
        """Kill and reap the zygote. Requests it never answered are unknown: the caller
        sweeps for the spares they may have made (``sweep_orphans``)."""
        send_signal(self.pidfd, signal.SIGKILL)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        os.close(self.pidfd)
        self.sock.close()
        for channel in self.pending:
            channel.close()
        self.pending.clear()


def _zygote_main(sock: socket.socket, spare_main: Callable[[Channel], int]) -> int:
    """Runs in the zygote: answer spare requests until the supervisor's side closes."""
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, _MAX_BATCH, _MAX_BATCH)
        except OSError:
            return 1
        if not msg:
            return 0
        pids = []
        for i in range(len(msg)):
            if i >= len(fds):
                pids.append(-errno.EBADF)  # a request whose fd did not arrive
                continue
            pids.append(_spawn(fds[i], spare_main))
        for fd in fds[len(msg):]:
            os.close(fd)
        sock.sendall(struct.pack(f"<{len(pids)}i", *pids))


def _spare(fd: int, spare_main: Callable[[Channel], int]) -> int:
    return spare_main(Channel(socket.socket(fileno=fd)))


def _spawn(fd: int, spare_main: Callable[[Channel], int]) -> int:
    try:
        return fork_sibling((fd,), _spare, (fd, spare_main),
                            "prism:spare")
    except OSError as exc:
        log.error("zygote: cannot clone a spare: %s", exc)
        return -(exc.errno or errno.EAGAIN)
    finally:
        os.close(fd)
