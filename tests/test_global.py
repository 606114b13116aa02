"""The global registry's state machine (:mod:`prismatic.mesh._global`): unit cases, and
hypothesis stateful runs of a simulated cluster.

The simulation keeps, per node, the real ``decide``'s state; per ordered pair of nodes, a
FIFO of frames in flight (a ZeroMQ link keeps order, and keeps frames queued across a
partition, or loses them); the truth about which nodes run and which can reach which (kills,
restarts under the same name as a new incarnation, partitions into groups); and each node's
membership view, brought up to date with that truth one node at a time (views disagree for a
while, as in the real mesh). Every local process remembers which names it was told it holds
(``ok``), and forgets one on ``unregister``'s ok or on a ``Notify``.

Checked at every step: a ``Notify`` reaches only a process that believes it holds that name
(so each loser is told exactly once). After a heal and quiescence (every view up to date,
every frame delivered, time past a sync and every timeout): every node's table is the same,
each name has exactly one holder, a live process of a running node; and every process
believes it holds exactly the names the table gives it (nobody is left thinking it holds a
name it lost). Names of dead processes and of killed nodes are gone.
"""

from __future__ import annotations

import collections
from typing import Any

from hypothesis import Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from prismatic._address import Pid
from prismatic.mesh._global import (
    CLAIM_TIMEOUT_S, RESERVE_S, SYNC_S, Count, GlobalState, NodeDown, NodeUp, Notify,
    Reg, ProcessExited, Received, Register, Reply, SendTo, Tick, Unregister, beats, decide,
    initial_state, leader, whereis,
)
from prismatic.transports._global_frames import (
    GlobalAdd, GlobalReg, GlobalRemove, GlobalSync, GlobalVerdict,
)
from prismatic.transports._mesh_frames import decode_mesh_frame, encode_mesh_frame

NODES = ("n0", "n1", "n2", "n3")
NAMES = ("a", "b", "c")


def addr(node: str) -> str:
    return f"tcp://{node}:1"


# ---- unit cases ---------------------------------------------------------------------------------


def test_alone_a_node_registers_at_once_and_frees_on_exit() -> None:
    s = initial_state("n0", addr("n0"), 0.0)
    p = Pid("n0", 10)
    s, acts = decide(s, Register(0.0, 1, "x", p, 100))
    assert acts == [Reply(1)] and whereis(s, "x") == p
    s, acts = decide(s, Register(0.0, 2, "x", Pid("n0", 11), 101))
    assert isinstance(acts[0], Reply) and acts[0].error == "already_registered"
    assert acts[0].holder == p
    s, acts = decide(s, ProcessExited(0.1, p))
    assert whereis(s, "x") is None


def test_the_older_registration_wins_then_the_smaller_node() -> None:
    a, b = Reg("x", Pid("n1", 1), "n1", 5), Reg("x", Pid("n0", 1), "n0", 6)
    assert beats(a, b) and not beats(b, a)
    c = Reg("x", Pid("n0", 2), "n0", 5)
    assert beats(c, a)  # a tie on the stamp: the smaller node name


def test_a_heal_notifies_the_loser_once_and_tells_everyone() -> None:
    s = initial_state("n0", addr("n0"), 0.0)
    s, _ = decide(s, Register(0.0, 1, "x", Pid("n0", 1), 200))  # alone: committed
    s, acts = decide(s, NodeUp(0.0, "n1", 1))
    assert [type(a.frame) for a in acts if isinstance(a, SendTo)] == [GlobalSync]
    older = GlobalReg("x", Pid("n1", 7), 100)
    s, acts = decide(s, Received(0.0, GlobalSync("n1", addr("n1"), (older,), reply=True)))
    assert whereis(s, "x") == Pid("n1", 7)
    assert [a for a in acts if isinstance(a, Notify)] == [Notify(Pid("n0", 1), "x",
                                                                 Pid("n1", 7))]
    # The same registration again (a periodic sync) notifies nobody a second time.
    s, acts = decide(s, Received(0.0, GlobalSync("n1", addr("n1"), (older,))))
    assert not [a for a in acts if isinstance(a, Notify)]


def test_frames_from_a_member_believed_gone_are_dropped() -> None:
    s = initial_state("n0", addr("n0"), 0.0)
    s, acts = decide(s, Received(0.0, GlobalAdd("n9", addr("n9"),
                                                GlobalReg("x", Pid("n9", 1), 1))))
    assert whereis(s, "x") is None and acts == [Count("stale_frames")]


