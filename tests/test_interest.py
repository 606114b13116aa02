"""The distribution's interest table (:mod:`prismatic.mesh._interest`): who hears of which
exit, and what goes when a node is lost. A hypothesis state machine checks it against the
plain scan it replaced (and lost nodes); a count of the names looked at pins the cost of an
exit to its own ospid's entries."""

from __future__ import annotations

from typing import Any, ClassVar

from msgspec.structs import astuple

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from prismatic._address import Pid
from prismatic._exit import NoConnection
from prismatic.mesh._interest import Interest

NODES = ("n1", "n2", "n3")
# Exact processes over few ospids (two holders of ospid 7 in turn), and the names other
# nodes may have been given for them: exact, or without discriminators.
PROCS = [Pid("me", o, c, s) for o, c, s in ((7, 100, 1), (7, 100, 2), (8, 100, 3),
                                               (9, 200, 4))]
NAMES = PROCS + [Pid("me", 7), Pid("me", 8), Pid("me", 7, 100), Pid("me", 9, 0, 4)]


class InterestMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = Interest()
        self.model: dict[Pid, set[str]] = {}  # the old layout: name -> nodes, scanned

    @rule(named=st.sampled_from(NAMES), node=st.sampled_from(NODES))
    def add(self, named: Pid, node: str) -> None:
        self.table.add(named, node)
        self.model.setdefault(named, set()).add(node)

    @rule(pid=st.sampled_from(PROCS))
    def exited(self, pid: Pid) -> None:
        want = sorted((node, named) for named in [k for k in self.model if k.names(pid)]
                      for node in self.model.pop(named))
        assert sorted(self.table.pop_exited(pid)) == want

    @rule(node=st.sampled_from(NODES))
    def lost(self, node: str) -> None:
        had = sum(node in nodes for nodes in self.model.values())
        for named in [k for k, nodes in self.model.items() if node in nodes]:
            self.model[named].discard(node)
            if not self.model[named]:
                del self.model[named]
        assert self.table.drop_node(node) == had

    @invariant()
    def same_entries(self) -> None:
        assert len(self.table) == len(self.model)
        for named, nodes in self.model.items():
            assert self.table.nodes_of(named) == nodes
        assert all(self.table.by_ospid.values())  # no empty bucket left behind
        assert self.table.by_node == {
            n: {k for k, nodes in self.model.items() if n in nodes}
            for n in NODES if any(n in nodes for nodes in self.model.values())}


TestInterestMachine = InterestMachine.TestCase
TestInterestMachine.settings = settings(max_examples=200, stateful_step_count=30,
                                        deadline=None)


class CountingPid(Pid):
    """A Pid that counts how often it is asked whether it names a process."""

    asked: ClassVar[list[int]] = [0]

    def names(self, other: Pid) -> bool:
        self.asked[0] += 1
        return super().names(other)


def test_an_exit_looks_only_at_names_of_its_own_ospid() -> None:
    table = Interest()
    for ospid in range(1, 20_001):
        table.add(CountingPid("me", ospid, 1, ospid), "n1")
    table.add(CountingPid("me", 5_000), "n2")  # a second name of process 5,000
    CountingPid.asked[0] = 0
    told: Any = table.pop_exited(Pid("me", 5_000, 1, 5_000))
    assert sorted((node, astuple(k)) for node, k in told) == [
        ("n1", ("me", 5_000, 1, 5_000)), ("n2", ("me", 5_000, 0, 0))]
    assert CountingPid.asked[0] == 2  # of 20,001 names: the two that share its ospid
    assert len(table) == 19_999
    assert table.pop_exited(Pid("me", 5_000, 1, 5_000)) == []  # once


def test_a_lost_node_is_told_of_no_exit_and_its_entries_go() -> None:
    """A node that is lost (dead or left) no longer watches or links anything of ours (its
    side of each link broke with noconnection): its entries go with it. Kept until our
    process exits, a long-lived process's entries grew with every node that ever linked it,
    and the node's next incarnation was told of an exit it never asked for."""
    from prismatic._hub import Hub  # noqa: PLC0415
    from prismatic.mesh._remote import Distribution  # noqa: PLC0415

    sent: list[tuple[str, Any]] = []
    dist = Distribution("me", Hub("me", on_dead_letter=lambda note: None),
                        lambda node, frame: sent.append((node, frame)) or True,
                        alive=lambda node: True, dead_letter=lambda note: None)
    ours, kept = Pid("me", 7, 100, 1), Pid("me", 8, 100, 2)
    for i in range(1000):  # node churn: each node links our long-lived process, then goes
        dist.linked(ours, Pid(f"n{i}", 40 + i))
        dist.node_lost(f"n{i}")
    dist.linked(kept, Pid("stays", 9))
    dist.linked(ours, Pid("stays", 9))
    assert dist.interest.nodes_of(ours) == {"stays"} and len(dist.interest) == 2
    sent.clear()
    dist.exited(ours, NoConnection())
    assert [node for node, _ in sent] == ["stays"]
