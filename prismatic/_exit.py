"""Exit reasons: why a process stopped, as data.

A supervisor decides on these values, never on raw exit codes. A child reports its own reason
over its channel just before it exits; when it cannot (SIGKILL, a hard crash) the supervisor
derives the reason from the wait status. The variants mirror OTP's reasons:

========================  ==========================================  =================
variant                   OTP equivalent                              abnormal?
========================  ==========================================  =================
``Normal()``              ``normal``                                  no
``Shutdown(detail)``      ``shutdown`` / ``{shutdown, Term}``         no
``Crashed(type, ...)``    ``{Exception, Stacktrace}``                 yes
``Killed(signal)``        ``killed`` (SIGKILL) or another signal      yes
``ExitCode(code)``        a process that exited with a non-zero code  yes
``NoProc()``              ``noproc``                                  yes
``NoConnection()``        ``noconnection`` (its node is unreachable)  yes
========================  ==========================================  =================

``NoConnection()`` is what a monitor or link of a process on another node reports when that
node is declared dead, leaves, or is partitioned away: the process may still be running,
but this side can no longer know (OTP's ``noconnection``).
"""

from __future__ import annotations

import os
import signal
import traceback as _traceback

import msgspec

__all__ = [
    "ExitReason",
    "Normal",
    "Shutdown",
    "Crashed",
    "Killed",
    "ExitCode",
    "NoProc",
    "NoConnection",
    "is_abnormal",
    "reason_from_exception",
    "reason_from_wait_status",
    "describe",
]


class Normal(msgspec.Struct, frozen=True, tag_field="kind", tag="normal"):
    """The process stopped on purpose and is done."""


class Shutdown(msgspec.Struct, frozen=True, tag_field="kind", tag="shutdown"):
    """The process was told to stop, or a supervisor gave up (``detail`` says why)."""

    detail: str = ""


class Crashed(msgspec.Struct, frozen=True, tag_field="kind", tag="crashed"):
    """An exception escaped a callback; the exception's type, message and traceback."""

    type: str
    message: str
    traceback: str = ""


class Killed(msgspec.Struct, frozen=True, tag_field="kind", tag="killed"):
    """The process died from a signal it did not handle (9 is SIGKILL)."""

    signal: int


class ExitCode(msgspec.Struct, frozen=True, tag_field="kind", tag="exit_code"):
    """The process exited with a code and said nothing (e.g. ``os._exit(3)`` in user code)."""

    code: int


class NoProc(msgspec.Struct, frozen=True, tag_field="kind", tag="noproc"):
    """There was no such process."""


class NoConnection(msgspec.Struct, frozen=True, tag_field="kind", tag="noconnection"):
    """The process's node became unreachable (declared dead, left, or partitioned away)."""


ExitReason = Normal | Shutdown | Crashed | Killed | ExitCode | NoProc | NoConnection


def is_abnormal(reason: ExitReason) -> bool:
    """OTP's rule: everything but ``normal`` and ``shutdown``-class reasons is abnormal."""
    return not isinstance(reason, (Normal, Shutdown))


def reason_from_exception(exc: BaseException) -> ExitReason:
    """The exit reason for an exception that escaped a callback."""
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None or code == 0:
            return Normal()
        return ExitCode(code if isinstance(code, int) else 1)
    tb = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Crashed(type=f"{type(exc).__module__}.{type(exc).__qualname__}", message=str(exc),
                   traceback=tb)


def reason_from_wait_status(status: int) -> ExitReason:
    """The exit reason of a process that reported none, from its ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        return Killed(os.WTERMSIG(status))
    code = os.waitstatus_to_exitcode(status)
    return Normal() if code == 0 else ExitCode(code)


def describe(reason: ExitReason) -> str:
    """One line for humans: ``normal``, ``shutdown``, ``killed by SIGKILL``, ``ValueError: x``."""
    match reason:
        case Normal():
            return "normal"
        case Shutdown(detail=d):
            return f"shutdown ({d})" if d else "shutdown"
        case Crashed(type=t, message=m):
            return f"{t.rsplit('.', 1)[-1]}: {m}" if m else t.rsplit(".", 1)[-1]
        case Killed(signal=s):
            try:
                name = signal.Signals(s).name
            except ValueError:
                name = f"signal {s}"
            return f"killed by {name}"
        case ExitCode(code=c):
            return f"exit code {c}"
        case NoProc():
            return "noproc"
        case NoConnection():
            return "noconnection"
    raise TypeError(f"not an exit reason: {reason!r}")
