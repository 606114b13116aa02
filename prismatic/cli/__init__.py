"""``prismatic``: the operator's command line (see :mod:`._main` for the group and the exit
codes). Each command group lives in its own module: ``_node`` (start/stop), ``_tree``
(tree and children), ``_events``, ``_messaging``, ``_chaos`` (``prismatic chaos``);
``_format`` and ``_progress`` are the output helpers, ``_logging`` the node's log set-up."""

from ._main import cli, main, select_node

__all__ = ["cli", "main", "select_node"]
