"""The distribution's interest table (:mod:`prismatic.mesh._interest`): who hears of which
exit. A hypothesis state machine checks it against the plain scan it replaced; a count of
the names looked at pins the cost of an exit to its own ospid's entries."""

from __future__ import annotations

from typing import Any, ClassVar

from msgspec.structs import astuple

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from prismatic._address import Pid
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

    @invariant()
    def same_entries(self) -> None:
        assert len(self.table) == len(self.model)
        for named, nodes in self.model.items():
            assert self.table.nodes_of(named) == nodes
        assert all(self.table.by_ospid.values())  # no empty bucket left behind


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
