"""``prismatic children signal|scale``: the supervisorctl/circusctl verbs built on the tree's
operations (no new supervisor operation: each is a composition the node already answers).

* ``signal PATH SIG`` sends a signal to a running child (``--group``: its whole process
  group), from this process: the CLI must run on the node's host as a user allowed to
  signal it. The child is pinned first (a pidfd on the pid ``which_children`` gave), then
  looked up again: if the supervisor still lists that pid, the pidfd is that child, so the
  signal cannot hit a recycled pid.
* ``scale SUPERVISOR N`` brings a ``simple_one_for_one`` pool to N children (circus's
  ``incr``/``decr``): new ones are started from the template with its own args, extra
  ones are terminated newest first.

And ``prismatic reload`` (supervisorctl's ``update``): the node re-reads its config file
and applies the difference (``prismatic._config_reload``); this prints what it did in one
line. Exit codes: 0 applied, 1 applied but a start failed, 2 the file was refused (one
line naming the key; nothing was touched).
"""

from __future__ import annotations

import os
import signal as signals
from typing import Any

import click

from .._errors import ChildSpecError, SupervisorError
from .._program import parse_signal
from ._format import CliError, ExitCode, print_json
from ._main import CliState, cli, json_option
from ._tree import child_path, children, sup_path


def _child_pid(conn: Any, sup: str, child: str) -> int:
    row = next((c for c in conn.which_children(sup) if c.id == child), None)
    if row is None:
        raise CliError(f"no child {child!r} under {sup or 'root'}", ExitCode.REFUSED)
    if not row.pid:
        raise CliError(f"child {child!r} is not running", ExitCode.REFUSED)
    return int(row.pid)


@children.command("signal")
@click.argument("path")
@click.argument("sig")
@click.option("--group", is_flag=True, help="Signal the child's whole process group.")
@click.pass_obj
def children_signal(state: CliState, path: str, sig: str, group: bool) -> None:
    """Send signal SIG (HUP, SIGUSR1, 10...) to a running child: PATH = SUPERVISOR/CHILD_ID."""
    try:
        number = parse_signal(int(sig) if sig.isdigit() else sig, "signal")
    except ChildSpecError as exc:
        raise CliError(f"{sig!r} is not a signal (HUP, SIGUSR1, 10...)", ExitCode.USAGE) \
            from exc
    sup, child = child_path(path)
    with state.connect() as conn:
        pid = _child_pid(conn, sup, child)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise CliError(f"child {path} (pid {pid}) is gone", ExitCode.REFUSED) from None
        try:
            if _child_pid(conn, sup, child) != pid:
                raise CliError(f"child {path} was restarted meanwhile; try again",
                               ExitCode.REFUSED)
            if group:
                os.killpg(pid, number)  # the child leads its group (a pid pinned above)
            else:
                signals.pidfd_send_signal(pidfd, number)
        except PermissionError:
            raise CliError(f"not allowed to signal pid {pid} (run as the node's user)",
                           ExitCode.REFUSED) from None
        except ProcessLookupError:
            raise CliError(f"child {path} (pid {pid}) is gone", ExitCode.REFUSED) from None
        finally:
            os.close(pidfd)
    click.echo(f"sent {signals.Signals(number).name} to {path} "
               f"({'group' if group else 'pid'} {pid})")


@children.command("scale")
@click.argument("supervisor")
@click.argument("count", type=click.IntRange(min=0))
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for each start or stop.")
@json_option
@click.pass_obj
def children_scale(state: CliState, supervisor: str, count: int, timeout: float,
                   as_json: bool) -> None:
    """Bring a simple_one_for_one SUPERVISOR to COUNT running children."""
    sup = sup_path(supervisor)
    started: list[int] = []
    stopped: list[int] = []
    with state.progress(f"scaling {supervisor or 'root'} to {count}", not as_json), \
            state.connect(timeout=timeout) as conn:
        running = [c.pid for c in conn.which_children(sup) if c.pid]  # newest first
        for _ in range(count - len(running)):
            pid = conn.start_child(sup, (), timeout=timeout)
            if pid:
                started.append(pid)
        for pid in running[:max(0, len(running) - count)]:
            conn.terminate_child(sup, pid, timeout=timeout)
            stopped.append(pid)
    if as_json:
        print_json({"started": started, "stopped": stopped})
    else:
        click.echo(f"{supervisor or 'root'}: {count} children (started {len(started)}, "
                   f"stopped {len(stopped)})")


@cli.command("reload")
@click.option("--timeout", type=float, default=300.0, show_default=True,
              help="Seconds to wait for the whole reload (stops and readiness included).")
@json_option
@click.pass_obj
def reload_config(state: CliState, timeout: float, as_json: bool) -> None:
    """Re-read the node's config file and apply its [tree]: new children started, removed
    ones terminated, changed ones restarted, the others untouched."""
    from .._config_reload import REFUSED, describe_reload

    with state.progress("reloading", not as_json), state.connect(timeout=timeout) as conn:
        try:
            done = conn.reload(timeout=timeout)
        except SupervisorError as exc:
            if exc.reason == REFUSED:
                raise CliError(f"reload refused: {exc.detail}", ExitCode.USAGE) from None
            raise
    if as_json:
        print_json(done)
    else:
        click.echo(f"reloaded {done['file']}: {describe_reload(done)}")
    if done["failed"]:
        raise SystemExit(int(ExitCode.REFUSED))
