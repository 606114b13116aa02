"""``prismatic``: the operator's command line for a running node.

Commands (``prismatic COMMAND --help`` for each): ``node start|stop``, ``status``, ``tree``,
``children which|which-child|spec|count|start|terminate|restart|delete``,
``events tail|query|replay``, ``metrics``, ``reload`` (re-read the config file), and
ad-hoc messages: ``call``, ``cast``, ``send``, ``whereis``, ``publish``, ``subscribe``,
and ``emit`` (durable events); ``chaos list|run``
breaks a node on purpose and checks the invariants held (:mod:`prismatic.chaos`). Read
commands print tables, or JSON with ``--json``.

Node selection, first that is given: ``--node NAME_OR_DATA_DIR``, ``$PRISMATIC_NODE``, else
the one running node under ``$PRISMATIC_HOME`` (default ``~/.prismatic``). Errors are one
line on stderr, ``prismatic: error: ...`` (a traceback only with ``--verbose``); a closed
stdout (``prismatic status | head -2``) is a normal end and an exit code from
:class:`~prismatic.cli._format.ExitCode`: 0 ok, 1 refused by the supervisor (or no such
process, callee exited, dead letter), 2 usage, 3 node unreachable, 4 cookie refused,
5 timed out (no reply, mailbox full), 70 internal error. Anything slower than a second shows
a spinner on stderr if it is a terminal (not with ``--json``; none with ``--no-progress`` or
``$PRISMATIC_NO_PROGRESS=1``). Shell completion:
``eval "$(_PRISMATIC_COMPLETE=bash_source prismatic)"``.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from ._format import CliError, ExitCode, OneLineErrors, print_json
from .._cookie import CookieRefused
from .._nodelock import lock_holder
from .._errors import (
    CallError, CallTimeout, ChildSpecError, ControlError, EventLogError, MailboxFull, NodeError,
    PrismaticError, PubSubError, SupervisorError, TopicError,
)

__all__ = ["main", "cli", "select_node"]


def _exit_code_of(exc: PrismaticError) -> ExitCode:
    if isinstance(exc, CookieRefused):
        return ExitCode.AUTH
    if isinstance(exc, (CallTimeout, MailboxFull)):
        return ExitCode.TIMEOUT
    if isinstance(exc, (SupervisorError, CallError)):
        return ExitCode.REFUSED
    if isinstance(exc, (ChildSpecError, TopicError, NodeError)):
        return ExitCode.USAGE
    if isinstance(exc, (ControlError, EventLogError, PubSubError)):
        return ExitCode.UNREACHABLE
    return ExitCode.INTERNAL


def _one_line(message: str) -> str:
    """An error as one short line: the first line of a longer text (the rest is what
    ``--verbose`` shows)."""
    first, _, rest = message.strip().partition("\n")
    return f"{first} (more with --verbose)" if rest.strip() else first


def _stdout_closed() -> None:
    """``prismatic status | head -2``: the reader left, which is a normal end. Point stdout
    at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# The modules that register each command on ``cli``, imported when the command is looked
# up: ``prismatic node start`` forks the tree from this process, and whatever is imported
# before that fork is mapped in every process of the tree (the event log's LMDB, chaos and
# messaging have no business there; see prismatic/_process.py on what a page costs).
_COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "node": ("_tree",), "tree": ("_tree",), "metrics": ("_tree",),
    "children": ("_tree", "_operate"), "reload": ("_operate",),
    "events": ("_events",), "logs": ("_logs",), "chaos": ("_chaos",), "cluster": ("_cluster",),
    **{name: ("_messaging",) for name in ("call", "cast", "send", "whereis", "publish",
                                           "subscribe", "emit")},
}


def load_commands(names: tuple[str, ...] | None = None) -> None:
    """Import the modules that register commands ``names`` (every command: None)."""
    modules = {m for n, ms in _COMMAND_MODULES.items() if names is None or n in names
               for m in ms}
    for module in sorted(modules):
        importlib.import_module(f"{__package__}.{module}")


