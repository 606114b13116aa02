"""Child specs and supervisor flags: the static description of a supervision tree.

As in OTP's ``supervisor.erl``, each field has one small validator, run when the Struct is
constructed, so an invalid spec fails at definition time with :class:`ChildSpecError` naming
the field and the value. Strings are accepted for enum fields (``restart="transient"``) and
normalized to the enum. Defaults are OTP's: ``restart=permanent``, ``shutdown`` 5 s for a
worker and ``infinity`` for a supervisor, ``intensity=1`` restart in ``period=5`` seconds,
``auto_shutdown=never``.

``start`` is what the child process runs: a :class:`Worker` subclass, a
:class:`SupervisorSpec`, a :class:`~prismatic.Program` (an executable, see ``_program.py``),
a callable returning either (called with ``args`` inside the child),
or a ``"module:attr"`` string naming one of those (resolved inside the child, which is how a
spec crosses the wire).
"""

from __future__ import annotations

import enum
import importlib
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec.structs import force_setattr

from ._errors import ChildSpecError
from ._program import Program, program_from
from ._worker import Worker

__all__ = [
    "RestartType",
    "ChildType",
    "ShutdownKind",
    "Strategy",
    "AutoShutdown",
    "ChildSpec",
    "SupFlags",
    "SupervisorSpec",
    "check_child_specs",
    "resolve_start",
    "import_ref",
    "spec_to_wire",
    "spec_from_wire",
]


