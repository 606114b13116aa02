"""TOML node configuration: parsed with tomllib, validated into frozen msgspec Structs.

Layout (every key optional except each child's ``id`` and a worker's ``start``)::

    [node]
    name = "demo"              # node name
    data_dir = "./data"        # relative paths are relative to the config file
    metrics_port = 9100        # 0: no HTTP metrics endpoint
    metrics_bind = "127.0.0.1" # the metrics endpoint's address ("0.0.0.0": every interface)
    log_format = "text"        # text | json
    log_file = "node.log"      # reopened on SIGHUP (logrotate)
    log_level = "info"         # debug | info | warning | error | critical
    subscriber_hwm = 1000      # pub/sub: messages queued per subscriber (0: unbounded)
    listen = "0.0.0.0:4370"    # cluster mesh: listen for other nodes, join these seeds
    join = ["10.0.0.5:4370"]   # (with the cluster secret: cluster_secret = "path")
    reap_after = 600           # seconds a dead or left member is remembered (at least 1)

    [eventlog]                 # retention: the oldest events go first
    max_bytes = 1073741824     # default 1 GiB
    max_age_s = 604800         # default none: kept until max_bytes

    [tree]                     # the root supervisor
    flags = { strategy = "one_for_one", intensity = 10, period = 60 }

    [[tree.children]]          # a worker: start = "module:attr"
    id = "clock"
    start = "prismatic._demo:Ticker"
    args = [0.5]
    restart = "permanent"      # permanent | transient | temporary
    shutdown = 5               # seconds | "brutal_kill" | "infinity"

    [[tree.children]]          # a program (any executable): a program table instead of start
    id = "web"
    shutdown = 10
    [tree.children.program]    # fields of prismatic.Program; docs/programs.md
    argv = ["gunicorn", "app:wsgi", "-b", "127.0.0.1:8000"]
    ready = { check = "port", port = 8000 }

    [[tree.children]]          # a nested supervisor: children instead of start
    id = "pipeline"
    flags = { strategy = "rest_for_one" }
    [[tree.children.children]]
    ...

Every ``start`` is imported while the config loads, so the modules the tree needs are in the
node's image before it forks (as with ``--app``), and a typo fails here, not in a child.
Errors are :class:`ConfigError`, naming the file, the key path (``tree.children[2].restart``)
and the problem; the spec validators' :class:`ChildSpecError` is mapped to its key path.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import msgspec

from ._childspec import (
    AutoShutdown, ChildSpec, RestartType, Strategy, SupervisorSpec, SupFlags, import_ref,
)
from ._errors import ChildSpecError, NodeError
from ._program import program_from

__all__ = ["ConfigError", "NodeConfig", "NodeSection", "EventLogSection", "load_config",
           "LogFormat", "LOG_LEVELS"]


class ConfigError(NodeError):
    """A config file is unreadable or invalid; the message names file, key path, problem."""

    def __init__(self, file: Path | str, key: str, problem: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


# Enum-valued keys stay str here: the spec validators then name the allowed values.
class FlagsTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    strategy: str = Strategy.ONE_FOR_ONE.value
    intensity: int = 1
    period: float = 5.0
    auto_shutdown: str = AutoShutdown.NEVER.value


class ChildTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    start: str | None = None
    args: tuple[Any, ...] = ()
    restart: str = RestartType.PERMANENT.value
    shutdown: float | str | None = None
    type: str | None = None
    significant: bool = False
    flags: FlagsTable | None = None
    children: tuple[ChildTable, ...] | None = None
    program: dict[str, Any] | None = None  # a program child (docs/programs.md)


class TreeTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    flags: FlagsTable = FlagsTable()
    children: tuple[ChildTable, ...] = ()


class NodeSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str | None = None
    data_dir: str | None = None
    metrics_port: int = 0
    metrics_bind: str = "127.0.0.1"
    log_format: LogFormat = LogFormat.TEXT
    log_file: str | None = None
    log_level: str | None = None
    listen: str | None = None  # the cluster mesh (docs/cluster.md)
    join: tuple[str, ...] = ()
    cluster_secret: str | None = None
    reap_after: float | None = None  # seconds (docs/cluster.md); None: the default, 600
    subscriber_hwm: int | None = None  # docs/pubsub.md, flow control; None: the default


class EventLogSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Event-log retention; None: the node's default (max_bytes 1 GiB, max_age_s none)."""

    max_bytes: int | None = None
    max_age_s: float | None = None


class ConfigFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    node: NodeSection = NodeSection()
    eventlog: EventLogSection = EventLogSection()
    tree: TreeTable | None = None


