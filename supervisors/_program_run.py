"""Running a program child, the supervisor's side: its output, readiness and stop.

How a program starts (never from a spare; ``posix_spawn`` through ``setpriv``, or fork then
exec) is :mod:`._program_exec`; a probe process that runs a blocking check is
:mod:`._probe_process`. This module is the supervisor's side: :class:`ProgramRun`.

The channel as exec's witness: the supervisor learns that exec succeeded from the EOF of
the program's channel. A forked child's end is close-on-exec, so EOF comes the moment exec
succeeds; if exec fails the child sends its reason (``exiting``: e.g. ``FileNotFoundError:
...``) first and exits 127. A spawned child has exec'd *setpriv* when ``posix_spawn``
returns, and the supervisor closes the other end itself, so both paths go on the same
way; then, for a spawned child, the program's own exec is seen in ``/proc/PID/comm``
(each exec sets it): looked at on the loop's timer (1 ms, growing to 5 ms) until it is
neither setpriv's nor the supervisor's (the spawn's clone has the supervisor's name for
a moment after ``posix_spawn`` returns), and read once more while the process is a zombie
if it dies first (setpriv that failed to exec the program fails the start).

Readiness, without blocking the supervisor's loop (it serves other children):

* none: ready at the program's exec (the EOF above, then its comm for a spawned one);
* ``line``: the supervisor reads the stdout pipe anyway (for the log) and matches each line
  while the child is starting;
* ``notify``: the supervisor binds an abstract datagram socket per starting program, passed
  as ``NOTIFY_SOCKET``; ``READY=1`` there is readiness (it is closed once ready);
* ``port`` on a numeric address: a non-blocking connect from the supervisor's loop, its
  outcome read when the socket turns writable, retried on the loop's timer after a
  refusal (1 ms, growing to 20 ms);
* ``http``, ``file`` (and ``port`` on a host name, whose lookup would block): a *probe*
  process, forked by the supervisor after exec,
  tries the check in a loop (2 ms, growing to 20 ms between tries) with ordinary blocking
  calls and exits 0 when it passes. The supervisor watches its pidfd like a child's. A probe
  is a child of the tree (PDEATHSIG, own group) and is killed when the start ends.

The start timeout runs from the fork. When it passes first, the program's group is killed
and the start fails with ``Crashed(type="prismatic.ReadinessTimeout", message=...)`` naming
the check; a program that exits before it is ready fails its start with its own reason.
Either way the usual intensity rules apply.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import socket
import time
from typing import Any

from .._exit import Crashed, ExitCode, ExitReason, Killed, Normal, Shutdown
from .._nodeinfo import current
from .._process import fork_child, send_signal
from .._program import (
    FileCheck, HttpCheck, LineCheck, NotifyCheck, PortCheck, Program, describe_check,
)
from ._liveness import Liveness
from ._logfile import RotatingLog, log_path
from ._probe_process import probe_main
from ._program_exec import exec_program

__all__ = ["exec_program", "ProgramRun", "READ_CHUNK"]  # exec_program: see _program_exec

log = logging.getLogger(__name__)

READ_CHUNK = 65536
_LINE_MAX = 65536  # a stdout "line" longer than this is matched in pieces


# ---- the supervisor's side ------------------------------------------------------------------

class ProgramRun:
    """What a supervisor holds for one program child: its output pipes and log, its
    readiness check in progress, and whether it was told to stop."""

    def __init__(self, program: Program, path: tuple[str, ...]) -> None:
        self.program = program
        self.path = path
        self.out_r, self.out_w = os.pipe()
        self.err_r, self.err_w = os.pipe()
        os.set_blocking(self.out_r, False)
        os.set_blocking(self.err_r, False)
        self.open_fds = {self.out_r, self.err_r}  # read ends not yet at EOF
        self.deadline = time.monotonic() + program.start_timeout
        self.exec_done = False
        self.stopping = False
        self.probe_pid = 0
        self.probe_fd = -1
        self.notify: socket.socket | None = None
        self.notify_address: str | None = None
        self.pattern = re.compile(program.ready.pattern.encode()) \
            if isinstance(program.ready, LineCheck) else None
        self.partial = b""
        self.conn: socket.socket | None = None  # a port check's connect in progress
        self.retry_at = 0.0  # when a refused port check (or the exec's) looks again (0: no)
        self.retry_delay = 0.001
        # Spawned through setpriv: the comms it has until it execs the program (the
        # supervisor's, copied by the spawn's clone, then setpriv's).
        self.shim: tuple[bytes, ...] | None = None
        self.past_shim = False
        self.port_addr: tuple[int, tuple[Any, ...]] | None = None
        if isinstance(program.ready, NotifyCheck):
            # os.urandom, not secrets: secrets loads OpenSSL into every process of the tree
            name = f"prismatic-notify/{os.getpid()}/{os.urandom(8).hex()}"
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(b"\0" + name.encode())
            self.notify.setblocking(False)
            self.notify_address = "@" + name
        self.liveness = Liveness(program) if program.alive is not None else None
        info = current()
        self.log: RotatingLog | None = None
        if info is not None:
            self.log = RotatingLog(log_path(info.data_dir, path), program.log_max_bytes,
                                   program.log_keep)

    def child_fds(self) -> tuple[int, int]:
        return self.out_w, self.err_w

    def execed(self, pid: int) -> bool:
        """Whether ``pid`` runs the program itself: for a program spawned through setpriv
        (``shim``), once its comm (the name of what it last exec'd, readable while it is a
        zombie too) is neither setpriv's nor the supervisor's (the spawn returns a moment
        before the kernel renames the new process). A forked program's channel EOF is its
        exec."""
        if self.shim is None or self.past_shim:
            return True
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                self.past_shim = f.read().rstrip(b"\n") not in self.shim
        except OSError:  # reaped: it is past everything
            return False
        return self.past_shim

    def exec_retry(self) -> None:
        """Look for the program's exec again soon (the loop's timer: 1 ms, growing)."""
        self.retry_at = time.monotonic() + self.retry_delay
        self.retry_delay = min(self.retry_delay * 1.5, 0.005)

    def forked(self) -> None:
        """In the supervisor, once the child has its ends of the pipes."""
        os.close(self.out_w)
        os.close(self.err_w)

    def needs_probe(self) -> bool:
        return isinstance(self.program.ready, (PortCheck, HttpCheck, FileCheck))

    def checks_port_here(self) -> bool:
        """A port check on a numeric address runs in the supervisor's loop (a non-blocking
        connect, retried on a timer); a host name would need a blocking lookup: a probe."""
        check = self.program.ready
        if not isinstance(check, PortCheck):
            return False
        try:
            info = socket.getaddrinfo(check.host, check.port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_NUMERICHOST)[0]
        except (socket.gaierror, IndexError):
            return False
        self.port_addr = (info[0], info[4])
        return True

    def connect(self) -> bool | socket.socket:
        """One connect attempt: True if accepted at once, else the socket to watch for its
        outcome, or False (refused: ``retry_at`` says when to try again)."""
        assert self.port_addr is not None
        family, addr = self.port_addr
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err == 0:
            sock.close()
            return True
        if err == errno.EINPROGRESS:
            self.conn = sock
            return sock
        sock.close()
        self._retry()
        return False

    def connected(self) -> bool:
        """The connect in progress finished (its socket is writable): True if accepted."""
        assert self.conn is not None
        err = self.conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.conn.close()
        self.conn = None
        if err:
            self._retry()
        return not err

    def _retry(self) -> None:
        self.retry_at = time.monotonic() + self.retry_delay
        self.retry_delay = min(self.retry_delay * 1.5, 0.02)

    def start_probe(self) -> int:
        """Fork the probe process; its pidfd (the supervisor watches it)."""
        check, cwd = self.program.ready, self.program.cwd
        assert check is not None
        self.probe_pid = fork_child((), lambda: probe_main(check, cwd), "prism:probe")
        self.probe_fd = os.pidfd_open(self.probe_pid)
        return self.probe_fd

    def probe_passed(self) -> bool:
        """The probe process exited: reap it; True if its check passed."""
        _, status = os.waitpid(self.probe_pid, 0)
        self.probe_pid = 0
        os.close(self.probe_fd)
        self.probe_fd = -1
        return os.waitstatus_to_exitcode(status) == 0

    def read(self, fd: int) -> tuple[bool, bool]:
        """Read what the pipe ``fd`` holds into the log. Returns (a ready line was printed
        (only while starting with a line check), EOF: the caller stops watching ``fd``)."""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return False, False
        except OSError as exc:
            log.error("child %s: reading its output failed: %s", "/".join(self.path), exc)
            data = b""
        if not data:
            self.open_fds.discard(fd)  # the caller stops watching it and closes it
            return False, True
        if self.log is not None:
            self.log.write(data)
        if fd == self.out_r and self.pattern is not None:
            return self._scan(data), False
        return False, False

    def _scan(self, data: bytes) -> bool:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()[-_LINE_MAX:]
        if any(self.pattern.search(line) for line in lines):  # type: ignore[union-attr]
            self.pattern = None
            return True
        return False

    def notified_ready(self) -> bool:
        """Read the sd_notify datagrams waiting; True if one says READY=1."""
        assert self.notify is not None
        ready = False
        while True:
            try:
                msg = self.notify.recv(4096)
            except (BlockingIOError, InterruptedError):
                return ready
            except OSError:
                return ready
            ready = ready or b"READY=1" in msg.split(b"\n")

    def end_checks(self) -> list[int]:
        """The start is over (ready or failed): stop checking. Returns the fds the caller
        must stop watching (notify socket, probe pidfd) before they are closed here."""
        self.pattern = None
        self.retry_at = 0.0
        gone: list[int] = []
        if self.conn is not None:
            gone.append(self.conn.fileno())
        if self.notify is not None:
            gone.append(self.notify.fileno())
        if self.probe_pid:
            gone.append(self.probe_fd)
        return gone

    def close_checks(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        if self.probe_pid:
            send_signal(self.probe_fd, signal.SIGKILL)
            os.waitpid(self.probe_pid, 0)
            os.close(self.probe_fd)
            self.probe_pid, self.probe_fd = 0, -1

    def timeout_reason(self) -> ExitReason:
        return Crashed(type="prismatic.ReadinessTimeout",
                       message=f"readiness check {describe_check(self.program.ready)} did not "
                               f"pass within {self.program.start_timeout:g} s")

    def exit_reason(self, reason: ExitReason) -> ExitReason:
        """A program that ends as it was told to (by its stop signal, or exiting 0 or
        128+signal after it) stopped with ``shutdown``, as a worker does on SIGTERM;
        SIGKILL at the end of the shutdown time stays ``killed`` (OTP: shutdown_error)."""
        if not self.stopping:
            return reason
        sig = int(self.program.stop_signal)
        if (isinstance(reason, Killed) and reason.signal == sig and sig != signal.SIGKILL) \
                or isinstance(reason, Normal) \
                or (isinstance(reason, ExitCode) and reason.code == 128 + sig):
            return Shutdown()
        return reason

    def close(self) -> None:
        """The program is dead: what its pipes still hold goes to the log, then all goes."""
        for fd in sorted(self.open_fds):
            for _ in range(64):  # bounded: a grandchild still writing cannot hold us here
                try:
                    data = os.read(fd, READ_CHUNK)
                except OSError:
                    break
                if not data:
                    break
                if self.log is not None:
                    self.log.write(data)
            os.close(fd)
        self.open_fds.clear()
        self.close_checks()
        if self.log is not None:
            self.log.close()
