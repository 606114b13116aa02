"""Who may ``emit`` an event under which source: the hub's check of ``EmitReq.source``.

A record's ``source`` says who wrote it (``docs/eventlog.md``): a process's own pid as text
(``<node.ospid>``, what :class:`~prismatic.Worker` sends) or ``client`` (what a
:class:`~prismatic.NodeConnection` and ``prismatic emit`` send). The node's own sources
(``node``, ``mesh``, ``root``, a supervisor's path, a dead letter's sender) never come over
the hub: the node submits those to its log itself.

The hub binds the claim to the connection the way it binds every other request that acts
for a process: to the pid the kernel recorded when the process connected (``SO_PEERCRED``).
A process may emit as itself or as ``client``, which names no process (any process of the
node's user may use a client, a worker's included, and could start one outside the tree
anyway). Anything else (another process's pid, the node's own sources, any other text) is
refused ``not_permitted`` and counted with the hub's other refusals. Only the node itself
(no caller) emits under any source.
"""

from __future__ import annotations

from ._address import Pid

__all__ = ["CLIENT_SOURCE", "emit_source_permitted"]

CLIENT_SOURCE = "client"  # the source of an emit through a NodeConnection


def emit_source_permitted(source: str, caller: Pid | None) -> bool:
    """Whether ``caller`` (None: the node itself) may emit under ``source``."""
    return caller is None or source in (str(caller), CLIENT_SOURCE)