def test_frames_round_trip_through_the_mesh_union() -> None:
    f = GlobalSync("n1", addr("n1"), (GlobalReg("x", Pid("n1", 7), 100),), True)
    assert decode_mesh_frame(encode_mesh_frame(f)) == (f, "")


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_concurrent_claims_in_one_view_exactly_one_wins(rnd: Any) -> None:
    """Three nodes that agree on who is alive each register "x" at once; the frames arrive
    in any order: exactly one registrant is answered ok, the others ``already_registered``."""
    nodes = ["n0", "n1", "n2"]
    states = {n: initial_state(n, addr(n), 0.0) for n in nodes}
    for n in nodes:
        for m in nodes:
            if m != n:
                states[n], _ = decide(states[n], NodeUp(0.0, m, 1))
    queue: list[tuple[str, Any]] = []
    replies: dict[str, Reply] = {}

    def run(n: str, event: Any) -> None:
        states[n], acts = decide(states[n], event)
        for a in acts:
            if isinstance(a, SendTo):
                queue.append((a.node, a.frame))
            elif isinstance(a, Reply):
                replies[n] = a
    for i, n in enumerate(rnd.sample(nodes, 3)):
        run(n, Register(0.0, 1, "x", Pid(n, 1), 1000 + i))
    while queue:
        to, frame = queue.pop(rnd.randrange(len(queue)))
        run(to, Received(0.0, frame))
    assert sorted(r.error or "ok" for r in replies.values()) == [
        "already_registered", "already_registered", "ok"]
    winner = next(Pid(n, 1) for n, r in replies.items() if r.error is None)
    assert all(whereis(s, "x") == winner for s in states.values())


def _three_nodes_and_a_name_led_by_n1_then_n2() -> tuple[GlobalState, str]:
    """n0's state with n1 and n2 up, and a name whose leader is n1, then n2 once n1 is gone."""
    s = initial_state("n0", addr("n0"), 0.0)
    for m in ("n1", "n2"):
        s, _ = decide(s, NodeUp(0.0, m, 1))
    name = next(n for n in (f"x{i}" for i in range(100))
                if leader(n, ["n0", "n1", "n2"]) == "n1"
                and leader(n, ["n0", "n2"]) == "n2")
    return s, name


def test_a_claim_goes_to_the_new_leader_when_its_leader_dies_and_times_out() -> None:
    s, name = _three_nodes_and_a_name_led_by_n1_then_n2()
    s, acts = decide(s, Register(0.0, 1, name, Pid("n0", 1), 5))
    assert [a.node for a in acts if isinstance(a, SendTo)] == ["n1"]
    s, acts = decide(s, NodeDown(0.1, "n1"))
    assert [a.node for a in acts if isinstance(a, SendTo)] == ["n2"]
    s, acts = decide(s, Tick(0.1 + CLAIM_TIMEOUT_S))
    assert [a.error for a in acts if isinstance(a, Reply)] == ["no_answer"]
    assert not s.claims and whereis(s, name) is None


def test_only_the_claims_current_leader_decides_it() -> None:
    """A claim re-sent to a new leader (its first leader was declared dead) is decided by
    that leader alone: the first one's grant, late (it came back as a new incarnation),
    must not commit the name that the current leader gives to another process, and the
    grant's reservation on that node is released."""
    s, name = _three_nodes_and_a_name_led_by_n1_then_n2()
    mine, theirs = Pid("n0", 1), Pid("n2", 9)
    s, _ = decide(s, Register(0.0, 1, name, mine, 5))
    s, _ = decide(s, NodeDown(0.1, "n1"))  # the claim goes to n2
    s, _ = decide(s, NodeUp(0.2, "n1", 2))  # n1 was alive after all
    s, acts = decide(s, Received(0.3, GlobalVerdict("n1", addr("n1"), 1, name, mine, True,
                                                     None)))
    assert whereis(s, name) is None and 1 in s.claims  # still waiting for n2
    assert not [a for a in acts if isinstance(a, Reply)] and Count("stale_frames") in acts
    assert [(a.node, type(a.frame)) for a in acts if isinstance(a, SendTo)] == [
        ("n1", GlobalRemove)]
    s, acts = decide(s, Received(0.4, GlobalVerdict("n2", addr("n2"), 1, name, mine, False,
                                                     theirs)))
    assert [a.error for a in acts if isinstance(a, Reply)] == ["already_registered"]
    assert whereis(s, name) is None and not s.claims