class NodeConfig(msgspec.Struct, frozen=True):
    """A loaded config: the node's settings and, if the file has one, its tree."""

    path: str
    node: NodeSection
    tree: SupervisorSpec | None
    eventlog: EventLogSection = EventLogSection()


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def load_config(path: Path | str) -> NodeConfig:
    import tomllib  # noqa: PLC0415 - only a node started with a config needs it in its image

    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text())
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"not valid TOML: {exc}") from None
    try:
        doc = msgspec.convert(raw, ConfigFile)
    except msgspec.ValidationError as exc:
        msg, _, where = str(exc).rpartition(" - at `$")
        if not msg:
            raise ConfigError(file, "", str(exc)) from None
        raise ConfigError(file, where.rstrip("`").lstrip("."), _problem(msg)) from None
    section = doc.node
    if section.data_dir is not None:  # relative to the file, not to wherever we were run
        section = msgspec.structs.replace(
            section, data_dir=str((file.parent / section.data_dir).expanduser()))
    if not 0 <= section.metrics_port <= 65535:
        raise ConfigError(file, "node.metrics_port", f"{section.metrics_port} is not a port "
                                                     "(0 disables the endpoint)")
    if section.subscriber_hwm is not None and section.subscriber_hwm < 0:
        raise ConfigError(file, "node.subscriber_hwm", f"{section.subscriber_hwm} is negative "
                                                       "(0: unbounded)")
    if section.reap_after is not None:
        from .mesh._settings import reap_after_problem  # noqa: PLC0415 - light, no ZeroMQ

        if (why := reap_after_problem(section.reap_after)) is not None:
            raise ConfigError(file, "node.reap_after", f"{section.reap_after!r}: {why}")
    if section.log_level is not None and section.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(file, "node.log_level", f"{section.log_level!r} is not a level "
                                                  f"(one of {' | '.join(LOG_LEVELS)})")
    for key, value in (("max_bytes", doc.eventlog.max_bytes),
                       ("max_age_s", doc.eventlog.max_age_s)):
        if value is not None and not value > 0:
            raise ConfigError(file, f"eventlog.{key}", f"{value!r} must be positive")
    tree = None if doc.tree is None else _supervisor(file, "tree", doc.tree.flags,
                                                      doc.tree.children)
    return NodeConfig(path=str(file), node=section, tree=tree, eventlog=doc.eventlog)


def _problem(msg: str) -> str:
    # msgspec says "Object contains unknown field `x`": that is what a typo looks like
    msg = msg.replace("Object contains unknown field", "unknown key")
    if msg.startswith("Invalid enum value"):
        msg += f" (one of {' | '.join(f.value for f in LogFormat)})"  # log_format: the only one
    return msg


def _supervisor(file: Path, key: str, flags: FlagsTable,
                children: tuple[ChildTable, ...]) -> SupervisorSpec:
    try:
        sup_flags = SupFlags(strategy=flags.strategy, intensity=flags.intensity,
                             period=flags.period, auto_shutdown=flags.auto_shutdown)
    except ChildSpecError as exc:
        raise ConfigError(file, f"{key}.flags.{exc.field}", _spec_problem(exc)) from None
    specs = [_child(file, f"{key}.children[{i}]", c) for i, c in enumerate(children)]
    try:
        return SupervisorSpec(flags=sup_flags, children=specs)
    except ChildSpecError as exc:
        # check_child_specs names the field; point at the first child it is about
        at = _index_of(children, exc)
        where = f"{key}.children[{at}].{exc.field}" if at is not None else f"{key}.children"
        raise ConfigError(file, where, _spec_problem(exc)) from None


def _index_of(children: tuple[ChildTable, ...], exc: ChildSpecError) -> int | None:
    if exc.field == "id":
        hits = [i for i, c in enumerate(children) if c.id == exc.value]
        return hits[-1] if hits else None  # the duplicate is the later one
    if exc.field == "significant":
        return next((i for i, c in enumerate(children) if c.significant), None)
    return None


def _child(file: Path, key: str, table: ChildTable) -> ChildSpec:
    if table.program is not None:
        if table.start is not None or table.children is not None:
            raise ConfigError(file, f"{key}.program", "a child has one of start (a worker), "
                                                      "children (a supervisor) or program")
        try:
            start: object = program_from(table.program)
        except ChildSpecError as exc:
            raise ConfigError(file, f"{key}.{exc.field}", _spec_problem(exc)) from None
    elif table.children is not None:
        if table.start is not None:
            raise ConfigError(file, f"{key}.start",
                              "a child has either start (a worker) or children (a supervisor)")
        start = _supervisor(file, key, table.flags or FlagsTable(), table.children)
    elif table.start is None:
        raise ConfigError(file, f"{key}.start", "missing: a worker needs start = "
                                                "\"module:attr\" (a supervisor: children, a "
                                                "program: [...program] argv)")
    elif table.flags is not None:
        raise ConfigError(file, f"{key}.flags", "only a supervisor (a child with children) "
                                                "has flags")
    else:
        try:
            start = import_ref(table.start, "start")
        except ChildSpecError as exc:
            raise ConfigError(file, f"{key}.start", _spec_problem(exc)) from None
    try:
        return ChildSpec(id=table.id, start=start, args=table.args, restart=table.restart,
                         shutdown=table.shutdown, type=table.type,
                         significant=table.significant)
    except ChildSpecError as exc:
        raise ConfigError(file, f"{key}.{exc.field}", _spec_problem(exc)) from None


def _spec_problem(exc: ChildSpecError) -> str:
    return f"{exc.value!r}: {exc.problem}" if exc.value is not None else exc.problem
