"""``prismatic cluster``: the node mesh from the command line (see docs/cluster.md).

``init-secret`` writes the cluster secret file (mode 0600; the secret is never printed);
``join HOST:PORT...`` asks the selected node to join through those seeds (retried by the
node until one answers) and waits a moment to show the result; ``leave`` announces the
node's departure (it keeps running, alone); ``members`` lists every member the node knows
(name, address, state, incarnation, last probe round trip, since when), or ``--json``.
The node is asked over its control endpoint (:mod:`._control`, the ``cl_*`` calls).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import msgspec

from ._format import print_json, print_table
from ._main import CliState, cli, json_option

__all__ = ["cluster"]


@cli.group()
def cluster() -> None:
    """Form and inspect a cluster of nodes (the node mesh)."""


@cluster.command("init-secret")
@click.option("--file", "path", type=click.Path(dir_okay=False), default=None,
              help="Where to write it (default $PRISMATIC_HOME/cluster.secret).")
@click.option("--force", is_flag=True, help="Replace an existing secret file.")
def init_secret_cmd(path: str | None, force: bool) -> None:
    """Create the cluster secret file (mode 0600). Copy it to every node's host: a node
    without it can never join, learn the members or ask anything."""
    from ..mesh._secret import default_secret_path, init_secret

    written = init_secret(Path(path) if path else default_secret_path(), force=force)
    click.echo(f"cluster secret written to {written} (mode 0600); copy it to every node "
               f"and keep it private")


def _members(conn: Any) -> list[Any]:
    from .._control import ClusterMembersCall
    from ..mesh._loop import MemberRow

    return msgspec.convert(conn._call(lambda ref, cookie: ClusterMembersCall(ref, cookie)),
                           list[MemberRow])


@cluster.command("members")
@json_option
@click.pass_obj
def members_cmd(state: CliState, as_json: bool) -> None:
    """Every member the node knows: name, address, state, incarnation, RTT, since."""
    from ._format import human_seconds

    with state.connect() as conn:
        rows = _members(conn)
    if as_json:
        print_json(rows)
        return
    now = time.time()
    print_table(["name", "address", "state", "incarnation", "rtt", "since"], [
        (r.name + (" (this node)" if r.this_node else ""), r.address, r.state.value,
         r.incarnation, None if r.rtt_ms is None else f"{r.rtt_ms:.2f}ms",
         f"{human_seconds(max(0.0, now - r.since))} ago") for r in rows])


@cluster.command("join")
@click.argument("seeds", nargs=-1, required=True, metavar="HOST:PORT...")
@click.option("--wait", "wait_s", type=float, default=5.0, show_default=True,
              help="How long to wait for a seed to answer before returning.")
@click.pass_obj
def join_cmd(state: CliState, seeds: tuple[str, ...], wait_s: float) -> None:
    """Join the cluster through these seed nodes (idempotent; the node keeps retrying)."""
    from .._control import ClusterJoinCall

    with state.connect() as conn:
        before = {r.name for r in _members(conn) if r.state.value == "alive"}
        conn._call(lambda ref, cookie: ClusterJoinCall(ref, tuple(seeds), cookie))
        deadline = time.monotonic() + wait_s
        while True:
            alive = {r.name for r in _members(conn) if r.state.value == "alive"}
            if len(alive) > 1 and alive != before or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    if len(alive) > 1:
        click.echo(f"in a cluster of {len(alive)} live nodes: {', '.join(sorted(alive))}")
    else:
        click.echo(f"join asked; no seed answered within {wait_s:.0f}s (the node keeps "
                   f"retrying; see prismatic cluster members)")


@cluster.command("leave")
@click.pass_obj
def leave_cmd(state: CliState) -> None:
    """Leave the cluster: every member marks this node left at once. The node keeps
    running on its own (``cluster join`` takes it back, as a new incarnation)."""
    from .._control import ClusterLeaveCall

    with state.connect() as conn:
        conn._call(lambda ref, cookie: ClusterLeaveCall(ref, cookie))
    click.echo("left the cluster")
