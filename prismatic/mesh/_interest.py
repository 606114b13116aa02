"""Which other nodes must hear of the exit of which of this node's processes.

The distribution (:mod:`._remote`) records an *interest* when another node watches one of
our processes (``watch``) or links one to a process of its own (``link_add``), and when one
of ours links a remote process. When our process exits, each interested node is sent one
``gone``, and the interest is dropped.

Other nodes name our process as they were given it: an exact Pid, or a Pid without its
discriminators (``Pid(node, ospid)``, see :mod:`prismatic._address`), which names whichever
process holds that ospid. So the exit of one process answers every recorded name that
:meth:`~prismatic.Pid.names` it, each under that name. Entries are kept per ospid: an exit
looks only at the names recorded for its own ospid (O(1) per exit however many processes
are watched; a scan of every entry cost O(n) per exit).

A node that is lost (declared dead or left) watches and links nothing of ours any more (its
side of every link broke with ``noconnection``, and a new incarnation starts with none):
:meth:`Interest.drop_node` drops its entries, found through a per-node index (O(its own
entries)). Kept until our process exited, a long-lived process's entries grew with every
node that ever watched it.
"""

from __future__ import annotations

from .._address import Pid

__all__ = ["Interest"]


class Interest:
    """Invariant: ``by_ospid[o]`` holds exactly the recorded names with ospid ``o``, each
    with a non-empty set of nodes; ``by_node[n]`` exactly the names ``n`` is recorded for;
    no empty bucket is kept."""

    def __init__(self) -> None:
        self.by_ospid: dict[int, dict[Pid, set[str]]] = {}
        self.by_node: dict[str, set[Pid]] = {}

    def add(self, named: Pid, node: str) -> None:
        """``node`` hears of the exit of the process ``named`` names."""
        self.by_ospid.setdefault(named.ospid, {}).setdefault(named, set()).add(node)
        self.by_node.setdefault(node, set()).add(named)

    def pop_exited(self, pid: Pid) -> list[tuple[str, Pid]]:
        """The exit of ``pid`` (exact): every ``(node, name)`` to tell, once; forgotten."""
        bucket = self.by_ospid.get(pid.ospid)
        if not bucket:
            return []
        told: list[tuple[str, Pid]] = []
        for named in [k for k in bucket if k.names(pid)]:
            for node in sorted(bucket.pop(named)):
                told.append((node, named))
                names = self.by_node[node]
                names.discard(named)
                if not names:
                    del self.by_node[node]
        if not bucket:
            del self.by_ospid[pid.ospid]
        return told

    def drop_node(self, node: str) -> int:
        """``node`` is lost: it hears of no exit any more. Returns how many entries went."""
        names = self.by_node.pop(node, set())
        for named in names:
            bucket = self.by_ospid[named.ospid]
            nodes = bucket[named]
            nodes.discard(node)
            if not nodes:
                del bucket[named]
                if not bucket:
                    del self.by_ospid[named.ospid]
        return len(names)

    def nodes_of(self, named: Pid) -> set[str]:
        """The nodes recorded for ``named`` (that exact name), for tests and inspection."""
        return set(self.by_ospid.get(named.ospid, {}).get(named, ()))

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self.by_ospid.values())
