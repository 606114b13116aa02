"""``prismatic node|tree|children|metrics``: the node's lifecycle, its live supervision tree,
OTP's supervisor API, and its metrics.

Paths name supervisors as in the tree view: ``""`` (or ``root``) is the root, ``a/b`` a nested
one, ``@name`` the supervisor registered as ``name`` (``@name/sub`` below it); a child is
addressed as ``SUPERVISOR_PATH/CHILD_ID`` (``pipeline/transform``, ``@pool/w``, or just
``clock`` under the root). Supervisor refusals (OTP's ``not_found``, ``running``...) exit 1.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import msgspec

from .._childspec import ChildSpec
from .._errors import ChildSpecError
from .._program import Program
from ._format import (
    CliError, ExitCode, human_bytes, human_seconds, print_json, print_table,
)
from ._node import detach_node, node_options, start_node, stop_node
from .._control import ProcessState
from .._exit import describe
from .._node import METRICS_PORT_AUTO
from ._main import CliState, cli, json_option

__all__ = ["TreeLine", "sup_path", "child_path"]


class TreeLine(msgspec.Struct, frozen=True):
    """One row of ``prismatic tree``."""

    path: str
    pid: int | None
    type: str
    state: ProcessState
    restarts: int
    uptime: float | None
    uss_bytes: int | None
    last_exit: str | None


def sup_path(path: str) -> str:
    return "" if path in ("", "/", "root") else path.strip("/")


def child_path(path: str) -> tuple[str, str]:
    sup, _, child = path.strip("/").rpartition("/")
    if not child:
        raise CliError(f"{path!r} is not a child path (SUPERVISOR/CHILD_ID)", ExitCode.USAGE)
    return sup_path(sup), child


# ---- node -------------------------------------------------------------------------------------

@cli.group()
def node() -> None:
    """Start or stop a node."""


@node.command("start")
@node_options
@click.option("--detach", is_flag=True,
              help="Run the node in the background; return once its tree started.")
@click.option("--wait", "wait_s", type=float, default=30.0, show_default=True,
              help="With --detach: how long to wait for the tree to start.")
@click.pass_obj
def node_start(state: CliState, detach: bool, wait_s: float, **options: Any) -> None:
    """Start a node (same as python -m prismatic.node).

    Exit codes: 0 stopped on request (or, with --detach, started); 1 the root supervisor
    failed or exited; 2 bad usage (--app/--config cannot be loaded, data directory in use).
    """
    if not detach:
        start_node(**options)
        return
    from ._node import DetachFailed, _Settings

    s = _Settings(**{k: v for k, v in options.items() if k != "quiet"})
    s.tree()  # load --app/--config here: a bad one is exit 2 now, not a dead background node
    argv: list[str] = []
    for key, value in options.items():
        flag = "--config" if key == "config_file" else f"--{key.replace('_', '-')}"
        for v in (value if isinstance(value, tuple) else (value,)):
            if key == "metrics_port" and v == METRICS_PORT_AUTO:
                v = "auto"
            if v is True:
                argv.append(flag)
            elif v is not None and v is not False:  # a 0 is a value (0 == False)
                # paths as given are relative to here; the node starts in the same directory
                argv += [flag, str(v)]
    argv += ["--name", s.name, "--data-dir", str(s.data_dir)]
    try:
        with state.progress(f"starting node {s.name}"):
            out, pid = detach_node(argv, s.data_dir, wait_s)
    except DetachFailed as exc:
        code = ExitCode(exc.code) if exc.code in (1, 2) else ExitCode.REFUSED
        raise CliError(f"node {s.name} did not start: {exc}", code) from None
    click.echo(f"node {s.name} started (pid {pid}, data {s.data_dir.resolve()}, "
               f"output {out.resolve()})")


@node.command("stop")
@click.option("--wait", "wait_s", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the node to exit.")
@click.pass_obj
def node_stop(state: CliState, wait_s: float) -> None:
    """Stop the node: its tree stops in reverse start order, then the node exits."""
    data_dir = state.data_dir()
    with state.progress(f"stopping node {data_dir.name}"):
        pid = stop_node(data_dir, wait_s)
    click.echo(f"node (pid {pid}) stopped")


# ---- tree ---------------------------------------------------------------------------------------

def on_option(f: Any) -> Any:
    return click.option("--on", "on_node", metavar="NODE", default=None,
                        help="Carry it out on NODE, another member of this node's cluster.")(f)


@cli.command()
@json_option
@on_option
@click.option("--cluster", "whole", is_flag=True,
              help="Every reachable member's tree, one after the other (needs the mesh).")
@click.pass_obj
def tree(state: CliState, as_json: bool, on_node: str | None, whole: bool) -> None:
    """The live supervision tree: path, pid, type, state, restarts, uptime, memory (USS)."""
    with state.connect() as conn:
        if whole:
            from ._cluster import _members

            names = [m.name for m in _members(conn) if m.state.value in ("alive", "suspect")]
            here = next((m.name for m in _members(conn) if m.this_node), None)
            trees = {n: (conn.tree(node=None if n == here else n), n == here) for n in names}
        else:
            trees = {on_node or "": (conn.tree(node=on_node), on_node is None)}
    every: dict[str, list[TreeLine]] = {n: _lines(rows, local) for n, (rows, local)
                                        in trees.items()}
    if as_json:
        print_json(every if whole else every[on_node or ""])
        return
    for n, lines in every.items():
        if whole:
            click.echo(f"node {n}:")
        print_table(["path", "pid", "type", "state", "restarts", "uptime", "uss", "last exit"],
                    [(("  " * (ln.path.count("/") + 1) + ln.path.rsplit("/", 1)[-1])
                      if ln.path != "root" else "root", ln.pid, ln.type, ln.state.value,
                      ln.restarts, human_seconds(ln.uptime), human_bytes(ln.uss_bytes),
                      ln.last_exit) for ln in lines])


def _lines(rows: list[Any], local: bool) -> list[TreeLine]:
    """The rows as printed; memory only for this node's processes (read from /proc here)."""
    from .._process import uss_bytes

    lines = []
    for r in rows:
        uss = None
        if local and r.pid is not None:
            try:
                uss = uss_bytes(r.pid)
            except OSError:
                uss = None  # exited since the node answered
        lines.append(TreeLine(path=r.path or "root", pid=r.pid, type=r.type, state=r.state,
                              restarts=r.restarts, uptime=r.uptime, uss_bytes=uss,
                              last_exit=describe(r.last_exit) if r.last_exit else None))
    return lines


