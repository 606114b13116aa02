"""Forking supervised OS processes: the one place that calls ``os.fork``.

Every process Prismatic starts comes from :func:`fork_child`, which makes these promises:

* the child dies with its parent: ``PR_SET_PDEATHSIG(SIGKILL)`` is set first thing, and the
  child exits at once if its parent already died in between (so SIGKILL on any supervisor, or
  on the node, takes its whole subtree down, level by level, with no orphans);
* the child's own child processes die with it. It leads a process group of its own (a
  zygote's sibling once it becomes a child, see ``supervisors/_child.py``), and whatever it
  forks or spawns stays in that group unless it leaves it; its supervisor kills the group
  when the child exits (:func:`kill_group`). PDEATHSIG cannot cover this (the kernel clears
  it in a fork, and user code forks). For what leaves the group (``setsid``, a daemon's
  double fork) every process of the tree is a child subreaper (:func:`become_subreaper`):
  a descendant orphaned while the child lives is reparented to the child, and once the
  child is gone, to its supervisor, which kills every process it adopts (a supervisor's
  own children are only the tree's children, its zygote and the zygote's spares);
* the child keeps only the file descriptors it is given: every inherited descriptor (the
  parent's sockets, ZeroMQ's internal fds, LMDB's files) is closed, so no ZeroMQ context or
  LMDB environment is carried across a fork in any usable form; the child never touches the
  parent's Python objects for them and always leaves through ``os._exit``, so no destructor
  or atexit hook of the parent's runs in the child;
* SIGINT is ignored in children (Ctrl-C reaches the whole foreground process group; only the
  node acts on it, and shuts the tree down in order);
* the parent calls ``gc.freeze()`` before forking, so the child's garbage collector never
  writes to the pages it shares with the parent (copy-on-write stays shared).

A fork copies the page-table entry of every page the parent maps, and the child's exit
unmaps each one again: both grow with the parent's mapped memory, and are several times
slower in a process that has been idle (its page tables and page structs are cold), which
is what a dormant supervisor's first restart pays. Pages that C's ``malloc`` holds free are
mapped all the same, so the node and a supervisor that forks its children itself give them
back first (:func:`trim_heap`): about 1 MiB less in every process of the tree.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from ._clone import clone_sibling

__all__ = ["fork_child", "fork_sibling", "set_process_name", "process_name", "child_pids",
           "uss_bytes", "rss_bytes", "send_signal", "kill_group", "become_subreaper",
           "lead_own_group", "trim_heap", "raise_fd_limit"]

_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
log = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)
# The C function and plain ints: signal.signal's enum conversions cost a fresh fork ~25
# copy-on-write faults (three calls), in every child a supervisor forks itself.
_set_handler: Callable[[int, Any], Any] = getattr(sys.modules.get("_signal"), "signal",
                                                 signal.signal)
_CHILD_SIGNALS = ((int(signal.SIGINT), int(signal.SIG_IGN)),
                  (int(signal.SIGTERM), int(signal.SIG_DFL)),
                  (int(signal.SIGCHLD), int(signal.SIG_DFL)))


def trim_heap(generation: int = 2) -> bool:
    """Collect Python's garbage (the generations up to ``generation``), then give the pages
    that ``malloc`` holds free back to the kernel (glibc's ``malloc_trim``; False where the
    C library has none): fewer pages for each later fork to copy into its child's page
    tables, and for that child's exit to unmap (see the module doc). Tens of milliseconds
    at most: for idle moments only. A full collection walks every object the process has
    (all its modules' functions and classes: ~8 ms in a node that just imported its tree's
    modules); what a caller just made and dropped is in the young generations."""
    gc.collect(generation)
    trim = getattr(_libc, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def set_process_name(name: str) -> None:
    """Name the process for ``ps``/``top`` (kernel limit: 15 bytes: the kernel truncates).
    Written to ``/proc/self/comm`` (the same as ``PR_SET_NAME`` from the main thread): a
    ctypes call costs a fresh fork ~6 copy-on-write faults more, and every child is named
    as it starts (twice, a spare)."""
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:  # no /proc: the system call itself
        _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
        return
    try:
        os.write(fd, name.encode())
    except OSError:
        _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    finally:
        os.close(fd)


def send_signal(pidfd: int, sig: int) -> bool:
    """Signal through a pidfd, which cannot hit a recycled pid; False if already gone."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group ``pgid`` (a child's, led by it). Safe from pid reuse
    while the leader is our unreaped child or any member lives: a group id stays allocated as
    long as the group has a member, zombie or not. Quiet if the group is already empty."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def raise_fd_limit(who: str) -> None:
    """Raise this process's soft ``RLIMIT_NOFILE`` to the hard limit, as servers do (a warning
    naming ``who`` if it cannot): for a process that holds a descriptor per process it
    watches or talks to (the node, the lender)."""
    import resource  # noqa: PLC0415 - a shared library the tree's image does without

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("%s: cannot raise its file descriptor limit from %d to %d: %s", who,
                        soft, hard, exc)


