"""The failure detector and membership protocol as a pure state machine: ``decide``.

SWIM (Das, Gupta, Motivala 2002) with the Lifeguard refinements (Dadgar et al. 2018, as in
hashicorp/memberlist), plus the one signal SWIM does without: the transport's.

* **Probes.** Each protocol period this node pings one member (round robin over the members
  by name, starting after itself: each member is probed by every other within ``N - 1``
  periods). No ack within ``probe_timeout``: it asks ``k`` other members to ping the target for
  it (``ping_req``) and pings again itself. No ack (direct or relayed) by the period's end: the
  target becomes *suspect*.
* **Suspicion and incarnations.** A suspicion names the target's incarnation. The target, on
  hearing it, refutes by raising its incarnation and announcing itself alive; a higher
  incarnation always wins. A suspicion not refuted in time becomes *dead*. The time is
  Lifeguard's: ``min = max(alpha * log10(N) * interval, suspicion_min)``, starting at ``beta *
  min`` and shrinking towards ``min`` as independent members confirm the suspicion (``log(C+1)
  / log(K+1)``), so a node that only one member suspects (maybe that member is the slow one)
  gets the long timeout, one that everyone suspects the short one.
* **Local health awareness** (Lifeguard). A multiplier ``health`` grows when this node has
  evidence that *it* is the slow one: a tick that came far too late (the process was stopped or
  starved of CPU: its probes' timeouts expired while it was not running, so they are not judged
  but restarted, and running suspicion timers are pushed back by the lag), a missing nack from
  a helper, a suspicion of itself it had to refute. It shrinks with every successful probe.
  Probe timeouts and intervals are stretched by ``1 + health``.
* **The transport's signal.** When the connection to a member closes (the peer's process died
  and its kernel reset the connection), the loop reports ``LinkDown``: the member is pinged at
  once, and when connecting again is *refused* (nothing listens there any more, or the
  listener closed with our connection unaccepted: ``LinkRefused``; :mod:`._knock`), that
  failed probe confirms it: dead at once, no timeout. A stopped or partitioned process
  resets no connection, so this path never fires for them.
* **Confirmations.** A suspicion is pushed to every member at once, and a member that hears
  of one pings the suspect at once itself (a *check*, beside its probe round): no ack within
  a probe period and it confirms the suspicion, pushed to every member too. So the
  independent confirmations that bring the timeout to its minimum arrive within about one
  period, and a silently lost node is dead everywhere about ``interval + suspicion_min``
  after the first probe it missed (docs/cluster.md has the timeline).
* **Dissemination.** Every change is a *rumour* piggybacked on the next frames
  (``retransmit_mult * ceil(log10(N+1))`` times each); a frame to a member we think suspect or
  dead leads with that belief, so the member can refute it. Joins, suspicions, confirmations,
  refutations and declarations of death are also pushed to every member at once (``gossip``),
  and every ``sync_interval`` this node swaps its whole table with one random live member and
  one dead one (``sync_req``/``sync``): what gossip lost is healed, and a healed partition
  merges.
* **States.** ``alive`` / ``suspect`` / ``dead`` / ``left``. For updates about another member:
  ``alive`` needs a higher incarnation than known; ``suspect`` applies over ``alive`` at the
  same or a higher incarnation; ``dead`` over ``alive``/``suspect`` at the same or higher;
  ``left`` over anything but ``left`` at the same or higher, and is final for that incarnation.
  A full sync applies ``suspect``/``dead`` only for a newer incarnation (hearsay from a table
  does not overrule what this node saw itself). This node never believes itself suspect or
  dead: it refutes.
* **Forgetting.** A ``dead`` or ``left`` member's row is dropped ``reap_after`` (default ten
  minutes) after it went, so the table, which every sync sends whole, does not grow with
  every name ever seen. A tombstone (name, address, incarnation; never sent) stays as long
  again: an update at that incarnation or older is a late rumour and ignored, a higher one
  (a restart, a refutation: a frame from the forgotten member leads with its death) is news.
* **Joining.** A newcomer sends ``join`` to its seeds (retried with backoff until one answers).
  A seed refuses a name held by a live member at another address and incarnation
  (``join_nack``); otherwise it answers with its whole table and announces the newcomer to
  every member; the newcomer announces itself to every member it learned. Incarnations start at
  the node's start time in milliseconds, so a restarted node (same name) always outranks its
  dead predecessor and rejoins as a new incarnation.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..transports._mesh_frames import (
    Ack, Gossip, IndirectAck, Join, JoinNack, JoinReply, Leave, Nack, Ping, PingReq, Sync, SyncReq,
    Update,
)
from ._events import (
    DetectorConfig, Joined, JoinRequested, LeaveRequested, LinkDown, LinkRefused, Member,
    MeshState, NameConflict, Received, Relay, Tick,
)
from ._member_table import ALIVE, DEAD, LEFT, LIVE, suspicion_timeout
from ._probing import ProbingDraft, next_wake

__all__ = ["decide", "initial_state", "table", "next_wake", "suspicion_timeout"]


def initial_state(name: str, addr: str, inc: int, now: float, seeds: tuple[str, ...] = (),
                  config: DetectorConfig | None = None, seed: int = 1) -> MeshState:
    """A node alone, alive at incarnation ``inc``, about to ask ``seeds`` to let it in."""
    cfg = config or DetectorConfig()
    others = tuple(s for s in seeds if s != addr)
    return MeshState(config=cfg, me=Member(name, addr, inc, ALIVE, now), members={},
                     seeds=others, joining=bool(others), next_join_at=now,
                     next_probe_at=now + cfg.probe_interval,
                     next_sync_at=now + cfg.sync_interval, rng=seed or 1)


def table(state: MeshState) -> list[Member]:
    """Every member this node knows, itself first."""
    return [state.me, *sorted(state.members.values(), key=lambda m: m.name)]


def decide(state: MeshState, event: Any) -> tuple[MeshState, list[Any]]:
    """Consume one event; return the next state and the actions to carry out, in order."""
    d = _Draft(state, event.now)
    if d.me.state is LEFT and isinstance(event, JoinRequested):  # back, as a new incarnation
        d.me = Member(d.me.name, d.me.addr, d.me.inc + 1, ALIVE, event.now)
    if d.me.state is LEFT:  # gone for good: only answer pings, so nobody waits on us
        if isinstance(event, Received) and isinstance(event.frame, Ping):
            d.on_frame(event.frame)
        return d.freeze(), d.actions
    if isinstance(event, Tick):
        d.tick()
    elif isinstance(event, Received):
        d.on_frame(event.frame)
    elif isinstance(event, LinkDown):
        d.link_down(event.addr)
    elif isinstance(event, LinkRefused):
        d.link_refused(event.addr)
    elif isinstance(event, JoinRequested):
        d.join_requested(event.seeds)
    elif isinstance(event, LeaveRequested):
        d.leave()
    return d.freeze(), d.actions


class _Draft(ProbingDraft):
    """A mutable working copy of one state for the duration of one ``decide`` call: the
    frames, the transport's signals, join and leave (on :mod:`._probing` and
    :mod:`._member_table`)."""

    # ---- frames ---------------------------------------------------------------------------------

    def on_frame(self, f: Any) -> None:
        if f.src == self.me.name and f.addr == self.me.addr:
            return  # our own frame, looped back by a seed list that names us
        if isinstance(f, Join):
            self.on_join(f)
            return
        if self.me.state is not LEFT:
            self.merge(Update(f.src, f.addr, f.inc, ALIVE))  # the sender speaks: alive
            sender = self.members.get(f.src)
            if sender is not None and sender.link_lost and sender.inc == f.inc:
                self.members[f.src] = msgspec.structs.replace(sender, link_lost=False)
        for u in getattr(f, "updates", ()):
            self.merge(u)
        if isinstance(f, Ping):
            if f.target == self.me.name:
                self.send(f.addr, Ack(*self.head(), seq=f.seq, updates=self.piggyback(f.src)))
        elif isinstance(f, Ack):
            self.on_ack(f)
        elif isinstance(f, PingReq):
            seq = self.next_seq()
            # The requester waits (interval - timeout) for the indirect acks: our nack
            # must reach it before that, or it counts us missing and itself slow.
            nack_in = 0.8 * (self.cfg.probe_interval - self.cfg.probe_timeout)
            self.relays.append(Relay(seq, f.src, f.addr, f.seq, f.target, self.now + nack_in))
            self.send(f.target_addr, Ping(*self.head(), seq=seq, target=f.target,
                                          updates=self.piggyback(f.target)))
        elif isinstance(f, IndirectAck):
            if self.probe is not None and f.seq == self.probe.seq:
                self.probe_succeeded(None)
        elif isinstance(f, Nack):
            if self.probe is not None and f.seq == self.probe.seq:
                self.probe = msgspec.structs.replace(self.probe, nacks=self.probe.nacks + 1)
        elif isinstance(f, SyncReq):
            for u in f.members:
                self.merge(u, from_table=True)
            self.send(f.addr, Sync(*self.head(), members=self.table_updates()))
        elif isinstance(f, Sync):
            for u in f.members:
                self.merge(u, from_table=True)
        elif isinstance(f, JoinReply):
            self.on_join_reply(f)
        elif isinstance(f, JoinNack):
            self.on_join_nack(f)
        elif isinstance(f, Leave):
            self.merge(Update(f.src, f.addr, f.inc, LEFT))

    def on_ack(self, f: Ack) -> None:
        check = next((c for c in self.checks if c.seq == f.seq), None)
        if check is not None:
            self.checks.remove(check)
            return
        relay = next((r for r in self.relays if r.seq == f.seq), None)
        if relay is not None:
            self.relays.remove(relay)
            self.send(relay.requester_addr, IndirectAck(
                *self.head(), seq=relay.orig_seq, target=relay.target,
                updates=self.piggyback(relay.requester)))
        elif self.probe is not None and f.seq == self.probe.seq:
            self.probe_succeeded(self.now - self.probe.started)

    def on_join(self, f: Join) -> None:
        cur = self.members.get(f.src)
        if f.src == self.me.name or (cur is not None and cur.state in LIVE
                                     and cur.addr != f.addr and cur.inc != f.inc):
            holder = self.me.addr if f.src == self.me.name else cur.addr  # type: ignore[union-attr]
            self.send(f.addr, JoinNack(*self.head(), reason=(
                f"node name {f.src!r} is taken by a live node at "
                f"{holder.removeprefix('tcp://')}")))
            return
        self.merge(Update(f.src, f.addr, f.inc, ALIVE))
        self.set(joining=False)  # someone joined us: we are in a cluster
        members = self.table_updates()
        gone = self.forgotten.get(f.src) if f.src not in self.members else None
        if gone is not None:  # forgotten at this incarnation (a long partition): it refutes
            members += (Update(f.src, gone.addr, gone.inc, DEAD, self.me.name),)
        self.send(f.addr, JoinReply(*self.head(), members=members))
        self.push((Update(f.src, f.addr, f.inc, ALIVE),), skip=f.src)

    def on_join_reply(self, f: JoinReply) -> None:
        inc = self.me.inc
        for u in f.members:
            self.merge(u, from_table=True)
        if self.get("joining") or self.get("refused_since") is not None:
            self.actions.append(Joined(f.addr))
        self.set(joining=False, refused_since=None, join_attempts=0)
        self.push((self.me.update(),), skip=f.src)
        if self.me.inc != inc and f.src not in self.members:  # refuted to a seed we forgot
            self.send(f.addr, Gossip(*self.head(), updates=(self.me.update(),)))

    def on_join_nack(self, f: JoinNack) -> None:
        if not self.get("joining"):
            return
        since = self.get("refused_since")
        if since is None:
            self.set(refused_since=self.now)
        elif self.now - since >= self.cfg.name_claim_grace:
            self.set(joining=False)
            self.actions.append(NameConflict(f.reason))
    # ---- the transport's signals, join and leave ------------------------------------------------

    def link_down(self, addr: str) -> None:
        m = self.by_addr(addr)
        if m is None:
            return
        self.members[m.name] = msgspec.structs.replace(m, link_lost=True)
        self.send(m.addr, Ping(*self.head(), seq=self.next_seq(), target=m.name,
                               updates=self.piggyback(m.name)))

    def link_refused(self, addr: str) -> None:
        m = self.by_addr(addr)
        if m is None or not m.link_lost:
            return
        dead = Member(m.name, m.addr, m.inc, DEAD, self.now)
        self.put(dead, m)
        self.rumor(dead.update())
        self.push((dead.update(),))
        if self.probe is not None and self.probe.target == m.name:
            self.probe = None

    def join_requested(self, seeds: tuple[str, ...]) -> None:
        new = tuple(s for s in dict.fromkeys(seeds)
                    if s != self.me.addr and s not in self.get("seeds"))
        self.set(seeds=self.get("seeds") + new, joining=True, join_attempts=0,
                 next_join_at=self.now)
        self.ask_seeds()

    def leave(self) -> None:
        self.me = msgspec.structs.replace(self.me, state=LEFT, since=self.now)
        self.probe = None
        self.relays = []
        self.checks = []
        self.set(joining=False)
        for m in self.live():
            self.send(m.addr, Leave(*self.head()))