# ---- children -----------------------------------------------------------------------------------

@cli.group()
def children() -> None:
    """OTP's supervisor API on the supervisor at a path."""


@children.command("which")
@click.argument("supervisor", default="")
@json_option
@on_option
@click.pass_obj
def children_which(state: CliState, on_node: str | None, supervisor: str, as_json: bool) -> None:
    """A supervisor's children (last started first, as OTP's which_children)."""
    with state.connect() as conn:
        kids = conn.which_children(sup_path(supervisor), node=on_node)
    if as_json:
        print_json(kids)
        return
    print_table(["id", "pid", "type", "restarting"],
                [(k.id, k.pid, k.type, "yes" if k.restarting else "") for k in kids])


@children.command("count")
@click.argument("supervisor", default="")
@json_option
@on_option
@click.pass_obj
def children_count(state: CliState, on_node: str | None, supervisor: str, as_json: bool) -> None:
    """A supervisor's child counts: specs, active, supervisors, workers."""
    with state.connect() as conn:
        counts = conn.count_children(sup_path(supervisor), node=on_node)
    if as_json:
        print_json(counts)
        return
    print_table(list(counts), [list(counts.values())])


def _child_target(path: str, pid: int | None) -> tuple[str, str | int]:
    return (sup_path(path), pid) if pid is not None else child_path(path)


@children.command("which-child")
@click.argument("path")
@click.option("--pid", type=int, help="The child with this pid; PATH is then its supervisor "
                                      "(simple_one_for_one children have no id).")
