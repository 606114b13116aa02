"""The vocabulary of the membership state machine: its state, what goes in, what comes out.

``decide(state, event) -> (state, actions)`` (:mod:`._membership`) consumes the *events*
below and returns *actions* for the mesh loop (:mod:`._loop`) to carry out. Times are the
node's monotonic clock in float seconds, carried by every event (``now``), so the machine
never reads a clock and a test can drive it through any schedule.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..transports._mesh_frames import MemberState, MeshFrame, Update

__all__ = [
    "MemberState", "Update", "DetectorConfig", "Member", "Probe", "Relay", "Check", "Rumor",
    "Tombstone", "MeshState", "Tick", "Received", "LinkDown", "LinkRefused", "JoinRequested",
    "LeaveRequested", "Send", "Changed", "Forgotten", "Count", "Joined", "NameConflict", "Event",
    "Action",
]


class DetectorConfig(msgspec.Struct, frozen=True):
    """The failure detector's parameters (defaults: a LAN cluster that notices a silently
    lost node within about a second; see docs/cluster.md for the arithmetic)."""

    probe_interval: float = 0.1  # one probe per member per interval (SWIM's protocol period)
    probe_timeout: float = 0.06  # direct ack deadline; then k indirect probes
    indirect_probes: int = 3  # SWIM's k
    suspicion_alpha: float = 3.0  # min suspicion = alpha * log10(N) * interval (memberlist)
    # Never shorter: a suspicion starts at least a probe period into a pause, so a node
    # stopped for 200 ms resumes with 0.3 s left to refute (docs/cluster.md's arithmetic).
    suspicion_min: float = 0.4
    suspicion_beta: float = 6.0  # max suspicion = beta * min (Lifeguard: with no confirmation)
    retransmit_mult: int = 4  # each rumour rides on retransmit_mult * ceil(log10(N+1)) frames
    sync_interval: float = 1.0  # full push-pull state sync with one random member
    max_health: int = 8  # Lifeguard's local health multiplier caps here
    lag_limit: float = 0.1  # a tick this late means this node was not running (stopped, starved)
    join_backoff_min: float = 0.05
    join_backoff_max: float = 2.0
    name_claim_grace: float = 3.0  # keep asking while a seed says our name is live, then give up
    # A dead or left member's row is dropped this long after it went (memberlist's
    # GossipToTheDeadTime), so the table (sent whole by every sync) holds the live members
    # and the recently gone, not every name ever seen. Its name and incarnation are kept
    # as long again (a Tombstone, never sent), so a late rumour of that incarnation does
    # not bring it back. A partition longer than this is no longer healed by the sync.
    reap_after: float = 600.0

    def __post_init__(self) -> None:
        if not self.reap_after >= self.sync_interval:
            raise ValueError(f"DetectorConfig.reap_after={self.reap_after!r}: expected at "
                             f"least sync_interval ({self.sync_interval} s)")


class Member(msgspec.Struct, frozen=True):
    """One row of the member table as this node sees it. ``since`` is when ``state`` began
    (local monotonic); ``rtt`` the last direct probe's round trip."""

    name: str
    addr: str
    inc: int
    state: MemberState
    since: float
    suspected_by: frozenset[str] = frozenset()
    suspect_deadline: float = 0.0
    rtt: float | None = None
    link_lost: bool = False  # the transport saw the connection close; a refusal confirms

    def update(self, by: str = "") -> Update:
        return Update(self.name, self.addr, self.inc, self.state, by)


class Probe(msgspec.Struct, frozen=True):
    """The probe in flight: direct until ``direct_deadline``, then indirect until
    ``deadline``; ``nacks_expected`` helpers were asked, ``nacks`` answered."""

    target: str
    seq: int
    started: float
    direct_deadline: float
    deadline: float
    indirect: bool = False
    nacks_expected: int = 0
    nacks: int = 0


