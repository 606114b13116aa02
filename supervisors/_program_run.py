"""Running a program child: the exec on the child's side, its output, readiness and stop on
the supervisor's.

How a program starts. Never from a spare (the child's stdout and stderr are pipes the
supervisor makes for it, which a spare made earlier could not have); one of two ways:

* ``posix_spawn`` (:func:`spawn_program`), the usual path: glibc's vfork-style spawn copies
  nothing of the supervisor and runs the child at once, with stdin from /dev/null, stdout
  and stderr to the pipes, its own process group, an empty signal mask and default
  dispositions (Python ignores SIGPIPE and SIGXFSZ, the tree ignores SIGINT). What spawn
  cannot do, PDEATHSIG, is done by ``setpriv --pdeathsig KILL`` (util-linux), which the
  child runs first and which execs the program in the same process; cwd and umask are
  taken on by the (single-threaded) supervisor for the duration of the call. A fork
  costs the supervisor a copy of its page tables and the child a copy-on-write fault for
  every page it writes before exec: 15-20 ms on a loaded 2-CPU VM against 0.2 ms here.
* fork, then :func:`exec_program` in the child, for a user switch, where no ``setpriv``
  with ``--pdeathsig`` exists, or when ``argv[0]`` is not found (the exec then reports its
  own error): the child is set up as every child of the tree is (``_process.fork_child``:
  PDEATHSIG, its own process group, only the descriptors it is given), then the same
  stdio and signals, no longer a child subreaper, umask, working directory, user
  (PDEATHSIG is armed again after the switch: a credential change clears it), then
  ``execvpe``.

Either way PDEATHSIG survives exec (not for a set-user-ID binary), so the program dies with
its supervisor, and it is not a child subreaper: its orphans go to its supervisor, which
kills them, as a worker's; whatever it forks stays in its group, killed whole when it
exits or is stopped.

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

import ctypes
import errno
import logging
import os
import re
import signal
import socket
import time
from typing import Any

from .._exit import (
    Crashed, ExitCode, ExitReason, Killed, Normal, Shutdown, reason_from_exception,
)
from .._nodeinfo import current
from .._process import fork_child, send_signal
from .._program import (
    FileCheck, HttpCheck, LineCheck, NotifyCheck, PortCheck, Program, ReadyCheck,
    describe_check,
)
from ..transports._channel import Channel
from ..transports._frames import ExitingFrame
from ._liveness import Liveness
from ._logfile import RotatingLog, log_path

__all__ = ["exec_program", "ProgramRun", "READ_CHUNK"]

log = logging.getLogger(__name__)

READ_CHUNK = 65536
_LINE_MAX = 65536  # a stdout "line" longer than this is matched in pieces
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


# ---- the child's side -----------------------------------------------------------------------

def exec_program(program: Program, channel: Channel, out_fd: int, err_fd: int,
                 notify: str | None) -> int:
    """Runs in the forked child: set up, then exec ``program``. Returns only if exec failed
    (after telling the supervisor why), with the shell's code for it."""
    try:
        parent = os.getppid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in {null, out_fd, err_fd} - {0, 1, 2}:
            os.close(fd)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE,
                    signal.SIGXFSZ, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                    signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        _libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        if program.umask is not None:
            os.umask(program.umask)
        env = dict(os.environ)
        env.update(program.env)
        if notify is not None:
            env["NOTIFY_SOCKET"] = notify
        if program.user is not None:
            _switch_user(program.user, env)
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # cleared by setuid
            if os.getppid() != parent:
                return 0  # the supervisor died in between
        if program.cwd is not None:
            os.chdir(program.cwd)
        os.execvpe(program.argv[0], program.argv, env)
    except (OSError, KeyError, ValueError) as exc:
        channel.try_send(ExitingFrame(reason_from_exception(exc)))
        return 127
    return 127  # not reached: execvpe returns only by raising


def _switch_user(user: str | int, env: dict[str, str]) -> None:
    import pwd  # noqa: PLC0415 - only a program with a user needs it

    entry = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    env.update(HOME=entry.pw_dir, USER=entry.pw_name, LOGNAME=entry.pw_name)


# ---- the fast path: posix_spawn ------------------------------------------------------------

_STOP_DEFAULTS = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ,
                  signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_setpriv: list[str | None] = []  # found once per process: [path or None]


