"""The one error tree of Prismatic.

Every error the framework raises on purpose derives from :class:`PrismaticError`. The tree is
kept shallow (as msgspec's is): callers catch the base class, or one of the few direct
subclasses below when they must tell cases apart. Messages name the offending field or path
and the value, so a one-line report is enough to fix the input.
"""

from __future__ import annotations

from ._address import Global, Pid
from ._exit import ExitReason, NoProc, describe

__all__ = [
    "PrismaticError",
    "ChildSpecError",
    "SupervisorError",
    "StartError",
    "NodeError",
    "ControlError",
    "EventLogError",
    "EventLogFormatError",
    "EventLogFullError",
]


class PrismaticError(Exception):
    """Base class of every error raised by Prismatic."""


class ChildSpecError(PrismaticError, ValueError):
    """A child spec or supervisor flag is invalid; raised at definition time.

    ``field`` names the offending field, ``value`` holds what was given.
    """

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"invalid {field}={value!r}: {problem}")


class SupervisorError(PrismaticError):
    """An operation on a running supervisor was refused, with OTP's error term.

    ``reason`` is one of OTP's atoms as a string (``not_found``, ``running``,
    ``restarting``, ``already_present``, ``simple_one_for_one``...), ``detail`` says more.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class StartError(SupervisorError):
    """A child failed to start; ``exit_reason`` is why (an :data:`ExitReason`)."""

    def __init__(self, child_id: str, exit_reason: object) -> None:
        self.child_id = child_id
        self.exit_reason = exit_reason
        # One line: the reason's summary; its traceback stays in exit_reason and the logs.
        summary = describe(exit_reason) if isinstance(exit_reason, ExitReason) \
            else str(exit_reason)
        super().__init__("failed_to_start_child", f"child {child_id!r}: {summary}")


class NodeError(PrismaticError):
    """A node could not start or be reached (bad --app, data directory in use...)."""


class ControlError(PrismaticError):
    """A control request to a node failed: timeout, refused, or malformed."""


class EventLogError(PrismaticError):
    """The event log refused an operation."""


class EventLogFormatError(EventLogError):
    """A path is not a Prismatic event log, is corrupted, or has a newer format version."""


class EventLogFullError(EventLogError):
    """The disk under the event log is full: the append was not acknowledged."""


class TopicError(PrismaticError, ValueError):
    """A topic or topic pattern is malformed; ``field`` and ``value`` name what was given."""

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"invalid {field} {value!r}: {problem}")


class CallError(PrismaticError):
    """A message could not be delivered or a call got no reply; ``dest`` is the target."""

    def __init__(self, dest: Pid | str | Global | tuple[str, str], problem: str) -> None:
        self.dest = dest
        super().__init__(f"{dest}: {problem}")


class CallTimeout(CallError):
    """No reply within the timeout. A reply that arrives later is dropped (as OTP 24+)."""


class ProcessDown(CallError):
    """The callee exited before replying; ``reason`` is its :data:`ExitReason`."""

    def __init__(self, dest: Pid | str | Global | tuple[str, str], reason: ExitReason,
                 problem: str | None = None) -> None:
        self.reason = reason
        super().__init__(dest, problem or f"exited before replying: {reason}")


class NoProcError(ProcessDown):
    """No process by that pid or registered name (OTP's ``noproc``)."""

    def __init__(self, dest: Pid | str | Global | tuple[str, str]) -> None:
        super().__init__(dest, NoProc(), "no such process")


class MailboxFull(CallError):
    """The destination's mailbox stayed full for the whole timeout (backpressure)."""


class RegistryError(PrismaticError):
    """A registry operation was refused; ``reason`` is OTP's term (``already_registered``,
    ``not_registered``...), ``name`` the name involved."""

    def __init__(self, name: str, reason: str, detail: str = "") -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"{name!r}: {reason}" + (f" ({detail})" if detail else ""))


__all__ += ["TopicError", "PubSubError", "CallError", "CallTimeout", "ProcessDown", "NoProcError",
            "MailboxFull", "RegistryError"]


class PubSubError(PrismaticError):
    """Publishing or subscribing failed: a payload msgpack cannot encode, no node to talk
    to (``Worker.publish`` outside a node's tree), or the node did not answer a subscription.
    """


class ChaosError(PrismaticError):
    """The chaos runner could not set up or reach the node it was to break (a failed
    invariant is a finding in the report, not this error)."""


__all__ += ["ChaosError"]
