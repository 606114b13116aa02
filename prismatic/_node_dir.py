"""Which node a client means: its data directory, and whether a node runs there.

A node is named by its data directory or by its name (a directory under
``$PRISMATIC_HOME``, see :func:`~._node.default_data_dir`); :func:`check_running` tells from
the directory's lock (:mod:`._nodelock`) at once, without waiting for an answer.
"""

from __future__ import annotations

from pathlib import Path

from ._errors import ControlError
from ._node import default_data_dir
from ._nodelock import lock_holder

__all__ = ["resolve_node", "check_running"]


def resolve_node(node: str | Path) -> Path:
    """A node's data directory, from the directory itself or the node's name: anything that
    looks like a path (``./data``, ``a/b``, ``~/x``, ``.``) or is a directory here is one."""
    text = str(node)
    p = Path(text).expanduser()
    if isinstance(node, Path) or p.is_dir() or "/" in text or text.startswith((".", "~")):
        return p
    return default_data_dir(text)


def check_running(data_dir: Path) -> int:
    """The pid of the node running in ``data_dir``; ControlError at once if none is (told
    by the data directory's lock, see :mod:`._nodelock`: no waiting for an answer)."""
    if not data_dir.is_dir():
        raise ControlError(f"no node is running in {data_dir.resolve()} (no such directory)")
    pid = lock_holder(data_dir)
    if pid is None or not (data_dir / "control.sock").exists():
        raise ControlError(f"no node is running in {data_dir.resolve()}")
    return pid