class RestartType(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class ChildType(enum.Enum):
    WORKER = "worker"
    SUPERVISOR = "supervisor"


class ShutdownKind(enum.Enum):
    BRUTAL_KILL = "brutal_kill"
    INFINITY = "infinity"


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"
    SIMPLE_ONE_FOR_ONE = "simple_one_for_one"


class AutoShutdown(enum.Enum):
    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


def _as_enum(cls: type[enum.Enum], field: str, value: object) -> Any:
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        choices = " | ".join(m.value for m in cls)
        raise ChildSpecError(field, value, f"must be one of {choices}") from None


def _valid_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ChildSpecError("id", value, "must be a non-empty string")
    if any(c in "/.#*@" or c.isspace() for c in value):
        # '/' separates tree paths, '.' topic words; '#' marks dynamic children, '*' wildcards,
        # '@' a registered supervisor name where a path is expected (``@my_sup/child``)
        raise ChildSpecError("id", value,
                             "must not contain '/', '.', '#', '*', '@' or white space")
    return value


def _valid_start(value: object) -> object:
    if isinstance(value, Program):
        return value
    if isinstance(value, dict) and value.get("kind") == "program":  # from the wire
        return program_from(value)
    if isinstance(value, str):
        module, sep, attr = value.partition(":")
        if not (sep and module and attr):
            raise ChildSpecError("start", value, "a string must be 'module:attr'")
        return value
    if isinstance(value, SupervisorSpec):
        return value
    if isinstance(value, type):
        if issubclass(value, Worker):
            return value
        raise ChildSpecError("start", value, "a class must subclass prismatic.Worker")
    if callable(value):
        return value
    raise ChildSpecError(
        "start", value,
        "must be a Worker subclass, a SupervisorSpec, a Program, a callable or 'module:attr'"
    )


def _valid_args(value: object) -> tuple[Any, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    raise ChildSpecError("args", value, "must be a tuple or list")


def _valid_shutdown(value: object, ctype: ChildType) -> float | ShutdownKind:
    if value is None:
        return ShutdownKind.INFINITY if ctype is ChildType.SUPERVISOR else 5.0
    if isinstance(value, bool):
        raise ChildSpecError("shutdown", value, "must be brutal_kill, infinity or seconds >= 0")
    if isinstance(value, (int, float)):
        # 0 is valid, as in OTP: SIGTERM, then SIGKILL at once (see the README)
        if not (value >= 0 and math.isfinite(value)):
            raise ChildSpecError("shutdown", value, "seconds must be finite and >= 0")
        return float(value)
    return _as_enum(ShutdownKind, "shutdown", value)


def _valid_type(value: object, start: object) -> ChildType:
    if value is None:
        return ChildType.SUPERVISOR if isinstance(start, SupervisorSpec) else ChildType.WORKER
    ctype = _as_enum(ChildType, "type", value)
    if isinstance(start, SupervisorSpec) and ctype is not ChildType.SUPERVISOR:
        raise ChildSpecError("type", value, "start is a SupervisorSpec, so type must be supervisor")
    if isinstance(start, Program) and ctype is not ChildType.WORKER:
        raise ChildSpecError("type", value, "start is a Program, so type must be worker")
    if isinstance(start, type) and ctype is not ChildType.WORKER:
        raise ChildSpecError("type", value, "start is a Worker class, so type must be worker")
    return ctype


def _valid_significant(value: object, restart: RestartType) -> bool:
    if not isinstance(value, bool):
        raise ChildSpecError("significant", value, "must be True or False")
    if value and restart is RestartType.PERMANENT:
        raise ChildSpecError("significant", value, "a permanent child cannot be significant")
    return value


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How a supervisor starts, restarts and stops one child (OTP's ``child_spec()``)."""

    id: str
    start: Any
    args: tuple[Any, ...] = ()
    restart: RestartType = RestartType.PERMANENT
    shutdown: float | ShutdownKind | None = None
    type: ChildType | None = None
    significant: bool = False

    if TYPE_CHECKING:  # what the constructor accepts; __post_init__ normalizes it
        def __init__(self, *, id: str, start: Any, args: tuple[Any, ...] | list[Any] = ...,
                     restart: RestartType | str = ...,
                     shutdown: float | ShutdownKind | str | None = ...,
                     type: ChildType | str | None = ..., significant: bool = ...) -> None: ...

    def __post_init__(self) -> None:
        _valid_id(self.id)
        start = _valid_start(self.start)
        if isinstance(start, Program):
            force_setattr(self, "start", start)
        force_setattr(self, "args", _valid_args(self.args))
        restart = _as_enum(RestartType, "restart", self.restart)
        force_setattr(self, "restart", restart)
        ctype = _valid_type(self.type, start)
        force_setattr(self, "type", ctype)
        force_setattr(self, "shutdown", _valid_shutdown(self.shutdown, ctype))
        _valid_significant(self.significant, restart)


def _valid_intensity(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ChildSpecError("intensity", value, "must be an integer >= 0")
    return value


def _valid_period(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ChildSpecError("period", value, "must be a number of seconds > 0")
    if not (value > 0 and math.isfinite(value)):
        raise ChildSpecError("period", value, "must be finite and > 0")
    return float(value)


def _valid_auto_shutdown(value: object, strategy: Strategy) -> AutoShutdown:
    mode: AutoShutdown = _as_enum(AutoShutdown, "auto_shutdown", value)
    _check_combination(strategy, mode)
    return mode


def _check_combination(strategy: Strategy, mode: AutoShutdown) -> None:
    # OTP refuses it too ({bad_combination, ...}): a dynamic pool is not a unit that ends
    if strategy is Strategy.SIMPLE_ONE_FOR_ONE and mode is not AutoShutdown.NEVER:
        raise ChildSpecError("auto_shutdown", mode.value,
                             "bad_combination: simple_one_for_one needs auto_shutdown=never")


class SupFlags(msgspec.Struct, frozen=True, kw_only=True):
    """A supervisor's flags (OTP's ``sup_flags()``); ``period`` is in seconds."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = 1
    period: float = 5.0
    auto_shutdown: AutoShutdown = AutoShutdown.NEVER

    if TYPE_CHECKING:  # what the constructor accepts; __post_init__ normalizes it
        def __init__(self, *, strategy: Strategy | str = ..., intensity: int = ...,
                     period: float = ..., auto_shutdown: AutoShutdown | str = ...) -> None: ...

    def __post_init__(self) -> None:
        strategy = _as_enum(Strategy, "strategy", self.strategy)
        force_setattr(self, "strategy", strategy)
        _valid_intensity(self.intensity)
        force_setattr(self, "period", _valid_period(self.period))
        force_setattr(self, "auto_shutdown", _valid_auto_shutdown(self.auto_shutdown, strategy))


NAME_MAX = 64  # a registered supervisor name, in bytes (it is part of an AF_UNIX address)


def _valid_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ChildSpecError("name", value, "must be a non-empty string or None")
    if any(c in "/@" or c.isspace() for c in value) or len(value.encode()) > NAME_MAX:
        raise ChildSpecError("name", value, f"must be at most {NAME_MAX} bytes, without '/', "
                                            "'@' or white space")
    return value


class SupervisorSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A supervisor: its flags and its children in start order.

    For ``simple_one_for_one`` ``children`` holds exactly one template spec; its children are
    started later with ``start_child(args)``. ``name`` registers the running supervisor on
    its node (OTP's ``{local, Name}``): clients address it as ``@name`` instead of a path,
    and a second supervisor with the same name fails to start (``already_started``).
    """

    flags: SupFlags = SupFlags()
    children: tuple[ChildSpec, ...] = ()
    name: str | None = None

    if TYPE_CHECKING:  # what the constructor accepts; __post_init__ normalizes it
        def __init__(self, *, flags: SupFlags = ...,
                     children: tuple[ChildSpec, ...] | list[ChildSpec] = ...,
                     name: str | None = ...) -> None: ...

    def __post_init__(self) -> None:
        _valid_name(self.name)
        if not isinstance(self.flags, SupFlags):
            raise ChildSpecError("flags", self.flags, "must be a SupFlags")
        children = tuple(self.children) if isinstance(self.children, (list, tuple)) else None
        if children is None:
            raise ChildSpecError("children", self.children, "must be a list of ChildSpec")
        force_setattr(self, "children", children)
        check_child_specs(children, self.flags.auto_shutdown, strategy=self.flags.strategy)
        if self.flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE and len(children) != 1:
            raise ChildSpecError("children", len(children),
                                 "simple_one_for_one needs exactly one template child spec")


def check_child_specs(specs: Iterable[object],
                      auto_shutdown: AutoShutdown | str | None = None, *,
                      strategy: Strategy | str | None = None) -> None:
    """Validate child specs without starting anything (OTP's ``check_childspecs/2``).

    Raises :class:`ChildSpecError` for a non-ChildSpec item, a duplicate id, a significant
    child under ``auto_shutdown=never``, or (given the supervisor's ``strategy``)
    ``simple_one_for_one`` with an ``auto_shutdown`` other than ``never`` (OTP's
    ``bad_combination``).
    """
    mode = None if auto_shutdown is None else _as_enum(AutoShutdown, "auto_shutdown",
                                                       auto_shutdown)
    if strategy is not None and mode is not None:
        _check_combination(_as_enum(Strategy, "strategy", strategy), mode)
    seen: set[str] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise ChildSpecError("children", spec, "each child must be a ChildSpec")
        if spec.id in seen:
            raise ChildSpecError("id", spec.id, "duplicate child id")
        seen.add(spec.id)
        if spec.significant and mode is AutoShutdown.NEVER:
            raise ChildSpecError("significant", True,
                                 f"child {spec.id!r} is significant but auto_shutdown is never")


def import_ref(ref: str, field: str = "start") -> object:
    """The object a ``"module:attr"`` string names; ChildSpecError naming ``field`` if none."""
    module, sep, attr = ref.partition(":")
    if not (sep and module and attr):
        raise ChildSpecError(field, ref, "must be 'module:attr'")
    try:
        obj: object = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ChildSpecError(field, ref, f"cannot be imported: {exc}") from exc
    return obj


def resolve_start(start: object) -> object:
    """Turn a ``"module:attr"`` start into the object it names (done inside the child)."""
    if not isinstance(start, str):
        return start
    return _valid_start(import_ref(start))


def spec_to_wire(spec: ChildSpec) -> ChildSpec:
    """``spec`` as it can cross the wire (``get_childspec``): a class or function ``start``
    becomes the ``"module:qualname"`` that names it (informative only for a closure or a
    lambda), a nested :class:`SupervisorSpec` keeps its shape with its children so converted.
    """
    start = spec.start
    if isinstance(start, SupervisorSpec):
        start = msgspec.structs.replace(start, children=tuple(
            spec_to_wire(c) for c in start.children))
    elif not isinstance(start, (str, Program)):  # a Program is plain data: sent as it is
        module = getattr(start, "__module__", None) or "?"
        start = f"{module}:{getattr(start, '__qualname__', None) or type(start).__name__}"
    return msgspec.structs.replace(spec, start=start)


def spec_from_wire(obj: object) -> ChildSpec:
    """The :class:`ChildSpec` that :func:`spec_to_wire` sent (decoded as a map), validated
    again here."""
    if not isinstance(obj, dict):
        raise ChildSpecError("spec", obj, "must be a child spec (a map)")
    start = obj.get("start")
    if isinstance(start, dict) and start.get("kind") != "program":  # a nested SupervisorSpec
        start = SupervisorSpec(flags=msgspec.convert(start.get("flags", {}), SupFlags),
                               children=[spec_from_wire(c) for c in start.get("children", ())],
                               name=start.get("name"))
    return ChildSpec(start=start, **{k: v for k, v in obj.items() if k != "start"})
