"""``prismatic``: the operator's command line (see :mod:`._main` for the group and the exit
codes). Each command group lives in its own module: ``_node`` (start/stop), ``_tree``
(tree and children), ``_events``, ``_messaging``, ``_chaos`` (``prismatic chaos``);
``_format`` and ``_progress`` are the output helpers, ``_logging`` the node's log set-up.

``cli``, ``main`` and ``select_node`` are imported from :mod:`._main` on first use, not
with the package: ``python -m prismatic.node`` imports ``_node`` and ``_format`` only, and
whatever the node imports before it forks its tree is mapped in every process of the tree
(every command group would bring LMDB and JSON with it; see ``prismatic/_process.py`` on
what each mapped page costs a fork and an exit)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._main import cli, main, select_node

__all__ = ["cli", "main", "select_node"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import _main  # noqa: PLC0415 - on first use: see the module doc

        return getattr(_main, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