@json_option
@click.pass_obj
def children_which_child(state: CliState, path: str, pid: int | None, as_json: bool) -> None:
    """One child's row, as in `children which` (OTP's which_child): PATH = SUPERVISOR/CHILD_ID."""
    sup, target = _child_target(path, pid)
    with state.connect() as conn:
        kid = conn.which_child(sup, target)
    if as_json:
        print_json(kid)
        return
    print_table(["id", "pid", "type", "restarting"],
                [(kid.id, kid.pid, kid.type, "yes" if kid.restarting else "")])


@children.command("spec")
@click.argument("path")
@click.option("--pid", type=int, help="The child with this pid; PATH is then its supervisor.")
@json_option
@click.pass_obj
def children_spec(state: CliState, path: str, pid: int | None, as_json: bool) -> None:
    """The child spec its supervisor holds (OTP's get_childspec): PATH = SUPERVISOR/CHILD_ID."""
    sup, target = _child_target(path, pid)
    with state.connect() as conn:
        spec = conn.get_childspec(sup, target)
    if as_json:
        print_json(spec)
        return
    start = spec.start
    if not isinstance(start, str):  # a nested SupervisorSpec: its flags and children's ids
        start = (f"supervisor {start.flags.strategy.value}, children "
                 f"{', '.join(c.id for c in start.children) or '-'}"
                 + (f", name {start.name}" if start.name else ""))
    shutdown = spec.shutdown
    for field, value in (("id", spec.id), ("start", start), ("args", json.dumps(spec.args)),
                         ("restart", spec.restart.value),  # type: ignore[union-attr]
                         ("shutdown", getattr(shutdown, "value", shutdown)),
                         ("type", spec.type.value),  # type: ignore[union-attr]
                         ("significant", str(spec.significant).lower())):
        click.echo(f"{field + ':':<13}{value}")


def _json_args(value: str | None) -> tuple[Any, ...] | None:
    if value is None:
        return None
    try:
        args = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CliError(f"--args is not JSON: {exc}", ExitCode.USAGE) from None
    if not isinstance(args, list):
        raise CliError("--args must be a JSON array, e.g. '[1, \"x\"]'", ExitCode.USAGE)
    return tuple(args)


@children.command("start")
@click.argument("supervisor", default="")
@click.option("--id", "child_id", help="Child id (not for simple_one_for_one).")
@click.option("--start", "start_ref", metavar="MODULE:ATTR", help="What the child runs.")
@click.option("--args", "args_json", metavar="JSON", help="Arguments, a JSON array.")
@click.option("--restart", type=click.Choice(["permanent", "transient", "temporary"]),
              help="When to restart it: always (permanent, the default), after an abnormal "
                   "exit (transient), never (temporary).")
@click.option("--shutdown", help="brutal_kill, infinity or seconds.")
@click.option("--type", "child_type", type=click.Choice(["worker", "supervisor"]),
              help="What --start returns: a worker (the default) or a supervisor's spec.")
@click.option("--significant", is_flag=True,
              help="Its exit may stop the supervisor (auto_shutdown).")
@click.option("--program", "command", metavar="COMMAND",
              help="Run this executable instead of --start (split as a shell would, not run "
                   "by one): a program child.")
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE",
              help="A program's environment variable (repeatable).")
@click.option("--cwd", help="A program's working directory.")
@click.option("--ready", "ready_spec", metavar="CHECK",
              help="A program's readiness check: port:PORT, port:HOST:PORT, http://URL, "
                   "file:PATH, line:REGEX or notify (default: ready at exec).")
@click.option("--start-timeout", type=float, help="Seconds for the readiness check to pass.")
@click.option("--alive", "alive_spec", metavar="CHECK",
              help="A program's liveness check, tried every --alive-every seconds: port:PORT, "
                   "port:HOST:PORT, http://URL or file:PATH.")
