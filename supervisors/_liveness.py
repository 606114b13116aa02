"""A running program's liveness check: tried every ``alive_every`` seconds; after
``alive_failures`` failures in a row the supervisor kills the program's process group and
the exit reason names the check (``Crashed(type="prismatic.LivenessFailed", ...)``), so the
usual restart rules apply.

One round at a time, never blocking the supervisor's loop: a ``port`` check on a numeric
address is a non-blocking connect from the loop, a ``file`` check a ``stat``; an ``http``
check (or a port on a host name, whose lookup could block) is a one-shot probe process
(``_probe_process.probe_once``) the loop watches by pidfd. A round that has no answer by its
deadline (the interval, at most 5 s) counts as a failure and is abandoned.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from typing import Any

from .._exit import Crashed, ExitReason
from .._process import fork_child, send_signal
from .._program import FileCheck, PortCheck, Program, describe_check
from ._probe_process import probe_once

__all__ = ["Liveness", "ROUND_MAX_S"]

ROUND_MAX_S = 5.0


class Liveness:
    """The liveness state of one program child (see the module doc)."""

    def __init__(self, program: Program) -> None:
        assert program.alive is not None
        self.check = program.alive
        self.every = program.alive_every
        self.allowed = program.alive_failures
        self.cwd = program.cwd
        self.fails = 0
        self.gen = 0  # the current timer's generation: an older timer entry is stale
        self.busy = False  # a round is in progress
        self.conn: socket.socket | None = None
        self.probe_pid = 0
        self.probe_fd = -1
        self.addr: tuple[int, tuple[Any, ...]] | None = None
        if isinstance(self.check, PortCheck):
            try:
                info = socket.getaddrinfo(self.check.host, self.check.port,
                                          type=socket.SOCK_STREAM,
                                          flags=socket.AI_NUMERICHOST)[0]
                self.addr = (info[0], info[4])
            except (socket.gaierror, IndexError):
                self.addr = None

    def round_time(self) -> float:
        return min(self.every, ROUND_MAX_S)

    def begin(self) -> bool | int | socket.socket:
        """Start a round: its outcome at once (a bool), or what to watch for it: a socket
        (writable when the connect is done) or a probe's pidfd (readable when it exits)."""
        self.busy = True
        if isinstance(self.check, FileCheck):
            return os.path.exists(os.path.join(self.cwd or ".", self.check.path))
        if self.addr is not None:
            family, addr = self.addr
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if err == errno.EINPROGRESS:
                self.conn = sock
                return sock
            sock.close()
            return err == 0
        check, cwd = self.check, self.cwd
        self.probe_pid = fork_child((), lambda: probe_once(check, cwd), "prism:alive")
        self.probe_fd = os.pidfd_open(self.probe_pid)
        return self.probe_fd

    def finish(self) -> bool:
        """The watched socket or pidfd is ready: the round's outcome."""
        if self.conn is not None:
            err = self.conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            self.conn.close()
            self.conn = None
            return err == 0
        _, status = os.waitpid(self.probe_pid, 0)
        os.close(self.probe_fd)
        self.probe_pid, self.probe_fd = 0, -1
        return os.waitstatus_to_exitcode(status) == 0

    def watched(self) -> list[int]:
        """The fds of a round in progress (the caller stops watching them before abandon)."""
        if self.conn is not None:
            return [self.conn.fileno()]
        return [self.probe_fd] if self.probe_pid else []

    def abandon(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.probe_pid:
            send_signal(self.probe_fd, signal.SIGKILL)
            os.waitpid(self.probe_pid, 0)
            os.close(self.probe_fd)
            self.probe_pid, self.probe_fd = 0, -1
        self.busy = False

    def outcome(self, ok: bool) -> bool:
        """Count a round's outcome; True if the program must now be killed."""
        self.busy = False
        self.fails = 0 if ok else self.fails + 1
        return self.fails >= self.allowed

    def reason(self) -> ExitReason:
        return Crashed(type="prismatic.LivenessFailed",
                       message=f"liveness check {describe_check(self.check)} failed "
                               f"{self.fails} times in a row")
