"""The membership state machine (:mod:`prismatic.mesh._membership`): unit cases for each
rule, and hypothesis stateful runs of whole simulated clusters.

The simulation keeps a virtual clock and a network of per-node inboxes: it ticks every node
when ``next_wake`` says so and delivers every ``Send`` (in order per receiver, after a set
latency; nodes may start out of step, so their probe rounds do not line up), so it drives
the real ``decide`` through kills (the transport's signals: the link closes, reconnecting is
refused), restarts under the same name (a new, higher incarnation), graceful leaves and
pauses of up to 200 ms (a SIGSTOPped or CPU-starved node). Invariants after every step:
no node believes itself suspect or dead; a member's incarnation never goes down in anyone's
table; ``left`` is final for its incarnation; and a node that runs (paused at most 200 ms at
a time) is never declared dead at its current incarnation: no false declarations. Two
properties of the issue's targets, over random loss and pause times, start offsets and
latencies: a silently lost node is dead at every member within a second (the detector's
timeline bounds it), and a node paused for up to 300 ms (a 200 ms SIGSTOP plus time to be
scheduled again) is never declared dead.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from prismatic.mesh._events import (
    Changed, Count, DetectorConfig, Forgotten, Joined, JoinRequested, LeaveRequested, LinkDown,
    LinkRefused, MeshState, NameConflict, Received, Send, Tick,
)
from prismatic.mesh._membership import (
    decide, initial_state, next_wake, suspicion_timeout, table,
)
from prismatic.transports._mesh_frames import (
    Ack, Gossip, IndirectAck, Join, JoinNack, JoinReply, Leave, MemberState, Nack, Ping,
    PingReq, Sync, SyncReq, Update,
)

ALIVE, SUSPECT, DEAD, LEFT = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD,
                              MemberState.LEFT)
CFG = DetectorConfig()


def addr(i: int) -> str:
    return f"tcp://10.0.0.{i}:7000"


def node(i: int, inc: int = 1, seeds: tuple[str, ...] = (), now: float = 0.0) -> MeshState:
    return initial_state(f"n{i}", addr(i), inc, now, seeds, seed=i)


def sends(actions: list[Any], kind: type | None = None) -> list[Send]:
    return [a for a in actions if isinstance(a, Send) and (kind is None
                                                          or isinstance(a.frame, kind))]


def state_of(s: MeshState, name: str) -> MemberState | None:
    m = s.members.get(name)
    return m.state if m else None


def with_member(s: MeshState, i: int, inc: int = 1, now: float = 0.0) -> MeshState:
    s, _ = decide(s, Received(now, Gossip(f"n{i}", addr(i), inc)))
    return s


# ---- one rule at a time -----------------------------------------------------------------------

def test_a_suspicion_of_myself_is_refuted_with_a_higher_incarnation() -> None:
    s = with_member(node(1, inc=5), 2)
    s, actions = decide(s, Received(0.1, Ping("n2", addr(2), 1, 9, "n1",
                                              (Update("n1", addr(1), 5, SUSPECT, "n2"),))))
    assert s.me.inc == 6 and s.me.state is ALIVE
    assert Count("refutations") in actions
    acks = sends(actions, Ack)
    assert acks and Update("n1", addr(1), 6, ALIVE) in acks[0].frame.updates
    pushed = sends(actions, Gossip)
    assert pushed and pushed[0].frame.updates == (Update("n1", addr(1), 6, ALIVE),)


def test_a_higher_incarnation_clears_a_suspicion_and_a_lower_one_does_not() -> None:
    s = with_member(with_member(node(1), 2, inc=3), 3)
    s, acts = decide(s, Received(0.1, Gossip("n3", addr(3), 1,
                                             (Update("n2", addr(2), 3, SUSPECT, "n3"),))))
    assert state_of(s, "n2") is SUSPECT and Count("suspicions_raised") in acts
    s, _ = decide(s, Received(0.2, Gossip("n3", addr(3), 1, (Update("n2", addr(2), 3, ALIVE),))))
    assert state_of(s, "n2") is SUSPECT  # the same incarnation is no refutation
    s, acts = decide(s, Received(0.3, Gossip("n3", addr(3), 1,
                                             (Update("n2", addr(2), 4, ALIVE),))))
    assert state_of(s, "n2") is ALIVE and s.members["n2"].inc == 4
    assert Count("suspicions_refuted") in acts


def test_left_is_final_for_its_incarnation_and_a_new_one_rejoins() -> None:
    s = with_member(node(1), 2, inc=7)
    s, acts = decide(s, Received(0.1, Leave("n2", addr(2), 7)))
    assert state_of(s, "n2") is LEFT
    assert Changed("n2", addr(2), 7, ALIVE, LEFT) in acts
    for st_ in (ALIVE, SUSPECT, DEAD):
        s, _ = decide(s, Received(0.2, Gossip("n3", addr(3), 1,
                                              (Update("n2", addr(2), 7, st_, "n3"),))))
        assert state_of(s, "n2") is LEFT
    s, _ = decide(s, Received(0.3, Ping("n2", addr(2), 7, 1, "n1")))
    assert state_of(s, "n2") is LEFT
    s, acts = decide(s, Received(0.4, Join("n2", "tcp://10.0.0.2:7001", 8)))
    assert state_of(s, "n2") is ALIVE and s.members["n2"].inc == 8
    assert sends(acts, JoinReply)


def test_the_transport_signal_declares_dead_at_once_only_after_a_closed_link() -> None:
    s = with_member(node(1), 2)
    s, acts = decide(s, LinkRefused(0.1, addr(2)))
    assert state_of(s, "n2") is ALIVE  # a refusal without a closed link proves nothing
    s, acts = decide(s, LinkDown(0.1, addr(2)))
    assert state_of(s, "n2") is ALIVE and sends(acts, Ping)  # probed at once
    s, acts = decide(s, LinkRefused(0.105, addr(2)))
    assert state_of(s, "n2") is DEAD
    assert Changed("n2", addr(2), 1, ALIVE, DEAD) in acts


def test_a_link_that_comes_back_is_no_death() -> None:
    s = with_member(node(1), 2)
    s, _ = decide(s, LinkDown(0.1, addr(2)))
    s, _ = decide(s, Received(0.11, Ack("n2", addr(2), 1, 99)))
    s, _ = decide(s, LinkRefused(0.2, addr(2)))
    assert state_of(s, "n2") is ALIVE


def test_a_probe_without_any_answer_raises_a_suspicion_then_death() -> None:
    s = with_member(with_member(node(1), 2), 3)
    now, dead_at = 0.0, None
    while now < 10 and dead_at is None:
        now = next_wake(s)
        s, acts = decide(s, Tick(now))
        for a in sends(acts, PingReq):  # n3 helps, but n2 never answers: n3 nacks
            if a.addr == addr(3):
                pass
        if state_of(s, "n2") is DEAD:
            dead_at = now
        # n3 answers every ping so only n2 is ever suspected
        for a in sends(acts, Ping):
            if a.addr == addr(3):
                s, _ = decide(s, Received(now, Ack("n3", addr(3), 1, a.frame.seq)))
    assert dead_at is not None and state_of(s, "n3") is ALIVE
    # one suspector, no confirmation: Lifeguard's long timeout
    assert dead_at >= suspicion_timeout(CFG, 3, 0)


def test_a_suspicion_heard_is_checked_at_once_and_confirmed_to_everyone() -> None:
    s = with_member(with_member(with_member(node(1), 2), 3), 4)
    s, acts = decide(s, Received(0.01, Gossip("n3", addr(3), 1,
                                             (Update("n2", addr(2), 1, SUSPECT, "n3"),))))
    pings = sends(acts, Ping)
    assert [p.addr for p in pings] == [addr(2)]  # now, not when the round reaches n2
    assert pings[0].frame.updates[0] == Update("n2", addr(2), 1, SUSPECT, "n1")  # refute!
    deadline = s.checks[0].deadline
    assert deadline <= 0.01 + CFG.probe_interval
    acts = []
    while s.checks:
        s, more = decide(s, Tick(next_wake(s)))
        acts += more
    confirmed = Update("n2", addr(2), 1, SUSPECT, "n1")
    assert {a.addr for a in sends(acts, Gossip) if confirmed in a.frame.updates} \
        == {addr(2), addr(3), addr(4)}
    assert s.members["n2"].suspected_by == {"n1", "n3"}
    # answered in time: no confirmation (judged before this node's own probe round ends)
    s = with_member(with_member(with_member(node(1), 2), 3), 4)
    s, acts = decide(s, Received(0.01, Gossip("n3", addr(3), 1,
                                             (Update("n2", addr(2), 1, SUSPECT, "n3"),))))
    s, _ = decide(s, Received(0.03, Ack("n2", addr(2), 1, sends(acts, Ping)[0].frame.seq)))
    acts = []
    while next_wake(s) <= 0.01 + CFG.probe_interval:
        s, more = decide(s, Tick(next_wake(s)))
        acts += more
    assert not s.checks and s.members["n2"].suspected_by == {"n3"}
    assert not any(a.frame.updates[0].by == "n1" for a in sends(acts, Gossip))


def test_my_own_suspicion_is_pushed_to_every_member() -> None:
    s = with_member(with_member(with_member(node(1), 2), 3), 4)
    raised = None
    while raised is None and s.me.since < 5.0 and next_wake(s) < 5.0:
        s, acts = decide(s, Tick(next_wake(s)))
        if s.probe is not None and s.probe.target != "n2":  # everyone but n2 answers
            target = s.probe.target
            s, _ = decide(s, Received(s.probe.started, Ack(
                target, addr(int(target[1:])), 1, s.probe.seq)))
        raised = next((a for a in sends(acts, Gossip)
                       if a.frame.updates[0].state is SUSPECT), None)
    assert {a.addr for a in sends(acts, Gossip) if a.frame.updates[0].state is SUSPECT} \
        == {addr(2), addr(3), addr(4)}


def test_a_helper_nacks_before_the_requester_gives_up_and_still_relays_a_late_ack() -> None:
    s = with_member(with_member(node(1), 2), 3)
    s, acts = decide(s, Received(0.01, PingReq("n3", addr(3), 1, 7, "n2", addr(2))))
    seq = sends(acts, Ping)[0].frame.seq
    # the requester waits (interval - timeout) for indirect acks: the nack must come first
    assert next_wake(s) < 0.01 + CFG.probe_interval - CFG.probe_timeout
    s, acts = decide(s, Tick(next_wake(s)))
    assert [(a.addr, a.frame.seq) for a in sends(acts, Nack)] == [(addr(3), 7)]
    s, acts = decide(s, Received(0.07, Ack("n2", addr(2), 1, seq)))
    assert [(a.addr, a.frame.seq) for a in sends(acts, IndirectAck)] == [(addr(3), 7)]


def test_confirmations_shorten_the_suspicion() -> None:
    assert suspicion_timeout(CFG, 5, 0) > suspicion_timeout(CFG, 5, 1) \
        > suspicion_timeout(CFG, 5, 3) == suspicion_timeout(CFG, 5, 9)


def test_a_late_tick_restarts_the_probe_instead_of_judging() -> None:
    s = with_member(node(1), 2)
    s, acts = decide(s, Tick(next_wake(s)))
    assert sends(acts, Ping) and s.probe is not None
    s, acts = decide(s, Tick(s.probe.deadline + 0.5))  # we were stopped for half a second
    assert state_of(s, "n2") is ALIVE and s.health == 1 and s.probe is not None
    assert not sends(acts, PingReq)


def test_a_live_name_is_refused_and_the_refusal_becomes_fatal_after_the_grace() -> None:
    seed = with_member(node(1), 2, inc=1)
    seed, acts = decide(seed, Received(0.1, Join("n2", "tcp://10.0.0.9:7000", 2)))
    nack = sends(acts, JoinNack)
    assert nack and "taken by a live node at 10.0.0.2:7000" in nack[0].frame.reason
    assert seed.members["n2"].addr == addr(2)
    newcomer = initial_state("n2", "tcp://10.0.0.9:7000", 2, 0.0, (addr(1),))
    newcomer, _ = decide(newcomer, Received(0.1, nack[0].frame))
    newcomer, acts = decide(newcomer, Received(0.1 + CFG.name_claim_grace,
                                               nack[0].frame))
    assert any(isinstance(a, NameConflict) for a in acts)


def test_join_retries_back_off_until_a_seed_answers() -> None:
    s = node(1, seeds=(addr(2),))
    times = []
    now = 0.0
    for _ in range(6):
        now = next_wake(s)
        s, acts = decide(s, Tick(now))
        if sends(acts, Join):
            times.append(now)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]
    s, acts = decide(s, Received(now, JoinReply("n2", addr(2), 1, (
        Update("n2", addr(2), 1, ALIVE), Update("n3", addr(3), 1, ALIVE)))))
    assert not s.joining and Joined(addr(2)) in acts
    assert {a.addr for a in sends(acts, Gossip)} >= {addr(3)}  # announced to everyone


def test_a_join_asked_at_run_time_is_sent_at_once_and_idempotent() -> None:
    s = with_member(node(1), 2)
    s, acts = decide(s, JoinRequested(0.1, (addr(3), addr(3))))
    assert [a.addr for a in sends(acts, Join)] == [addr(3)] and s.joining
    s, acts = decide(s, JoinRequested(0.2, (addr(3),)))
    assert [a.addr for a in sends(acts, Join)] == [addr(3)]


def test_a_full_sync_does_not_overrule_what_i_saw_myself() -> None:
    s = with_member(node(1), 2, inc=3)
    s, acts = decide(s, Received(0.1, SyncReq("n3", addr(3), 1,
                                              (Update("n2", addr(2), 3, DEAD),))))
    assert state_of(s, "n2") is ALIVE
    s, _ = decide(s, Received(0.1, SyncReq("n3", addr(3), 1,
                                           (Update("n2", addr(2), 4, DEAD),))))
    assert state_of(s, "n2") is DEAD


def test_a_leaving_node_tells_everyone_and_never_probes_again() -> None:
    s = with_member(with_member(node(1), 2), 3)
    s, acts = decide(s, LeaveRequested(0.1))
    assert {a.addr for a in sends(acts, Leave)} == {addr(2), addr(3)}
    assert s.me.state is LEFT
    s, acts = decide(s, Tick(5.0))
    assert acts == []


# ---- whole clusters ---------------------------------------------------------------------------

class Cluster:
    """N simulated nodes on a virtual clock; delivery is reliable and in order, ``latency``
    seconds after the send; a paused node's frames wait in its inbox (as in its socket
    buffer). Node i > 0 starts ``starts[i - 1]`` seconds after node 0 (the seed), so their
    probe rounds need not line up."""

    def __init__(self, n: int, latency: float = 0.0, starts: list[float] | None = None) -> None:
        self.now = 0.0
        self.latency = latency
        self.nodes: dict[int, MeshState] = {}
        self.inbox: dict[str, list[tuple[float, Any]]] = {}
        self.running: dict[int, bool] = {}
        self.paused_until: dict[int, float] = {}
        self.incs: dict[int, int] = {}
        self.seen_inc: dict[tuple[int, str], int] = {}
        self.left_at: dict[tuple[int, str], int] = {}
        self.start(0, seeds=())
        for at, i in sorted((at, i) for i, at in enumerate(starts or [0.0] * (n - 1), 1)):
            self.settle(at - self.now)
            self.start(i, seeds=(addr(0),))
        self.settle(1.0)

    def start(self, i: int, seeds: tuple[str, ...]) -> None:
        self.incs[i] = self.incs.get(i, 0) + 1000
        self.nodes[i] = initial_state(f"n{i}", addr(i), self.incs[i], self.now, seeds,
                                      seed=i + self.incs[i])
        self.inbox[addr(i)] = []
        self.running[i] = True
        self.paused_until[i] = 0.0

    def active(self, i: int) -> bool:
        return self.running[i] and self.paused_until[i] <= self.now

    def feed(self, i: int, event: Any) -> None:
        self.nodes[i], actions = decide(self.nodes[i], event)
        for a in actions:
            if isinstance(a, Send) and a.addr in self.inbox:
                target = int(a.addr.rsplit(".", 1)[1].split(":")[0])
                if self.running[target]:
                    self.inbox[a.addr].append((self.now + self.latency, a.frame))

    def step(self) -> None:
        """Advance to the next wake-up of any active node; deliver until quiet."""
        active = [i for i in self.nodes if self.active(i)]
        resumes = [t for i, t in self.paused_until.items() if self.running[i] and t > self.now]
        arrivals = [box[0][0] for i in active if (box := self.inbox[addr(i)])
                    and box[0][0] > self.now]
        wakes = [next_wake(self.nodes[i]) for i in active] + resumes + arrivals
        self.now = max(self.now, min(wakes)) if wakes else self.now + 0.1
        self.deliver()
        for i in list(self.nodes):
            if self.active(i) and next_wake(self.nodes[i]) <= self.now:
                self.feed(i, Tick(self.now))
        self.deliver()

    def deliver(self) -> None:
        busy = True
        while busy:
            busy = False
            for i in list(self.nodes):
                box = self.inbox[addr(i)]
                if self.active(i) and box and box[0][0] <= self.now:
                    busy = True
                    _, item = box.pop(0)
                    if isinstance(item, (LinkDown, LinkRefused)):  # queued while paused
                        self.feed(i, type(item)(self.now, item.addr))
                    else:
                        self.feed(i, Received(self.now, item))

    def settle(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step()
            self.check()

    def kill(self, i: int) -> None:
        self.running[i] = False
        self.inbox[addr(i)] = []
        for j in self.nodes:  # the peers' kernels see the reset, then a refused reconnect
            if self.running[j]:
                self.inbox[addr(j)] += [(self.now, LinkDown(self.now, addr(i))),
                                        (self.now, LinkRefused(self.now, addr(i)))]
        self.deliver()

    def views(self, name: str, active_only: bool = False) -> list[MemberState | None]:
        return [state_of(self.nodes[j], name) for j in self.nodes
                if self.running[j] and self.nodes[j].me.name != name
                and (self.active(j) or not active_only)]

    def check(self) -> None:
        for i, s in self.nodes.items():
            assert s.me.state in (ALIVE, LEFT), f"n{i} believes itself {s.me.state}"
            for m in s.members.values():
                key = (i, m.name)
                assert m.inc >= self.seen_inc.get(key, 0), "an incarnation went down"
                self.seen_inc[key] = m.inc
                if key in self.left_at and self.left_at[key] == m.inc:
                    assert m.state is LEFT, f"n{i} revived {m.name} after it left"
                if m.state is LEFT:
                    self.left_at[key] = m.inc
            if not self.running[i]:
                continue
            for j, other in self.nodes.items():
                if j != i and self.running[j] and other.me.state is ALIVE:
                    m = other.members.get(f"n{i}")
                    if m is not None and m.inc == s.me.inc:
                        assert m.state is not DEAD, \
                            f"false positive: n{j} declared running n{i} dead at {self.now:.3f}"


SIM = settings(max_examples=25, stateful_step_count=15, deadline=None,
               suppress_health_check=list(HealthCheck))


class ClusterMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c = Cluster(4)

    @rule(dt=st.floats(0.05, 1.0))
    def wait(self, dt: float) -> None:
        self.c.settle(dt)

    @rule(i=st.integers(1, 3), pause=st.floats(0.01, 0.2))
    def pause(self, i: int, pause: float) -> None:
        if self.c.active(i):
            self.c.paused_until[i] = self.c.now + pause

    @precondition(lambda self: sum(self.c.running.values()) > 2)
    @rule(i=st.integers(1, 3))
    def kill(self, i: int) -> None:
        if self.c.running[i]:
            self.c.kill(i)
            self.c.deliver()
            views = self.c.views(f"n{i}", active_only=True)
            assert all(v in (DEAD, None) for v in views), views
            self.c.settle(0.25)  # a paused node resumes and reads its queued signals
            assert all(v in (DEAD, None) for v in self.c.views(f"n{i}")), self.c.views(f"n{i}")

    @rule(i=st.integers(1, 3))
    def restart(self, i: int) -> None:
        if not self.c.running[i]:
            self.c.start(i, seeds=(addr(0),))
            self.c.settle(2.0)
            assert all(v is ALIVE for v in self.c.views(f"n{i}")), self.c.views(f"n{i}")

    @rule(i=st.integers(1, 3))
    def leave(self, i: int) -> None:
        if self.c.active(i) and self.c.nodes[i].me.state is ALIVE:
            self.c.feed(i, LeaveRequested(self.c.now))
            self.c.deliver()
            self.c.running[i] = False
            views = self.c.views(f"n{i}", active_only=True)
            assert all(v is LEFT for v in views), views
            self.c.settle(0.25)
            assert all(v is LEFT for v in self.c.views(f"n{i}")), self.c.views(f"n{i}")

    @invariant()
    def formed(self) -> None:
        live = [i for i in self.c.nodes if self.c.running[i]]
        for i in live:
            for j in live:
                if i != j and self.c.paused_until[j] <= self.c.now - 3:
                    # everyone who runs and was not just paused is known alive or suspect
                    assert state_of(self.c.nodes[i], f"n{j}") in (ALIVE, SUSPECT, None)


TestCluster = ClusterMachine.TestCase
TestCluster.settings = SIM


def test_a_cluster_forms_and_stays_formed() -> None:
    c = Cluster(5)
    for i in c.nodes:
        assert [m.state for m in table(c.nodes[i])] == [ALIVE] * 5
    c.settle(5.0)
    for i in c.nodes:
        assert [m.state for m in table(c.nodes[i])] == [ALIVE] * 5


SILENT_LOSS_BOUND = 1.0  # the target, on top of which the real network adds little
TIMELINE = (4 * CFG.probe_interval  # worst phase: every member just probed it (N-1 periods)
            + CFG.probe_interval  # the probe that fails (direct, then indirect)
            + CFG.suspicion_min)  # suspected, checked and confirmed by all within a period
STARTS = st.lists(st.floats(0.0, 0.4), min_size=4, max_size=4)  # probe rounds out of step


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(victim=st.integers(0, 4), offset=st.floats(0.0, 1.0), starts=STARTS,
       latency=st.sampled_from([0.0, 0.001, 0.005]))
def test_a_silently_lost_node_is_dead_everywhere_within_a_second(
        victim: int, offset: float, starts: list[float], latency: float) -> None:
    c = Cluster(5, latency=latency, starts=starts)
    c.settle(offset)
    lost_at = c.now
    c.running[victim] = False  # no transport signal: a lost host, a pulled cable
    c.inbox[addr(victim)] = []
    while not all(v is DEAD for v in c.views(f"n{victim}")):
        c.step()
        assert c.now - lost_at <= TIMELINE + 10 * latency, c.views(f"n{victim}")
    assert TIMELINE + 10 * 0.005 < SILENT_LOSS_BOUND


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(victim=st.integers(0, 4), offset=st.floats(0.0, 1.0), starts=STARTS,
       pause=st.floats(0.01, 0.3), latency=st.sampled_from([0.0, 0.001, 0.005]))
def test_a_paused_node_is_never_declared_dead(victim: int, offset: float, starts: list[float],
                                               pause: float, latency: float) -> None:
    """A SIGSTOP of 200 ms, plus up to 100 ms to be scheduled again on a saturated host and
    read its backlog: suspected maybe, refuted always, never dead (``check`` runs after
    every step and fails on any declaration of a running node)."""
    c = Cluster(5, latency=latency, starts=starts)
    c.settle(offset)
    c.paused_until[victim] = c.now + pause
    c.settle(pause + 1.0)
    assert all(v is ALIVE for v in c.views(f"n{victim}")), c.views(f"n{victim}")


def test_state_round_trips_through_msgspec() -> None:
    c = Cluster(3)
    s = c.nodes[1]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(s), type=MeshState) == s


def test_a_node_that_left_comes_back_as_a_new_incarnation() -> None:
    s = with_member(node(1, inc=4), 2)
    s, _ = decide(s, LeaveRequested(0.1))
    s, acts = decide(s, JoinRequested(0.2, (addr(2),)))
    assert s.me.state is ALIVE and s.me.inc == 5 and sends(acts, Join)


# ---- forgetting members that went -----------------------------------------------------------

def test_members_that_went_are_forgotten_after_the_reap_time() -> None:
    """2,000 members join and leave: some time after, the table (sent whole by every sync)
    holds none of them; kept forever, it grew with every name ever seen."""
    s = node(0)
    for i in range(2000):
        name, where = f"m{i}", f"tcp://10.1.{i // 250}.{i % 250}:7000"
        s, _ = decide(s, Received(i * 0.001, Gossip(name, where, 5)))
        s, _ = decide(s, Received(i * 0.001, Leave(name, where, 5)))
    assert len(s.members) == 2000 and all(m.state is LEFT for m in s.members.values())
    for now in range(100, 3100, 100):
        s, _ = decide(s, Tick(float(now)))
    assert s.members == {}
    assert len(sends(decide(s, Tick(3100.0))[1], SyncReq)) == 0


def test_a_forgotten_member_is_told_it_is_dead_and_comes_back_by_a_new_incarnation() -> None:
    cfg = DetectorConfig(reap_after=10.0)
    s = initial_state("n1", addr(1), 1, 0.0, config=cfg)
    s = with_member(s, 2, inc=7)
    s, _ = decide(s, Received(0.1, Leave("n2", addr(2), 7)))
    s, acts = decide(s, Tick(10.2))
    assert "n2" not in s.members and [a for a in acts if isinstance(a, Forgotten)]
    for f in (Gossip("n3", addr(3), 1, (Update("n2", addr(2), 7, ALIVE),)),
              Sync("n3", addr(3), 1, (Update("n2", addr(2), 6, ALIVE),)),
              Ping("n2", addr(2), 7, 4, "n1")):
        s, acts = decide(s, Received(10.3, f))
        assert "n2" not in s.members  # a late rumour, or the old incarnation itself
    assert Update("n2", addr(2), 7, DEAD, "n1") in sends(acts, Ack)[0].frame.updates
    s, _ = decide(s, Received(10.4, Gossip("n2", addr(2), 8)))  # it refutes: news
    assert state_of(s, "n2") is ALIVE and s.members["n2"].inc == 8 and not s.forgotten


def test_the_reap_time_is_checked() -> None:
    with pytest.raises(ValueError, match="reap_after"):
        DetectorConfig(reap_after=0.0)


CHURN = st.lists(st.tuples(st.sampled_from(["join", "leave", "die", "stale", "tick"]),
                           st.integers(0, 3), st.floats(0.0, 25.0)), min_size=20, max_size=100)


@given(ops=CHURN)
@settings(max_examples=60, deadline=None)
def test_the_table_holds_the_live_and_the_recently_gone_and_no_ghosts(
        ops: list[tuple[str, int, float]]) -> None:
    """Over random joins (each a new, higher incarnation), leaves, deaths, late rumours of
    old incarnations and time: after every tick the table holds only live members and those
    gone within the reap time, and a forgotten member comes back (within its tombstone's
    time) only by a higher incarnation."""
    reap = 30.0
    s = initial_state("n0", addr(200), 1, 0.0, config=DetectorConfig(reap_after=reap))
    now, incs = 0.0, dict.fromkeys(range(4), 0)
    tombs: dict[str, tuple[int, float]] = {}
    for op, i, dt in ops:
        name, where = f"m{i}", f"tcp://10.2.0.{i}:7000"
        if op == "join":
            incs[i] += 1
            event: Any = Received(now, Join(name, where, incs[i]))
        elif op == "leave":
            event = Received(now, Leave(name, where, incs[i]))
        elif op == "die":
            event = Received(now, Gossip(name, where, incs[i],
                                         (Update(name, where, incs[i], DEAD, "x"),)))
        elif op == "stale":
            event = Received(now, Sync("x", "tcp://10.3.0.1:7000", 1,
                                       (Update(name, where, max(incs[i] - 1, 0), ALIVE),)))
        else:
            now += dt
            event = Tick(now)
        before = s
        s, actions = decide(s, event)
        for a in actions:
            if isinstance(a, Forgotten):
                tombs[a.name] = (before.members[a.name].inc, now + reap)
            elif isinstance(a, Changed) and a.old is None and a.name in tombs:
                inc, until = tombs.pop(a.name)
                assert now >= until or a.inc > inc, (a, inc, until)
        if isinstance(event, Tick):
            gone = [m for m in s.members.values() if m.state in (DEAD, LEFT)]
            assert all(now - m.since < reap for m in gone), (now, gone)
        assert not s.forgotten.keys() & s.members.keys()
        assert all(t.until <= now + reap for t in s.forgotten.values())


def test_two_sides_that_forgot_each_other_merge_again_by_a_join() -> None:
    """A partition longer than the reap time: each side forgot the other (tombstones, the
    incarnations unchanged). ``cluster join`` on one side merges them: the seed answers the
    forgotten joiner with its death, the joiner refutes to the seed, and so on."""
    cfg = DetectorConfig(reap_after=10.0)
    s = {i: initial_state(f"n{i}", addr(i), 1, 0.0, config=cfg) for i in (0, 1)}
    for i, j in ((0, 1), (1, 0)):
        s[i] = with_member(s[i], j)
        s[i], _ = decide(s[i], Received(0.1, Gossip("n9", addr(9), 1,
                                                    (Update(f"n{j}", addr(j), 1, DEAD),))))
        s[i], _ = decide(s[i], Tick(10.2))
        assert f"n{j}" in s[i].forgotten and f"n{j}" not in s[i].members
    s[1], acts = decide(s[1], JoinRequested(10.3, (addr(0),)))
    queue = [(a.addr, a.frame) for a in sends(acts)]
    now = 10.3
    for _ in range(200):
        now += 0.01
        to, frame = queue.pop(0) if queue else ("", None)
        for i in (0, 1):
            event: Any = Received(now, frame) if to == addr(i) else Tick(now)
            if to == addr(i) or now >= next_wake(s[i]):
                s[i], acts = decide(s[i], event)
                queue += [(a.addr, a.frame) for a in sends(acts) if a.addr in (addr(0),
                                                                               addr(1))]
    assert state_of(s[0], "n1") is ALIVE and state_of(s[1], "n0") is ALIVE