def become_subreaper() -> None:
    """Make this process a child subreaper: orphans of its descendants are reparented to it
    (not to init), so it can kill and reap them. Raises OSError if the kernel refuses."""
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_CHILD_SUBREAPER: {os.strerror(err)}")


def lead_own_group() -> None:
    """Put this process in a new process group of its own (its pid is the group id)."""
    os.setpgid(0, 0)


def fork_child(keep_fds: tuple[int, ...], main: Callable[[], int], name: str) -> int:
    """Fork a child that runs ``main()`` and exits with its return code; return its pid.

    ``main`` runs in the child only; it must not return into the caller's frames, and it
    doesn't: whatever happens, the child ends in ``os._exit``.
    """
    parent = os.getpid()
    gc.freeze()
    pid = os.fork()
    if pid:
        return pid
    _child_body(parent, keep_fds, main, name)


def fork_sibling(keep_fds: tuple[int, ...], main: Callable[..., int], args: tuple[Any, ...],
                 name: str) -> int:
    """As :func:`fork_child`, but the new process is a child of the caller's *parent* (a
    supervisor's zygote makes the supervisor's children this way; see :mod:`._clone`), with
    the same promises: it dies with that parent and keeps only ``keep_fds``; it runs
    ``main(*args)``. The caller must itself come from :func:`fork_child`, whose signal set-up
    the new process inherits."""
    gc.freeze()
    return clone_sibling(_sibling_body, keep_fds, main, args, name)


def _sibling_body(parent: int, keep_fds: tuple[int, ...], main: Callable[..., int],
                  args: tuple[Any, ...], name: str) -> NoReturn:
    # The caller (a zygote) came from fork_child: its signal set-up is already the children's.
    _child_body(parent, keep_fds, lambda: main(*args), name, set_signals=False)


def _child_body(parent: int, keep_fds: tuple[int, ...], main: Callable[[], int],
                name: str, set_signals: bool = True) -> NoReturn:
    code = 70  # EX_SOFTWARE: main() raised past every handler
    try:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(0)  # the parent died before PDEATHSIG was armed
        if set_signals:  # a sibling (a spare) stays in its zygote's group until it becomes
            lead_own_group()  # a child: the supervisor tells spares in the making by it
        become_subreaper()  # not inherited: each process of the tree sets it
        _close_all_but(keep_fds)
        if set_signals:  # a clone does without: its zygote's are the children's already
            for sig, handler in _CHILD_SIGNALS:
                _set_handler(sig, handler)
            signal.set_wakeup_fd(-1)
        set_process_name(name)
        code = main()
    except BaseException:  # noqa: BLE001 - the last line of defence before _exit
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _close_all_but(keep: tuple[int, ...]) -> None:
    """Close every descriptor from 3 up except ``keep`` (a plain loop: in a fresh fork, each
    comprehension and list it would make is a copy-on-write fault or two)."""
    lo = 3
    for fd in sorted(keep):
        if fd >= lo:
            os.closerange(lo, fd)
            lo = fd + 1
    os.closerange(lo, 1 << 20)


def process_name(pid: int) -> str:
    """The kernel's name for ``pid`` (what :func:`set_process_name` set); "" if it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def child_pids(pid: int) -> list[int]:
    """The children of ``pid``, from /proc; OSError if ``pid`` is gone."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def uss_bytes(pid: int) -> int:
    """Unique set size: memory private to ``pid`` (freed if it exited), from smaps_rollup."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def rss_bytes(pid: int) -> int:
    """``pid``'s resident set size (VmRSS), in bytes (0 if it has none: a zombie); OSError
    if it is gone."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
