"""``python -m prismatic.node``: start a node (see :mod:`prismatic._node`).

Exit codes: 0 stopped on request; 1 the root supervisor failed or exited; 2 bad usage
(an ``--app`` that cannot be loaded, a data directory in use).
"""

from __future__ import annotations

import sys

import click

from ._errors import NodeError

__all__ = ["main"]


@click.command(name="prismatic.node")
@click.option("--app", metavar="MODULE:ATTR",
              help="The tree to run: a SupervisorSpec or a callable returning one. "
                   "Default: the built-in demo tree.")
@click.option("--name", help="Node name (default prismatic@<host>).")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Data directory (default $PRISMATIC_HOME/<name>, ~/.prismatic/<name>).")
@click.option("--quiet", is_flag=True, help="Do not print the tree as it changes.")
def main(app: str | None, name: str | None, data_dir: str | None, quiet: bool) -> None:
    """Start a Prismatic node and run its supervision tree until SIGINT/SIGTERM."""
    from ._demo import demo_tree
    from ._node import load_app, run_node

    try:
        spec = load_app(app) if app else demo_tree()
        code = run_node(spec, name=name, data_dir=data_dir, show_tree=not quiet)
    except NodeError as exc:
        click.echo(f"prismatic.node: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
