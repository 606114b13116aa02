"""``prismatic node|tree|children|metrics``: the node's lifecycle, its live supervision tree,
OTP's supervisor API, and its metrics.

Paths name supervisors as in the tree view: ``""`` (or ``root``) is the root, ``a/b`` a nested
one; a child is addressed as ``SUPERVISOR_PATH/CHILD_ID`` (``pipeline/transform``, or just
``clock`` under the root). Supervisor refusals (OTP's ``not_found``, ``running``...) exit 1.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import msgspec

from .._childspec import ChildSpec
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
            elif v not in (None, False):
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
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="How long to wait for the child's init.")
@json_option
@on_option
@click.pass_obj
def children_start(state: CliState, on_node: str | None, supervisor: str,
                   child_id: str | None,
                   start_ref: str | None, args_json: str | None, restart: str | None,
                   shutdown: str | None, child_type: str | None, significant: bool,
                   timeout: float, as_json: bool) -> None:
    """Start a child: --id and --start (a new spec), or only --args (simple_one_for_one)."""
    args = _json_args(args_json)
    if (child_id is None) != (start_ref is None):
        raise CliError("give both --id and --start, or neither (simple_one_for_one: --args)",
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
        pid = conn.start_child(sup_path(supervisor), what, timeout=timeout, node=on_node)
    if as_json:
        print_json({"pid": pid})
    else:
        click.echo(f"started, pid {pid}" if pid else "ignored (init raised Ignore)")


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
    """Start a terminated child again from its kept spec: PATH = SUPERVISOR/CHILD_ID."""
    sup, child = child_path(path)
    with state.progress(f"restarting {path}"), state.connect(timeout=timeout) as conn:
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
