"""The node's name registry (:mod:`prismatic._registry`): OTP's ``register/2`` rules.

Part (a): one example per rule. Part (b): a hypothesis state machine that drives ``decide``
with names and pids from small pools (so collisions are common) and compares every answer
and every state against a reference model, a plain ``dict`` of name -> pid.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from prismatic._address import Pid
from prismatic._registry import (
    Accepted, Exited, Refused, Register, Registry, Unregister, decide,
)

P1, P2, P3 = Pid("n", 1), Pid("n", 2), Pid("n", 3)


def run(*events):
    state, answers = Registry(), []
    for ev in events:
        state, answer = decide(state, ev)
        answers.append(answer)
    return state, answers


# ---- (a) examples ------------------------------------------------------------------------------


def test_register_then_lookup_both_ways():
    state, answers = run(Register("a", P1))
    assert answers == [Accepted()]
    assert state.names == {"a": P1} and state.by_pid == {P1: "a"}


def test_a_name_names_one_process():
    state, answers = run(Register("a", P1), Register("a", P2))
    assert answers[1] == Refused("already_registered", f"held by {P1}")
    assert state.names == {"a": P1}


def test_a_process_holds_one_name():
    state, answers = run(Register("a", P1), Register("b", P1))
    assert isinstance(answers[1], Refused) and answers[1].reason == "already_named"
    assert state.names == {"a": P1} and state.by_pid == {P1: "a"}


def test_registering_the_same_pair_again_is_accepted_and_changes_nothing():
    state1, _ = run(Register("a", P1))
    state2, answer = decide(state1, Register("a", P1))
    assert answer == Accepted() and state2 == state1


def test_only_the_holder_unregisters():
    state, answers = run(Register("a", P1), Unregister("a", P2), Unregister("b", P1))
    assert [a.reason for a in answers[1:]] == ["not_registered", "not_registered"]
    assert state.names == {"a": P1}
    state, answer = decide(state, Unregister("a", P1))
    assert answer == Accepted() and state == Registry()


def test_exit_drops_the_name_and_frees_it():
    state, answers = run(Register("a", P1), Register("b", P2), Exited(P1), Register("a", P3))
    assert answers == [Accepted()] * 4
    assert state.names == {"a": P3, "b": P2} and state.by_pid == {P3: "a", P2: "b"}


def test_exit_of_an_unnamed_process_is_accepted_and_changes_nothing():
    state1, _ = run(Register("a", P1))
    state2, answer = decide(state1, Exited(P2))
    assert answer == Accepted() and state2 == state1


def snapshot(state: Registry) -> Registry:
    """A copy: decide updates the state it is given in place (O(1) per operation)."""
    return Registry(dict(state.names), dict(state.by_pid))


def test_decide_updates_in_place_and_a_refusal_changes_nothing():
    state, _ = run(Register("a", P1), Register("b", P2))
    before = snapshot(state)
    for ev in (Register("a", P3), Register("c", P1), Unregister("a", P2)):
        after, answer = decide(state, ev)
        assert isinstance(answer, Refused) and after is state and state == before
    after, answer = decide(state, Register("c", P3))
    assert answer == Accepted() and after is state and state.names["c"] == P3


# ---- (b) the state machine ---------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "d"])
PIDS = st.builds(Pid, st.sampled_from(["n", "m"]), st.integers(1, 5))


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = Registry()
        self.model: dict[str, Pid] = {}  # name -> pid: the whole of OTP's registry

    @rule(name=NAMES, pid=PIDS)
    def register(self, name: str, pid: Pid) -> None:
        before = snapshot(self.state)
        self.state, answer = decide(self.state, Register(name, pid))
        holder = self.model.get(name)
        if holder == pid:
            assert answer == Accepted()  # idempotent
            assert self.state == before
        elif holder is not None:
            assert isinstance(answer, Refused) and answer.reason == "already_registered"
            assert self.state == before
        elif pid in self.model.values():
            assert isinstance(answer, Refused) and answer.reason == "already_named"
            assert self.state == before
        else:
            assert answer == Accepted()
            self.model[name] = pid

    @rule(name=NAMES, pid=PIDS)
    def unregister(self, name: str, pid: Pid) -> None:
        before = snapshot(self.state)
        self.state, answer = decide(self.state, Unregister(name, pid))
        if self.model.get(name) == pid:
            assert answer == Accepted()
            del self.model[name]
        else:
            assert isinstance(answer, Refused) and answer.reason == "not_registered"
            assert self.state == before

    @rule(pid=PIDS)
    def exited(self, pid: Pid) -> None:
        self.state, answer = decide(self.state, Exited(pid))
        assert answer == Accepted()
        self.model = {n: q for n, q in self.model.items() if q != pid}
        assert pid not in self.state.by_pid

    @invariant()
    def matches_the_model(self) -> None:
        assert self.state.names == self.model

    @invariant()
    def inverse_maps(self) -> None:
        names, by_pid = self.state.names, self.state.by_pid
        assert len(names) == len(by_pid)
        assert all(by_pid.get(pid) == name for name, pid in names.items())
        assert all(names.get(name) == pid for pid, name in by_pid.items())


TestRegistryMachine = RegistryMachine.TestCase
TestRegistryMachine.settings = settings(max_examples=200, stateful_step_count=50,
                                        deadline=None)
