"""``python -m prismatic.node``: start a node (see :mod:`prismatic._node`); the same command
as ``prismatic node start`` (both in :mod:`prismatic.cli._node`).

Exit codes: 0 stopped on request; 1 the root supervisor failed or exited; 2 bad usage
(an ``--app`` or ``--config`` that cannot be loaded, a data directory in use). Errors are
one line, ``prismatic: error: ...``, as the ``prismatic`` command's.
"""

from __future__ import annotations

import click

from .cli._format import OneLineErrors
from .cli._node import node_options, start_node

__all__ = ["main"]


class _Command(OneLineErrors, click.Command):
    pass


@click.command(name="prismatic.node", cls=_Command,
               context_settings={"help_option_names": ["-h", "--help"]})
@node_options
def main(**options: object) -> None:
    """Start a Prismatic node and run its supervision tree until SIGINT/SIGTERM."""
    start_node(**options)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
