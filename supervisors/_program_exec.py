"""How a program child starts: ``posix_spawn``, or fork and the exec on the child's side.

Never from a spare (the child's stdout and stderr are pipes the
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
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal

from .._exit import reason_from_exception
from .._program import Program
from ..transports._channel import Channel
from ..transports._frames import ExitingFrame

__all__ = ["exec_program", "spawn_program", "own_comm", "shim_path"]

log = logging.getLogger("prismatic.supervisors._program_run")  # lines name the program run

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