def _pdeathsig_shim() -> str | None:
    if not _setpriv:
        import shutil  # noqa: PLC0415 - once per supervisor that runs a program

        path = shutil.which("setpriv")
        if path is not None:  # util-linux >= 2.33 knows --pdeathsig
            try:
                import subprocess  # noqa: PLC0415

                ok = subprocess.run([path, "--pdeathsig", "KILL", "--", "true"],
                                    capture_output=True, timeout=5).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            path = path if ok else None
        if path is None:
            log.info("no setpriv with --pdeathsig here: programs are started by fork+exec "
                     "(slower than posix_spawn)")
        _setpriv.append(path)
    return _setpriv[0]


def own_comm() -> bytes:
    """This process's comm (what a process it spawns is called until its exec)."""
    with open("/proc/self/comm", "rb") as f:
        return f.read().rstrip(b"\n")


def shim_path() -> str:
    """The setpriv that :func:`spawn_program` runs programs through (once it has)."""
    return (_setpriv[0] if _setpriv else None) or ""


def spawn_program(program: Program, out_fd: int, err_fd: int, notify: str | None) -> int | None:
    """Start ``program`` with ``posix_spawn`` (vfork: no copy of the supervisor, the child
    runs at once) through ``setpriv --pdeathsig KILL``, which arms PDEATHSIG and execs the
    program in the same process. Returns its pid once exec succeeded, or None where this
    path does not apply (a user switch, no setpriv, a program not found): the caller then
    forks, and the fork path reports the exec error as the start's reason.

    cwd and umask are process-wide, so the supervisor (single-threaded) takes them on for
    the duration of the call."""
    shim = _pdeathsig_shim()
    if shim is None or program.user is not None:
        return None
    import shutil  # noqa: PLC0415

    env = dict(os.environ)
    env.update(program.env)
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify
    exe = program.argv[0]
    if "/" in exe and program.cwd is not None and not os.path.isabs(exe):
        exe = os.path.join(program.cwd, exe)
    found = shutil.which(exe, path=env.get("PATH", os.defpath))
    if found is None or (program.cwd is not None and not os.path.isdir(program.cwd)):
        return None  # the fork path fails it with the exec's own error
    try:
        here = os.getcwd() if program.cwd is not None else None
    except OSError:
        return None  # our own directory is gone: the fork path needs none
    mask = os.umask(program.umask) if program.umask is not None else None
    try:
        if program.cwd is not None:
            os.chdir(program.cwd)
        # argv as given (setpriv looks it up in PATH, from the program's cwd): ps shows it
        return os.posix_spawn(shim, [shim, "--pdeathsig", "KILL", "--", *program.argv], env,
                              file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                            (os.POSIX_SPAWN_DUP2, out_fd, 1),
                                            (os.POSIX_SPAWN_DUP2, err_fd, 2)],
                              setpgroup=0, setsigmask=(), setsigdef=_STOP_DEFAULTS)
    except OSError as exc:
        log.warning("posix_spawn of %s failed (%s): forking instead", program.argv[0], exc)
        return None
    finally:
        if mask is not None:
            os.umask(mask)
        if here is not None:
            os.chdir(here)


# ---- the probe process ----------------------------------------------------------------------

def _passes(check: ReadyCheck, cwd: str | None) -> bool:
    if isinstance(check, PortCheck):
        try:
            socket.create_connection((check.host, check.port), timeout=1.0).close()
            return True
        except OSError:
            return False
    if isinstance(check, HttpCheck):
        import urllib.error  # noqa: PLC0415 - only a probe process needs it
        import urllib.request  # noqa: PLC0415

        try:
            with urllib.request.urlopen(check.url, timeout=2.0) as answer:
                return 200 <= int(answer.status) < 300
        except (OSError, urllib.error.URLError, ValueError):
            return False
    if isinstance(check, FileCheck):
        return os.path.exists(os.path.join(cwd or ".", check.path))
    raise TypeError(f"not a probe check: {check!r}")


def probe_main(check: ReadyCheck, cwd: str | None) -> int:
    """Runs in a probe process: try ``check`` until it passes, then exit 0."""
    delay = 0.002
    while not _passes(check, cwd):
        time.sleep(delay)
        delay = min(delay * 1.5, 0.02)  # a refused connect or a stat costs microseconds
    return 0


def probe_once(check: ReadyCheck, cwd: str | None) -> int:
    """Runs in a liveness probe process: one try; exit 0 if it passes."""
    return 0 if _passes(check, cwd) else 1


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
