"""Who may ``emit`` an event under which source: the hub's check of ``EmitReq.source``.

A record's ``source`` says who wrote it (``docs/eventlog.md``): a process's own pid as text
(``<node.ospid>``, what :class:`~prismatic.Worker` sends) or ``client`` (what a
:class:`~prismatic.NodeConnection` and ``prismatic emit`` send: a process outside the
tree). The node's own sources (``node``, ``mesh``, ``root``, a supervisor's path, a dead
letter's sender) never come over the hub: the node submits those to its log itself.

The hub binds the claim to the connection the way it binds every other request that acts
for a process: to the pid the kernel recorded when the process connected (``SO_PEERCRED``).
A process may emit as itself, or as ``client`` unless it is a process of the tree (a worker
or supervisor the tree reported started: it names itself). Anything else (another process's
pid, the node's own sources, any other text) is refused ``not_permitted`` and counted with
the hub's other refusals. Only the node itself (no caller) emits under any source.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._address import Pid

__all__ = ["CLIENT_SOURCE", "emit_source_permitted"]

CLIENT_SOURCE = "client"  # the source of an emit from outside the tree


def emit_source_permitted(source: str, caller: Pid | None, tree: Mapping[int, Pid]) -> bool:
    """Whether ``caller`` (None: the node itself) may emit under ``source``; ``tree`` maps
    the ospid of each live process the tree reported started to its Pid."""
    if caller is None:
        return True
    if source == str(caller):
        return True
    return source == CLIENT_SOURCE and tree.get(caller.ospid) != caller