def test_a_new_incarnation_drops_the_old_ones_names() -> None:
    s = initial_state("n0", addr("n0"), 0.0)
    s, _ = decide(s, NodeUp(0.0, "n1", 1))
    s, _ = decide(s, Received(0.0, GlobalAdd("n1", addr("n1"),
                                              GlobalReg("x", Pid("n1", 7), 1))))
    assert whereis(s, "x") == Pid("n1", 7)
    s, acts = decide(s, NodeUp(1.0, "n1", 2))  # restarted before anyone declared it dead
    assert whereis(s, "x") is None
    assert [type(a.frame) for a in acts if isinstance(a, SendTo)] == [GlobalSync]


def test_the_leader_is_the_same_for_every_view_order() -> None:
    assert leader("x", ["n0", "n1", "n2"]) == leader("x", ["n2", "n0", "n1"])


# ---- the simulated cluster ----------------------------------------------------------------------


class GlobalCluster(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.inc = {n: 1 for n in NODES}
        self.up = {n: True for n in NODES}
        self.group = {n: 0 for n in NODES}
        self.states: dict[str, GlobalState] = {
            n: initial_state(n, addr(n), 0.0) for n in NODES}
        self.wires: dict[tuple[str, str], collections.deque[Any]] = collections.defaultdict(
            collections.deque)
        self.procs: dict[str, list[Pid]] = {n: [] for n in NODES}
        self.serial = 0
        self.ref = 0
        self.stamp = 0
        self.asked: dict[tuple[str, int], tuple[str, Pid, str]] = {}  # ref -> op, pid, name
        self.believes: dict[Pid, set[str]] = {}
        for n in NODES:
            self.refresh(n)

    # ---- the machinery ----

    def connected(self, a: str, b: str) -> bool:
        return self.up[a] and self.up[b] and self.group[a] == self.group[b]

    def run(self, node: str, ev: Any) -> None:
        self.states[node], actions = decide(self.states[node], ev)
        for a in actions:
            if isinstance(a, SendTo):
                assert a.node != node
                self.wires[(node, a.node)].append(a.frame)
            elif isinstance(a, Reply):
                op, pid, name = self.asked.pop((node, a.ref))
                if a.error is None and pid in self.believes:
                    if op == "register":
                        self.believes[pid].add(name)
                    else:
                        self.believes[pid].discard(name)
            elif isinstance(a, Notify):
                # Exactly once: only a process that believes it holds the name is told.
                assert a.name in self.believes.get(a.pid, set()), (a, self.believes)
                self.believes[a.pid].discard(a.name)
                assert a.winner != a.pid
                event("a loser notified")

    def refresh(self, node: str) -> None:
        """Bring ``node``'s membership view up to date with the truth."""
        if not self.up[node]:
            return
        view = self.states[node].alive
        truth = {m: self.inc[m] for m in NODES if m != node and self.connected(node, m)}
        for m in sorted(view):
            if m not in truth:
                self.run(node, NodeDown(self.now, m))
        for m, inc in sorted(truth.items()):
            if view.get(m) != inc:
                self.run(node, NodeUp(self.now, m, inc))

    def deliver(self, src: str, dst: str) -> None:
        frame = self.wires[(src, dst)].popleft()
        frame = decode_mesh_frame(encode_mesh_frame(frame))[0]  # the wire, for real
        self.run(dst, Received(self.now, frame))

    def deliverable(self) -> list[tuple[str, str]]:
        return [k for k, q in self.wires.items() if q and self.connected(*k)]

    def live_pids(self, node: str) -> list[Pid]:
        return self.procs[node]

    # ---- rules ----

    @rule(node=st.sampled_from(NODES), name=st.sampled_from(NAMES), new=st.booleans(),
          i=st.integers(0, 3))
    def register(self, node: str, name: str, new: bool, i: int) -> None:
        if not self.up[node]:
            return
        if new or not self.procs[node]:
            self.serial += 1
            pid = Pid(node, self.serial)
            self.procs[node].append(pid)
            self.believes[pid] = set()
        else:
            pid = self.procs[node][i % len(self.procs[node])]
        self.ref += 1
        self.stamp += 1
        self.asked[(node, self.ref)] = ("register", pid, name)
        self.run(node, Register(self.now, self.ref, name, pid, self.stamp))

    @rule(node=st.sampled_from(NODES), i=st.integers(0, 3), name=st.sampled_from(NAMES))
    def unregister(self, node: str, i: int, name: str) -> None:
        if not self.up[node] or not self.procs[node]:
            return
        pid = self.procs[node][i % len(self.procs[node])]
        self.ref += 1
        self.asked[(node, self.ref)] = ("unregister", pid, name)
        self.run(node, Unregister(self.now, self.ref, name, pid))

    @rule(node=st.sampled_from(NODES), i=st.integers(0, 3))
    def process_exits(self, node: str, i: int) -> None:
        if not self.up[node] or not self.procs[node]:
            return
        pid = self.procs[node].pop(i % len(self.procs[node]))
        del self.believes[pid]
        self.run(node, ProcessExited(self.now, pid))
        # A dead process awaits no answer: what it asked is dropped unanswered.
        self.asked = {k: v for k, v in self.asked.items() if v[1] != pid}

    @rule(data=st.data())
    def deliver_one(self, data: st.DataObject) -> None:
        ready = self.deliverable()
        if ready:
            self.deliver(*data.draw(st.sampled_from(sorted(ready))))

    @rule(data=st.data())
    def lose_one(self, data: st.DataObject) -> None:
        queued = sorted(k for k, q in self.wires.items() if q)
        if queued:
            self.wires[data.draw(st.sampled_from(queued))].popleft()

    @rule(node=st.sampled_from(NODES))
    def view_catches_up(self, node: str) -> None:
        self.refresh(node)

    @rule(groups=st.lists(st.integers(0, 1), min_size=len(NODES), max_size=len(NODES)),
          seen=st.booleans())
    def partition(self, groups: list[int], seen: bool) -> None:
        self.group = dict(zip(NODES, groups, strict=True))
        if seen:  # every view catches up at once (else one by one, later)
            for n in NODES:
                self.refresh(n)

    @rule(groups=st.lists(st.integers(0, 1), min_size=len(NODES), max_size=len(NODES)),
          name=st.sampled_from(NAMES), data=st.data())
    def split_brain(self, groups: list[int], name: str, data: st.DataObject) -> None:
        """A partition everyone notices at once, and the same name registered on each
        side (what the heal must resolve)."""
        self.partition(groups, True)
        for side in (0, 1):
            members = [n for n in NODES if self.group[n] == side and self.up[n]]
            if members:
                self.register(data.draw(st.sampled_from(members)), name, True, 0)
                self.drain()

    @rule(node=st.sampled_from(NODES))
    def kill(self, node: str) -> None:
        if sum(self.up.values()) <= 1 or not self.up[node]:
            return
        self.up[node] = False
        for pid in self.procs[node]:
            del self.believes[pid]
        self.procs[node] = []
        for key in list(self.wires):
            if node in key:
                self.wires[key].clear()  # its sockets died with it
        self.asked = {k: v for k, v in self.asked.items() if k[0] != node}

    @rule(node=st.sampled_from(NODES))
    def restart(self, node: str) -> None:
        if self.up[node]:
            return
        self.up[node] = True
        self.inc[node] += 1
        self.states[node] = initial_state(node, addr(node), self.now)
        self.refresh(node)

    @rule(dt=st.sampled_from([0.05, 0.5, SYNC_S]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        for n in NODES:
            if self.up[n]:
                self.run(n, Tick(self.now))

    @rule()
    def heal_and_settle(self) -> None:
        self.group = {n: 0 for n in NODES}
        for _ in range(3):  # views, every frame, time past a sync and every timeout
            for n in NODES:
                self.refresh(n)
            self.drain()
            self.now += max(SYNC_S, CLAIM_TIMEOUT_S, RESERVE_S) + 0.01
            for n in NODES:
                if self.up[n]:
                    self.run(n, Tick(self.now))
            self.drain()
        self.check_settled()

    def drain(self) -> None:
        for _ in range(10_000):
            ready = self.deliverable()
            if not ready:
                return
            for k in ready:
                self.deliver(*k)
        raise AssertionError("frames never stopped flowing")

    def check_settled(self) -> None:
        running = [n for n in NODES if self.up[n]]
        tables = {n: {k: (r.pid, r.node) for k, r in self.states[n].table.items()}
                  for n in running}
        first = tables[running[0]]
        for n in running:
            assert tables[n] == first, (n, tables)
            assert not self.states[n].claims
        live = {p for n in running for p in self.procs[n]}
        for name, (pid, owner) in first.items():
            assert pid in live and pid.node == owner, (name, pid)
        for pid in live:
            held = {name for name, (p, _) in first.items() if p == pid}
            assert self.believes[pid] == held, (pid, self.believes[pid], held)
        assert not self.asked

    @invariant()
    def a_node_holds_each_name_once(self) -> None:
        for n in NODES:
            if self.up[n]:
                for name, reg in self.states[n].table.items():
                    assert reg.name == name


# No shrink phase: a found failure is printed as generated (shrinking it outlasts the
# timeout); about half the runs resolve at least one heal's conflict.
GlobalCluster.TestCase.settings = settings(
    max_examples=70, stateful_step_count=50, deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target])
TestGlobalCluster = GlobalCluster.TestCase
