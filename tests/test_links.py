"""Monitors and links (:mod:`prismatic._links`): OTP's semantics on one node.

Part (a): one example per rule. Part (b): a hypothesis state machine playing the hub's part
(it resolves liveness, feeds each exit once, never lets a dead process make a request) over a
small pool of pids, and checks every action list against a reference model: the live
monitors as a dict, the links as a set of pairs, and what every ref has fired so far.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from prismatic._address import Global, Pid
from prismatic._exit import Crashed, ExitCode, Killed, NoConnection, Normal, NoProc, Shutdown
from prismatic._links import (
    Demonitor, Link, Links, Monitor, MonitorStarted, ProcessExited, SendDown, SendExit, Unlink,
    decide,
)
from prismatic._notices import Down, Exit

A, B, C = Pid("n", 1), Pid("n", 2), Pid("n", 3)
BOOM = Crashed("builtins.RuntimeError", "boom")


def run(*events: Any) -> tuple[Links, list[list[Any]]]:
    state, out = Links(), []
    for ev in events:
        state, actions = decide(state, ev)
        out.append(actions)
    return state, out


# ---- (a) examples ------------------------------------------------------------------------------


def test_monitor_fires_once_with_the_reason():
    state, out = run(Monitor(A, B, None), ProcessExited(B, BOOM))
    assert out == [[MonitorStarted(1)], [SendDown(A, Down(1, B, BOOM))]]
    assert state.monitors == {} and state.next_ref == 2


def test_a_monitor_by_name_names_it_in_its_down():
    g = Global("leader")
    state, out = run(Monitor(A, B, None, "beta"), Monitor(A, Pid("m", 0), NoProc(), "nobody"),
                     Monitor(A, C, None, g), Demonitor(A, 3), ProcessExited(B, BOOM))
    assert out[1] == [MonitorStarted(2), SendDown(A, Down(2, Pid("m", 0), NoProc(), "nobody"))]
    assert out[4] == [SendDown(A, Down(1, B, BOOM, "beta"))]
    assert state.names == {} and state.monitors == {}  # a name lives as long as its monitor


def test_monitor_of_a_dead_process_fires_at_once():
    state, out = run(Monitor(A, B, NoProc()), Monitor(A, C, Killed(9)))
    assert out == [[MonitorStarted(1), SendDown(A, Down(1, B, NoProc()))],
                   [MonitorStarted(2), SendDown(A, Down(2, C, Killed(9)))]]
    assert state.monitors == {}


def test_each_monitor_gets_its_own_ref_and_its_own_down():
    state, out = run(Monitor(A, C, None), Monitor(A, C, None), Monitor(B, C, None),
                     ProcessExited(C, Normal()))
    assert [o[0].mref for o in out[:3]] == [1, 2, 3]
    assert Counter(out[3]) == Counter([SendDown(A, Down(1, C, Normal())),
                                       SendDown(A, Down(2, C, Normal())),
                                       SendDown(B, Down(3, C, Normal()))])


def test_demonitor_means_no_down():
    state, out = run(Monitor(A, B, None), Demonitor(A, 1), ProcessExited(B, BOOM))
    assert out[1:] == [[], []] and state.monitors == {}


def test_only_the_watcher_demonitors():
    state, out = run(Monitor(A, B, None), Demonitor(C, 1), ProcessExited(B, BOOM))
    assert out[2] == [SendDown(A, Down(1, B, BOOM))]


def test_demonitor_of_a_fired_or_unknown_ref_is_a_noop():
    state1, _ = run(Monitor(A, B, NoProc()))
    for ev in (Demonitor(A, 1), Demonitor(A, 99)):
        state2, actions = decide(state1, ev)
        assert actions == [] and state2 == state1


def test_a_dead_watchers_monitors_die_with_it():
    state, out = run(Monitor(A, B, None), ProcessExited(A, BOOM), ProcessExited(B, Normal()))
    assert out[1:] == [[], []] and state.monitors == {}


def test_links_are_symmetric():
    for dying, other in ((A, B), (B, A)):
        state, out = run(Link(A, B, None), ProcessExited(dying, Killed(9)))
        assert out[1] == [SendExit(other, Exit(dying, Killed(9)))]
        assert state.links == frozenset()


def test_linking_twice_is_one_link():
    state, out = run(Link(A, B, None), Link(B, A, None), ProcessExited(A, BOOM))
    assert out[2] == [SendExit(B, Exit(A, BOOM))]


def test_linking_to_a_dead_process_is_exit_noproc_whatever_it_died_of():
    state, out = run(Link(A, B, BOOM), Link(A, C, NoProc()))
    assert out == [[SendExit(A, Exit(B, NoProc()))], [SendExit(A, Exit(C, NoProc()))]]
    assert state.links == frozenset()


def test_unlink_from_either_end():
    state, out = run(Link(A, B, None), Unlink(B, A), ProcessExited(A, BOOM))
    assert out[1:] == [[], []]


def test_linking_to_self_does_nothing():
    state, out = run(Link(A, A, None), ProcessExited(A, BOOM))
    assert out == [[], []] and state == Links()


def test_exit_notifies_links_and_monitors_together():
    state, out = run(Link(A, B, None), Monitor(C, B, None), Monitor(B, C, None),
                     ProcessExited(B, Shutdown("bye")))
    assert Counter(out[3]) == Counter([SendExit(A, Exit(B, Shutdown("bye"))),
                                       SendDown(C, Down(1, B, Shutdown("bye")))])
    assert state == Links(next_ref=3)


# ---- (b) the state machine ---------------------------------------------------------------------

POOL = [Pid("n", i) for i in range(1, 6)]  # alive at the start; more are spawned later
GHOSTS = [Pid("n", 1000 + i) for i in range(3)]  # never lived: the hub answers NoProc()
REASONS = st.one_of(
    st.just(Normal()), st.builds(Shutdown, st.sampled_from(["", "bye"])),
    st.builds(Crashed, st.sampled_from(["builtins.ValueError", "builtins.KeyError"]),
              st.text(max_size=5)),
    st.builds(Killed, st.sampled_from([9, 15])), st.builds(ExitCode, st.integers(1, 3)),
)


class LinksMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = Links()
        self.exits: dict[Pid, Any] = {}  # each pid exits at most once, with this reason
        self.monitors: dict[int, tuple[Pid, Pid]] = {}  # live monitors: mref -> (w, t)
        self.links: set[frozenset[Pid]] = set()
        self.refs: list[int] = []  # every ref handed out
        self.fired: Counter[int] = Counter()  # mref -> Downs seen
        self.demonitored: set[int] = set()
        self.pids = list(POOL)  # every pid that ever lived

    # -- helpers --

    def live(self) -> list[Pid]:
        return [p for p in self.pids if p not in self.exits]

    def dead_target(self, data: Any) -> tuple[Pid, Any]:
        """A dead process and the exit the hub knows for it (NoProc for one never seen)."""
        pid = data.draw(st.sampled_from(sorted(self.exits) + GHOSTS))
        return pid, self.exits.get(pid, NoProc())

    def feed(self, event: Any) -> list[Any]:
        self.state, actions = decide(self.state, event)
        for a in actions:
            if isinstance(a, SendDown):
                self.fired[a.down.ref] += 1
                assert self.fired[a.down.ref] == 1, f"second Down for ref {a.down.ref}"
                assert a.down.ref not in self.demonitored, "Down after demonitor"
        return actions

    def has_live(self) -> bool:
        return bool(self.live())

    # -- rules --

    @precondition(lambda self: len(self.live()) < 4)
    @rule()
    def spawn(self) -> None:
        self.pids.append(Pid("n", len(self.pids) + 1))

    @precondition(has_live)
    @rule(data=st.data())
    def monitor_live(self, data: Any) -> None:
        watcher = data.draw(st.sampled_from(self.live()))
        target = data.draw(st.sampled_from(self.live()))
        actions = self.feed(Monitor(watcher, target, None))
        assert len(actions) == 1 and isinstance(actions[0], MonitorStarted)
        mref = actions[0].mref
        assert mref not in self.refs
        self.refs.append(mref)
        self.monitors[mref] = (watcher, target)

    @precondition(has_live)
    @rule(data=st.data())
    def monitor_dead(self, data: Any) -> None:
        watcher = data.draw(st.sampled_from(self.live()))
        target, reason = self.dead_target(data)
        actions = self.feed(Monitor(watcher, target, reason))
        assert len(actions) == 2 and isinstance(actions[0], MonitorStarted)
        mref = actions[0].mref
        assert mref not in self.refs
        self.refs.append(mref)
        assert actions[1] == SendDown(watcher, Down(mref, target, reason))

    @precondition(lambda self: self.has_live() and self.refs)
    @rule(data=st.data())
    def demonitor(self, data: Any) -> None:
        mref = data.draw(st.one_of(st.sampled_from(self.refs), st.integers(0, 100)))
        owner = self.monitors.get(mref, (None, None))[0]
        candidates = self.live() + ([owner] if owner in self.live() else [])
        watcher = data.draw(st.sampled_from(candidates))  # the owner twice as likely
        assert self.feed(Demonitor(watcher, mref)) == []
        if owner == watcher:
            del self.monitors[mref]
            self.demonitored.add(mref)

    @precondition(has_live)
    @rule(data=st.data())
    def link_live(self, data: Any) -> None:
        a = data.draw(st.sampled_from(self.live()))
        b = data.draw(st.sampled_from(self.live()))
        assert self.feed(Link(a, b, None)) == []
        if a != b:
            self.links.add(frozenset((a, b)))

    @precondition(has_live)
    @rule(data=st.data())
    def link_dead(self, data: Any) -> None:
        a = data.draw(st.sampled_from(self.live()))
        b, reason = self.dead_target(data)
        assert self.feed(Link(a, b, reason)) == [SendExit(a, Exit(b, NoProc()))]

    @precondition(has_live)
    @rule(data=st.data())
    def unlink(self, data: Any) -> None:
        a = data.draw(st.sampled_from(self.live()))
        b = data.draw(st.sampled_from(self.pids + GHOSTS))
        assert self.feed(Unlink(a, b)) == []
        self.links.discard(frozenset((a, b)))

    @precondition(has_live)
    @rule(data=st.data(), reason=REASONS)
    def process_exits(self, data: Any, reason: Any) -> None:
        pid = data.draw(st.sampled_from(self.live()))
        actions = self.feed(ProcessExited(pid, reason))
        self.exits[pid] = reason
        want: list[Any] = [SendDown(w, Down(mref, pid, reason))
                           for mref, (w, t) in self.monitors.items() if t == pid]
        want += [SendExit(other, Exit(pid, reason))
                 for pair in self.links if pid in pair for other in pair - {pid}]
        assert Counter(actions) == Counter(want)
        self.monitors = {m: (w, t) for m, (w, t) in self.monitors.items()
                         if pid not in (w, t)}
        self.links = {pair for pair in self.links if pid not in pair}

    # -- invariants --

    @invariant()
    def matches_the_model(self) -> None:
        assert self.state.monitors == self.monitors
        assert self.state.links == frozenset(self.links)

    @invariant()
    def nothing_mentions_the_dead(self) -> None:
        for watcher, target in self.state.monitors.values():
            assert watcher not in self.exits and target not in self.exits
        for pair in self.state.links:
            assert len(pair) == 2 and not pair & self.exits.keys()

    @invariant()
    def indexes_match(self) -> None:
        """``refs`` and ``partners`` index exactly the monitors and links (what makes an exit
        cost only the dead process's own monitors and links)."""
        refs: dict[Pid, set[int]] = {}
        for mref, (w, t) in self.state.monitors.items():
            refs.setdefault(w, set()).add(mref)
            refs.setdefault(t, set()).add(mref)
        partners: dict[Pid, set[Pid]] = {}
        for pair in self.state.links:
            a, b = tuple(pair)
            partners.setdefault(a, set()).add(b)
            partners.setdefault(b, set()).add(a)
        assert self.state.refs == refs and self.state.partners == partners

    @invariant()
    def refs_are_fresh(self) -> None:
        assert all(mref < self.state.next_ref for mref in self.refs)
        assert all(mref not in self.fired for mref in self.state.monitors)


TestLinksMachine = LinksMachine.TestCase
TestLinksMachine.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


def test_a_lost_node_fires_each_remote_monitor_and_link_once_also_after_a_heal() -> None:
    """What the distribution layer relies on: a node's loss is fed as each of its processes
    exiting with NoConnection; the real exit, arriving after the partition heals, finds
    nothing left to fire."""
    remote = Pid("m", 7)
    state, _ = decide(Links(), Monitor(A, remote, None))
    state, _ = decide(state, Link(B, remote, None))
    state, fired = decide(state, ProcessExited(remote, NoConnection()))
    assert fired == [SendDown(A, Down(1, remote, NoConnection())),
                     SendExit(B, Exit(remote, NoConnection()))]
    state, late = decide(state, ProcessExited(remote, BOOM))
    assert late == []