class Relay(msgspec.Struct, frozen=True):
    """An indirect probe this node runs for ``requester``: our ping ``seq`` to ``target``.
    At ``deadline`` a nack goes back (before the requester's own deadline, so it hears
    that its helper is alive); after that, ``nacked``, a late ack is still relayed until
    the second deadline."""

    seq: int
    requester: str
    requester_addr: str
    orig_seq: int
    target: str
    deadline: float
    nacked: bool = False


class Check(msgspec.Struct, frozen=True):
    """Our own direct ping ``seq`` to ``target``, suspected at incarnation ``inc`` by
    another member: no ack by ``deadline`` and this node confirms the suspicion."""

    target: str
    inc: int
    seq: int
    deadline: float


class Rumor(msgspec.Struct, frozen=True):
    """An update still being piggybacked; ``left`` transmissions to go."""

    update: Update
    left: int


class Tombstone(msgspec.Struct, frozen=True):
    """A member forgotten (its row reaped ``reap_after`` after it went): what it was, and
    until when an update at that incarnation or older is ignored rather than news."""

    addr: str
    inc: int
    until: float


class MeshState(msgspec.Struct, frozen=True):
    config: DetectorConfig
    me: Member
    members: dict[str, Member]  # the other nodes alive, or gone within reap_after; never
    # mutated in place
    seeds: tuple[str, ...] = ()
    joining: bool = False  # still asking the seeds to let us in
    join_attempts: int = 0
    next_join_at: float = 0.0
    refused_since: float | None = None  # a seed says a live node has our name
    probe: Probe | None = None
    next_probe_at: float = 0.0
    order: tuple[str, ...] = ()  # round-robin probe order, reshuffled each round
    seq: int = 0
    relays: tuple[Relay, ...] = ()
    checks: tuple[Check, ...] = ()
    rumors: tuple[Rumor, ...] = ()
    health: int = 0  # Lifeguard's local health multiplier: 0 healthy, larger = slower timeouts
    next_sync_at: float = 0.0
    rng: int = 1
    forgotten: dict[str, Tombstone] = {}  # members reaped within reap_after; never mutated


# ---- events (all carry ``now``) -----------------------------------------------------------


class Tick(msgspec.Struct, frozen=True):
    now: float


class Received(msgspec.Struct, frozen=True):
    now: float
    frame: MeshFrame


class LinkDown(msgspec.Struct, frozen=True):
    """The transport saw our connection to ``addr`` close (the peer's socket went away)."""

    now: float
    addr: str


class LinkRefused(msgspec.Struct, frozen=True):
    """Connecting to ``addr`` again failed: nobody listens there any more (refused, or the
    listener closed with the connection unaccepted)."""

    now: float
    addr: str


class JoinRequested(msgspec.Struct, frozen=True):
    now: float
    seeds: tuple[str, ...]


class LeaveRequested(msgspec.Struct, frozen=True):
    now: float


Event = Tick | Received | LinkDown | LinkRefused | JoinRequested | LeaveRequested


# ---- actions --------------------------------------------------------------------------------


class Send(msgspec.Struct, frozen=True):
    addr: str
    frame: Any  # a MeshFrame


class Changed(msgspec.Struct, frozen=True):
    """A member's state changed in this node's table (``old`` None: first heard of)."""

    name: str
    addr: str
    inc: int
    old: MemberState | None
    new: MemberState


class Forgotten(msgspec.Struct, frozen=True):
    """A dead or left member's row was reaped (``reap_after`` after it went)."""

    name: str
    addr: str


class Count(msgspec.Struct, frozen=True):
    """Bump a counter: probes_sent, probes_failed, indirect_probes, suspicions_raised,
    suspicions_refuted, refutations (suspicions of this node it refuted)."""

    what: str


class Joined(msgspec.Struct, frozen=True):
    seed: str  # who let us in


class NameConflict(msgspec.Struct, frozen=True):
    """Seeds kept saying a live node has our name for longer than the grace: give up."""

    reason: str


Action = Send | Changed | Forgotten | Count | Joined | NameConflict