@click.option("--alive-every", type=float, help="Seconds between liveness checks (10).")
@click.option("--stop-signal", help="A program's stop signal (default TERM).")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="How long to wait for the child's init.")
@json_option
@on_option
@click.pass_obj
def children_start(state: CliState, on_node: str | None, supervisor: str,
                   child_id: str | None,
                   start_ref: str | None, args_json: str | None, restart: str | None,
                   shutdown: str | None, child_type: str | None, significant: bool,
                   command: str | None, env_pairs: tuple[str, ...], cwd: str | None,
                   ready_spec: str | None, start_timeout: float | None,
                   alive_spec: str | None, alive_every: float | None,
                   stop_signal: str | None, timeout: float, as_json: bool) -> None:
    """Start a child: --id and --start (a new spec), --id and --program (a program), or
    only --args (simple_one_for_one)."""
    args = _json_args(args_json)
    program_opts = env_pairs or cwd or ready_spec or start_timeout or stop_signal \
        or alive_spec or alive_every
    if command is not None:
        if start_ref is not None:
            raise CliError("give --start or --program, not both", ExitCode.USAGE)
        start_ref = _program(command, env_pairs, cwd, ready_spec, start_timeout,
                             stop_signal, alive_spec, alive_every)  # type: ignore[assignment]
    elif program_opts:
        raise CliError("--env/--cwd/--ready/--start-timeout/--stop-signal/--alive need "
                       "--program",
                       ExitCode.USAGE)
    if (child_id is None) != (start_ref is None):
        raise CliError("give --id with --start or --program, or neither (simple_one_for_one: "
                       "--args)",
                       ExitCode.USAGE)
    if child_id is None:
        if restart or shutdown or child_type or significant:
            raise CliError("--restart/--shutdown/--type/--significant need --id and --start",
                           ExitCode.USAGE)
        what: Any = args or ()
    else:
        spec: dict[str, Any] = {"id": child_id, "start": start_ref, "args": args or (),
                                "significant": significant}
        if restart:
            spec["restart"] = restart
        if child_type:
            spec["type"] = child_type
        if shutdown:
            try:
                spec["shutdown"] = float(shutdown)
            except ValueError:
                spec["shutdown"] = shutdown
        what = ChildSpec(**spec)
    label = f"starting child {child_id!r}" if child_id else "starting a child"
    with state.progress(f"{label} of {supervisor or 'root'}", not as_json), \
            state.connect(timeout=timeout) as conn:
        pid, info = conn.start_child_info(sup_path(supervisor), what, timeout=timeout,
                                          node=on_node)
    if as_json:
        print_json({"pid": pid, "info": info})
    else:
        extra = "" if info is None else f", info {json.dumps(info, default=repr)}"
        click.echo(f"started, pid {pid}{extra}" if pid else "ignored (init raised Ignore)")


def _program(command: str, env_pairs: tuple[str, ...], cwd: str | None,
             ready_spec: str | None, start_timeout: float | None,
             stop_signal: str | None, alive_spec: str | None = None,
             alive_every: float | None = None) -> Program:
    import shlex  # noqa: PLC0415 - only this command needs it

    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise CliError(f"--program: {exc}", ExitCode.USAGE) from None
    env = {}
    for pair in env_pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliError(f"--env {pair!r}: must be NAME=VALUE", ExitCode.USAGE)
        env[name] = value
    fields: dict[str, Any] = {"argv": argv, "env": env, "cwd": cwd,
                              "ready": _ready(ready_spec)}
    if start_timeout is not None:
        fields["start_timeout"] = start_timeout
    if stop_signal is not None:
        fields["stop_signal"] = stop_signal
    if alive_spec is not None:
        fields["alive"] = _ready(alive_spec, "--alive")
    if alive_every is not None:
        fields["alive_every"] = alive_every
    try:
        return Program(**fields)
    except ChildSpecError as exc:
        raise CliError(f"--program: {exc}", ExitCode.USAGE) from None


