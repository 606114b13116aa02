"""Forking a *sibling*: a child of the caller's parent, for a supervisor's zygote.

A supervisor that forks its own children pays twice for each fork: the fork itself grows with
the supervisor (every pidfd and channel it holds is copied, then closed again in the child),
and afterwards every page the supervisor writes is a copy-on-write fault, right on the restart
path. So a supervisor forks once, a small *zygote*, and the zygote makes the children with
``clone(CLONE_PARENT)``: each new process is the supervisor's own child (it is reaped with
``waitpid``, its ``PR_SET_PDEATHSIG`` fires when the supervisor dies), but the supervisor
never forks again and its pages stay private to it.

``os.fork`` cannot pass clone flags, so the clone is a raw system call; what ``os.fork`` and
glibc's ``fork`` do around it is done here by hand, in the same order:

* CPython's own fork duties: ``PyOS_BeforeFork`` / ``PyOS_AfterFork_Parent`` /
  ``PyOS_AfterFork_Child`` (the GIL, the import lock, ``os.register_at_fork`` hooks, the
  threading module's reset). The system call is made through ``ctypes.PyDLL`` so the GIL is
  held across it, exactly as ``os.fork`` holds it.
* glibc's: the child's cached thread id (``raise``/``abort`` use it) is written by the kernel
  through ``CLONE_CHILD_SETTID`` at the address glibc registered with ``set_tid_address``
  (read back with ``PR_GET_TID_ADDRESS``), and the robust-futex list, which the kernel resets
  for a new process, is registered again at the address ``get_robust_list`` reports. glibc's
  other after-fork resets concern locks, which are all free in a single-threaded caller.

Invariant: only a single-threaded process calls :func:`clone_sibling` (a zygote is one).
Where the kernel or libc lacks a piece (no ``PR_GET_TID_ADDRESS``, an unknown architecture),
or ``PRISMATIC_ZYGOTE=0`` is set in the node's environment, :func:`sibling_support` says why
and supervisors fork their children themselves.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
from collections.abc import Callable
from typing import Any

__all__ = ["clone_sibling", "sibling_support"]

_PR_GET_TID_ADDRESS = 40
_CLONE_PARENT = 0x00008000
_CLONE_CHILD_CLEARTID = 0x00200000
_CLONE_CHILD_SETTID = 0x01000000

# (clone, set_robust_list, get_robust_list) numbers, and whether clone takes (…, tls, ctid)
# instead of (…, ctid, tls): the kernel's CLONE_BACKWARDS argument order on arm64.
_SYSCALLS = {
    "x86_64": (56, 273, 274, False),
    "aarch64": (220, 99, 100, True),
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc_gil = ctypes.PyDLL(None, use_errno=True)  # holds the GIL across the call, as os.fork
_libc_gil.syscall.restype = ctypes.c_long
_pyapi = ctypes.pythonapi


class _Plan:
    """What a clone needs, read once per process (addresses are inherited by forks)."""

    def __init__(self) -> None:
        nums = _SYSCALLS.get(platform.machine())
        if nums is None:
            raise OSError(f"no clone plan for architecture {platform.machine()!r}")
        self.sys_clone, self.sys_set_robust, sys_get_robust, self.backwards = nums
        tid_addr = ctypes.c_void_p()
        if _libc.prctl(_PR_GET_TID_ADDRESS, ctypes.byref(tid_addr), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_GET_TID_ADDRESS): {os.strerror(err)}")
        if not tid_addr.value or ctypes.c_int.from_address(tid_addr.value).value != os.getpid():
            raise OSError("glibc's cached thread id is not at the registered tid address")
        self.tid_addr = tid_addr.value
        head, size = ctypes.c_void_p(), ctypes.c_size_t()
        if _libc.syscall(sys_get_robust, 0, ctypes.byref(head), ctypes.byref(size)) != 0:
            raise OSError(ctypes.get_errno(), "get_robust_list failed")
        self.robust_head, self.robust_size = head.value, size.value
        # The call's arguments, made once: every object a zygote touches between two clones
        # is a copy-on-write fault after each of them.
        flags = _CLONE_PARENT | _CLONE_CHILD_SETTID | _CLONE_CHILD_CLEARTID | signal.SIGCHLD
        ctid = ctypes.c_void_p(self.tid_addr)
        self.args = ((ctypes.c_ulong(flags), None, None, None, ctid) if self.backwards
                     else (ctypes.c_ulong(flags), None, None, ctid, None))
        self.robust_args = (ctypes.c_void_p(self.robust_head), ctypes.c_size_t(self.robust_size))
        # Looked up here, not in each new process: a ctypes symbol's first lookup makes its
        # function object (a dlsym and a dozen copy-on-write faults in every clone).
        self.before_fork = _pyapi.PyOS_BeforeFork
        self.after_fork_parent = _pyapi.PyOS_AfterFork_Parent
        self.after_fork_child = _pyapi.PyOS_AfterFork_Child
        self.set_robust_list = _libc.syscall


_plan: _Plan | None = None
_unsupported: str | None = None


def sibling_support() -> str | None:
    """None if :func:`clone_sibling` works here, else why not (one line, for the log)."""
    global _plan, _unsupported
    if _plan is None and _unsupported is None:
        if os.environ.get("PRISMATIC_ZYGOTE", "1") == "0":
            _unsupported = "turned off by PRISMATIC_ZYGOTE=0"
            return _unsupported
        try:
            _plan = _Plan()
        except OSError as exc:
            _unsupported = str(exc)
    return _unsupported


def clone_sibling(child: Callable[..., None], *args: Any) -> int:
    """Clone the calling (single-threaded) process as a child of its parent.

    Returns the new pid in the caller; raises OSError if the clone failed. In the new process
    ``child(parent_pid, *args)`` runs and must end the process itself (``os._exit``); it is
    called with the pid it must treat as its parent (for its PDEATHSIG check). Arguments, not
    a closure: whatever the caller allocates or touches per clone, it pays for again as
    copy-on-write faults after the next one.
    """
    if sibling_support() is not None:
        raise OSError(f"clone_sibling unsupported: {_unsupported}")
    plan = _plan
    assert plan is not None
    parent = os.getppid()
    plan.before_fork()
    pid = _libc_gil.syscall(plan.sys_clone, *plan.args)
    if pid == 0:
        plan.after_fork_child()
        plan.set_robust_list(plan.sys_set_robust, *plan.robust_args)
        try:
            child(parent, *args)
        finally:
            os._exit(70)  # child() must not return; if it does, this is a bug (EX_SOFTWARE)
    plan.after_fork_parent()
    if pid < 0:
        err = ctypes.get_errno()  # saved by ctypes right after the call (use_errno)
        raise OSError(err, f"clone(CLONE_PARENT): {os.strerror(err)}")
    return pid