class _Group(OneLineErrors, click.Group):
    """Turns Prismatic's errors into a :class:`CliError` with its exit code; imports a
    command's module when the command is looked up (``_COMMAND_MODULES``)."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        load_commands((cmd_name,))
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_commands()
        return super().list_commands(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            _stdout_closed()
            raise click.exceptions.Exit(0) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except PrismaticError as exc:
            if ctx.params.get("debug"):
                traceback.print_exc()
                child_tb = getattr(getattr(exc, "exit_reason", None), "traceback", "")
                if child_tb:  # a child that failed to start: where it failed, over there
                    click.echo(f"the child's traceback:\n{child_tb}", err=True)
            raise CliError(_one_line(str(exc)), _exit_code_of(exc)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as exc:
            if ctx.params.get("debug"):
                traceback.print_exc()
            raise CliError(f"internal error: {_one_line(repr(exc))} (rerun with --verbose for "
                           f"the traceback)", ExitCode.INTERNAL) from None


class CliState:
    """What the group's options decided, for the subcommands."""

    def __init__(self, node: str | None, debug: bool, no_progress: bool = False) -> None:
        self.node_arg = node
        self.debug = debug
        self.no_progress = no_progress

    def progress(self, label: str, show: bool = True) -> Any:
        """A spinner on stderr if this takes over a second (terminal only; ``show=False``
        for ``--json``)."""
        from ._progress import progress

        return progress(label, enabled=show and not self.no_progress)

    def data_dir(self) -> Path:
        return select_node(self.node_arg)

    def connect(self, timeout: float = 10.0) -> Any:
        from .._client import connect

        return connect(self.data_dir(), timeout=timeout)


def prismatic_home() -> Path:
    return Path(os.environ.get("PRISMATIC_HOME", "~/.prismatic")).expanduser()


def running(data_dir: Path) -> bool:
    """Whether a node holds the lock of ``data_dir`` (not merely left its files behind)."""
    return lock_holder(data_dir) is not None


def select_node(node: str | None) -> Path:
    from .._client import resolve_node

    if node:
        return resolve_node(node)
    home = prismatic_home()
    found = sorted(d for d in home.iterdir() if d.is_dir() and running(d)) \
        if home.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise CliError(f"no running node under {home}; give one with --node NAME_OR_DIR "
                       f"or PRISMATIC_NODE", ExitCode.UNREACHABLE)
    raise CliError(f"{len(found)} nodes run under {home} ({', '.join(d.name for d in found)});"
                   f" pick one with --node", ExitCode.USAGE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--node", envvar="PRISMATIC_NODE", metavar="NAME_OR_DATA_DIR",
              help="The node to talk to (default: $PRISMATIC_NODE, else the only running node "
                   "under $PRISMATIC_HOME).")
@click.option("-v", "--verbose", "--debug", "debug", is_flag=True,
              help="Show the whole error, with its traceback.")
@click.option("--no-progress", is_flag=True, envvar="PRISMATIC_NO_PROGRESS",
              help="No spinner on stderr for slow operations (also $PRISMATIC_NO_PROGRESS=1).")
@click.version_option(package_name="prismatic")
@click.pass_context
def cli(ctx: click.Context, node: str | None, debug: bool, no_progress: bool) -> None:
    """Operate Prismatic nodes: supervision trees of OS processes.

    \b
    Exit codes: 0 ok, 1 refused by the supervisor (or: no such process, callee
    exited, dead letter), 2 usage, 3 node unreachable, 4 cookie refused, 5 timed out
    (no reply, mailbox full), 70 internal error.
    Shell completion: eval "$(_PRISMATIC_COMPLETE=bash_source prismatic)"
    """
    ctx.obj = CliState(node, debug, no_progress)


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


@cli.command()
@json_option
@click.pass_obj
def status(state: CliState, as_json: bool) -> None:
    """Node health, uptime and process counts."""
    from ._format import human_seconds

    with state.connect() as conn:
        st = conn.status()
    if as_json:
        print_json(st)
        return
    rows = [("node", st.node), ("ready", "yes" if st.ready else "no (tree starting)"),
            ("pid", st.pid), ("root pid", st.root_pid), ("uptime", human_seconds(st.uptime)),
            ("processes", f"{st.processes} ({st.supervisors} supervisors, "
                          f"{st.workers} workers)"),
            ("restarts", st.restarts), ("data dir", st.data_dir),
            ("metrics", st.metrics_url or "off (prismatic metrics)")]
    if st.dead_tasks:  # /health is 503 too: the node needs a restart
        rows.append(("dead tasks", ", ".join(st.dead_tasks) + " (restart the node)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> None:
    """The console script ``prismatic``."""
    try:
        cli.main(args=argv, prog_name="prismatic")
    except SystemExit:
        try:
            sys.stdout.flush()  # what is still buffered; the reader may have left meanwhile
        except BrokenPipeError:
            _stdout_closed()
        raise