def _ready(spec: str | None, option: str = "--ready") -> dict[str, Any] | None:
    if spec is None:
        return None
    kind, _, rest = spec.partition(":")
    if kind == "notify" and not rest:
        return {"check": "notify"}
    if kind == "port" and rest:
        host, _, port = rest.rpartition(":")
        if not port.isdigit():
            raise CliError(f"{option} {spec!r}: the port must be a number", ExitCode.USAGE)
        return {"check": "port", "port": int(port), **({"host": host} if host else {})}
    if kind == "http" and rest:
        return {"check": "http", "url": spec}
    if kind == "file" and rest:
        return {"check": "file", "path": rest}
    if kind == "line" and rest:
        return {"check": "line", "pattern": rest}
    raise CliError(f"{option} {spec!r}: one of port:PORT, port:HOST:PORT, http://..., "
                   "file:PATH, line:REGEX, notify", ExitCode.USAGE)


@children.command("terminate")
@click.argument("path")
@click.option("--pid", type=int, help="Terminate this pid; PATH is then its supervisor "
                                      "(simple_one_for_one children have no id).")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the supervisor's answer (the child's shutdown "
                   "included).")
@on_option
@click.pass_obj
def children_terminate(state: CliState, on_node: str | None, path: str, pid: int | None,
                       timeout: float) -> None:
    """Stop a child (its spec is kept unless temporary): PATH = SUPERVISOR/CHILD_ID."""
    sup, target = (sup_path(path), pid) if pid is not None else child_path(path)
    with state.progress(f"terminating {path if pid is None else pid}"), \
            state.connect(timeout=timeout) as conn:
        conn.terminate_child(sup, target, timeout=timeout, node=on_node)
    click.echo(f"terminated {path if pid is None else pid}")


@children.command("restart")
@click.argument("path")
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the supervisor's answer (the child's init included).")
@on_option
@click.pass_obj
def children_restart(state: CliState, on_node: str | None, path: str, timeout: float) -> None:
    """Restart a child from its kept spec, a running one terminated first (supervisorctl's
    restart): PATH = SUPERVISOR/CHILD_ID."""
    sup, child = child_path(path)
    with state.progress(f"restarting {path}"), state.connect(timeout=timeout) as conn:
        if any(c.id == child and c.pid for c in conn.which_children(sup, node=on_node)):
            conn.terminate_child(sup, child, timeout=timeout, node=on_node)
        pid = conn.restart_child(sup, child, timeout=timeout, node=on_node)
    click.echo(f"restarted {path}, pid {pid}" if pid else f"{path}: ignored")


@children.command("delete")
@click.argument("path")
@on_option
@click.pass_obj
def children_delete(state: CliState, on_node: str | None, path: str) -> None:
    """Delete a terminated child's spec: PATH = SUPERVISOR/CHILD_ID."""
    sup, child = child_path(path)
    with state.progress(f"deleting {path}"), state.connect() as conn:
        conn.delete_child(sup, child, node=on_node)
    click.echo(f"deleted {path}")


# ---- metrics ------------------------------------------------------------------------------------

class Sample(msgspec.Struct, frozen=True):
    name: str
    labels: dict[str, str]
    value: float


@cli.command()
@click.option("--raw", is_flag=True, help="Print the Prometheus text exposition.")
@click.option("--filter", "prefix", default="", help="Only metrics whose name starts so.")
@json_option
@click.pass_obj
def metrics(state: CliState, raw: bool, prefix: str, as_json: bool) -> None:
    """The node's metrics (read over the control endpoint; HTTP not needed)."""
    from prometheus_client.parser import text_string_to_metric_families

    with state.progress("scraping metrics", not as_json), state.connect() as conn:
        text = conn.metrics()
    if raw:
        sys.stdout.write(text)
        return
    samples = [Sample(s.name, dict(s.labels), s.value)
               for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name.startswith(prefix) and not s.name.endswith("_created")]
    if as_json:
        print_json(samples)
        return
    print_table(["metric", "value"],
                [(s.name + ("{" + ",".join(f"{k}={v}" for k, v in s.labels.items()) + "}"
                            if s.labels else ""), _number(s.value)) for s in samples])


def _number(value: float) -> str:
    """Whole numbers in full (bytes: 1978370, not 1.97837e+06), others to 6 digits."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e18 else f"{value:g}"
