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
  once, and when reconnecting is *refused* (nothing listens there any more: ``LinkRefused``),
  that failed probe confirms it: dead at once, no timeout. A stopped or partitioned process
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
* **Joining.** A newcomer sends ``join`` to its seeds (retried with backoff until one answers).
  A seed refuses a name held by a live member at another address and incarnation
  (``join_nack``); otherwise it answers with its whole table and announces the newcomer to
  every member; the newcomer announces itself to every member it learned. Incarnations start at
  the node's start time in milliseconds, so a restarted node (same name) always outranks its
  dead predecessor and rejoins as a new incarnation.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ..transports._mesh_frames import (
    MAX_PIGGYBACK, Ack, Gossip, IndirectAck, Join, JoinNack, JoinReply, Leave, MemberState,
    Nack, Ping, PingReq, Sync, SyncReq, Update,
)
from ._events import (
    Changed, Check, Count, DetectorConfig, Joined, JoinRequested, LeaveRequested, LinkDown,
    LinkRefused, Member, MeshState, NameConflict, Probe, Received, Relay, Rumor, Send, Tick,
)

__all__ = ["decide", "initial_state", "table", "next_wake", "suspicion_timeout"]

ALIVE, SUSPECT, DEAD, LEFT = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD,
                              MemberState.LEFT)
_LIVE = (ALIVE, SUSPECT)


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


def next_wake(state: MeshState) -> float:
    """The earliest time a ``Tick`` has something to do (the loop sleeps until then)."""
    times = [state.next_probe_at, state.next_sync_at]
    if state.joining:
        times.append(state.next_join_at)
    if state.probe is not None:
        times.append(state.probe.deadline if state.probe.indirect
                     else state.probe.direct_deadline)
    times.extend(r.deadline for r in state.relays)
    times.extend(c.deadline for c in state.checks)
    times.extend(m.suspect_deadline for m in state.members.values() if m.state is SUSPECT)
    return min(times)


def suspicion_timeout(cfg: DetectorConfig, n: int, confirmations: int) -> float:
    """Lifeguard's dynamic suspicion timeout for ``n`` live members and ``confirmations``
    independent suspicions beyond the first."""
    low = max(cfg.suspicion_alpha * math.log10(max(n, 1)) * cfg.probe_interval,
              cfg.suspicion_min)
    high = cfg.suspicion_beta * low
    expected = min(n - 2, 3)
    if expected < 1:
        return low
    frac = math.log(min(confirmations, expected) + 1) / math.log(expected + 1)
    return max(low, high - (high - low) * frac)


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


class _Draft:
    """A mutable working copy of one state for the duration of one ``decide`` call."""

    def __init__(self, s: MeshState, now: float) -> None:
        self.s = s
        self.cfg = s.config
        self.now = now
        self.me = s.me
        self.members = dict(s.members)
        self.probe = s.probe
        self.relays = list(s.relays)
        self.checks = list(s.checks)
        self.rumors = list(s.rumors)
        self.health = s.health
        self.seq = s.seq
        self.rng = s.rng
        self.order = list(s.order)
        self.changes: dict[str, Any] = {}
        self.actions: list[Any] = []

    def freeze(self) -> MeshState:
        return msgspec.structs.replace(
            self.s, me=self.me, members=self.members, probe=self.probe,
            relays=tuple(self.relays), checks=tuple(self.checks), rumors=tuple(self.rumors),
            health=self.health, seq=self.seq, rng=self.rng, order=tuple(self.order),
            **self.changes)

    def get(self, field: str) -> Any:
        return self.changes.get(field, getattr(self.s, field))

    def set(self, **changes: Any) -> None:
        self.changes.update(changes)

    # ---- helpers ------------------------------------------------------------------------------

    def rand(self, n: int) -> int:
        """A number in [0, n) from a splitmix64 stream kept in the state (deterministic)."""
        self.rng = (self.rng + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = self.rng
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return (z ^ (z >> 31)) % n

    def shuffled(self, items: list[Any]) -> list[Any]:
        items = list(items)
        for i in range(len(items) - 1, 0, -1):
            j = self.rand(i + 1)
            items[i], items[j] = items[j], items[i]
        return items

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def live(self) -> list[Member]:
        return [m for m in self.members.values() if m.state in _LIVE]

    def n_live(self) -> int:
        return 1 + len(self.live())

    def stretch(self) -> float:
        return 1.0 + self.health

    def head(self) -> tuple[str, str, int]:
        return self.me.name, self.me.addr, self.me.inc

    def piggyback(self, to: str | None) -> tuple[Update, ...]:
        """Up to MAX_PIGGYBACK rumours, most-needed first; a frame to a member we think
        suspect or dead leads with that belief, so it can refute it."""
        out: list[Update] = []
        target = self.members.get(to) if to else None
        if target is not None and target.state in (SUSPECT, DEAD):
            out.append(target.update(self.me.name))
        if not self.rumors:
            return tuple(out)
        self.rumors.sort(key=lambda r: -r.left)
        kept: list[Rumor] = []
        for r in self.rumors:
            if len(out) < MAX_PIGGYBACK and r.update not in out:
                out.append(r.update)
                if r.left > 1:
                    kept.append(Rumor(r.update, r.left - 1))
            else:
                kept.append(r)
        self.rumors = kept
        return tuple(out)

    def send(self, addr: str, frame: Any) -> None:
        self.actions.append(Send(addr, frame))

    def rumor(self, u: Update) -> None:
        limit = self.cfg.retransmit_mult * max(1, math.ceil(math.log10(self.n_live() + 1)))
        self.rumors = [r for r in self.rumors if r.update.name != u.name]
        self.rumors.append(Rumor(u, limit))

    def push(self, updates: tuple[Update, ...], skip: str = "") -> None:
        """Gossip ``updates`` to every live member at once (joins, refutations)."""
        for m in self.live():
            if m.name != skip:
                self.send(m.addr, Gossip(*self.head(), updates=updates))

    def put(self, m: Member, old: Member | None) -> None:
        self.members[m.name] = m
        if old is None or old.state is not m.state:
            self.actions.append(Changed(m.name, m.addr, m.inc, old.state if old else None,
                                        m.state))
            if m.state is SUSPECT:
                self.actions.append(Count("suspicions_raised"))
            elif old is not None and old.state is SUSPECT and m.state is ALIVE:
                self.actions.append(Count("suspicions_refuted"))

    def by_addr(self, addr: str) -> Member | None:
        for m in self.members.values():
            if m.addr == addr and m.state in _LIVE:
                return m
        return None

    def table_updates(self) -> tuple[Update, ...]:
        return (self.me.update(), *(m.update() for m in self.members.values()))

    # ---- merging what others say ----------------------------------------------------------

    def merge(self, u: Update, from_table: bool = False) -> None:
        if u.name == self.me.name:
            self.about_me(u)
            return
        cur = self.members.get(u.name)
        now = self.now
        if cur is None:
            if u.state is SUSPECT:
                self.suspect(Member(u.name, u.addr, u.inc, ALIVE, now), u.inc, u.by or "?",
                             None)
            else:
                self.put(Member(u.name, u.addr, u.inc, u.state, now), None)
            if u.state is not ALIVE or not from_table:
                self.rumor(u)
            return
        newer = u.inc > cur.inc
        same = u.inc == cur.inc
        if u.state is ALIVE:
            if newer:
                self.put(Member(u.name, u.addr, u.inc, ALIVE,
                                now if cur.state is not ALIVE else cur.since, rtt=cur.rtt),
                         cur)
                self.rumor(u)
        elif u.state is SUSPECT:
            if from_table and not newer:
                return
            if (cur.state is ALIVE and (newer or same)) or (cur.state is SUSPECT and newer):
                self.suspect(cur, u.inc, u.by or "?", cur)
            elif cur.state is SUSPECT and same and u.by and u.by not in cur.suspected_by:
                self.confirm(cur, u.by)
        elif u.state is DEAD:
            if from_table and not newer:
                return
            if (cur.state in _LIVE and (newer or same)) or (cur.state is DEAD and newer):
                self.put(Member(u.name, u.addr, u.inc, DEAD, now), cur)
                self.rumor(u)
        elif u.state is LEFT:
            if (cur.state is not LEFT and (newer or same)) or (cur.state is LEFT and newer):
                self.put(Member(u.name, u.addr, u.inc, LEFT, now), cur)
                self.rumor(u)

    def suspect(self, cur: Member, inc: int, by: str, old: Member | None) -> None:
        timeout = suspicion_timeout(self.cfg, self.n_live(), 0)
        m = Member(cur.name, cur.addr, inc, SUSPECT, self.now, frozenset((by,)),
                   self.now + timeout, cur.rtt, cur.link_lost)
        self.put(m, old)
        self.rumor(m.update(by))
        if by == self.me.name:  # everyone hears it now and checks for themselves
            self.push((m.update(by),))
        else:
            self.check(m)

    def check(self, m: Member) -> None:
        """Ping a member another one suspects, now: an independent confirmation (or not)
        within one probe period, rather than whenever our round robin reaches it."""
        if any(c.target == m.name and c.inc == m.inc for c in self.checks):
            return
        seq = self.next_seq()
        self.checks.append(Check(m.name, m.inc, seq,
                                 self.now + self.cfg.probe_interval * self.stretch()))
        self.send(m.addr, Ping(*self.head(), seq=seq, target=m.name,
                               updates=self.piggyback(m.name)))

    def check_expired(self, c: Check) -> None:
        self.checks.remove(c)
        m = self.members.get(c.target)
        if m is not None and m.state is SUSPECT and m.inc == c.inc \
                and self.me.name not in m.suspected_by:
            self.confirm(m, self.me.name)

    def confirm(self, cur: Member, by: str) -> None:
        suspectors = cur.suspected_by | {by}
        timeout = suspicion_timeout(self.cfg, self.n_live(), len(suspectors) - 1)
        self.members[cur.name] = msgspec.structs.replace(
            cur, suspected_by=suspectors, suspect_deadline=cur.since + timeout)
        u = Update(cur.name, cur.addr, cur.inc, SUSPECT, by)
        self.rumor(u)
        if by == self.me.name:  # every suspector counts the confirmation at once
            self.push((u,))

    def about_me(self, u: Update) -> None:
        """Nobody but this node decides that it is not alive: refute with a higher
        incarnation (Lifeguard: being suspected is also a hint that we are the slow one)."""
        if u.state is ALIVE or u.inc < self.me.inc or self.me.state is LEFT:
            return
        self.me = msgspec.structs.replace(self.me, inc=u.inc + 1)
        self.health = min(self.health + 1, self.cfg.max_health)
        self.actions.append(Count("refutations"))
        alive = self.me.update()
        self.rumor(alive)
        self.push((alive,))

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
        if f.src == self.me.name or (cur is not None and cur.state in _LIVE
                                     and cur.addr != f.addr and cur.inc != f.inc):
            holder = self.me.addr if f.src == self.me.name else cur.addr  # type: ignore[union-attr]
            self.send(f.addr, JoinNack(*self.head(), reason=(
                f"node name {f.src!r} is taken by a live node at "
                f"{holder.removeprefix('tcp://')}")))
            return
        self.merge(Update(f.src, f.addr, f.inc, ALIVE))
        self.set(joining=False)  # someone joined us: we are in a cluster
        self.send(f.addr, JoinReply(*self.head(), members=self.table_updates()))
        self.push((Update(f.src, f.addr, f.inc, ALIVE),), skip=f.src)

    def on_join_reply(self, f: JoinReply) -> None:
        for u in f.members:
            self.merge(u, from_table=True)
        if self.get("joining") or self.get("refused_since") is not None:
            self.actions.append(Joined(f.addr))
        self.set(joining=False, refused_since=None, join_attempts=0)
        self.push((self.me.update(),), skip=f.src)

    def on_join_nack(self, f: JoinNack) -> None:
        if not self.get("joining"):
            return
        since = self.get("refused_since")
        if since is None:
            self.set(refused_since=self.now)
        elif self.now - since >= self.cfg.name_claim_grace:
            self.set(joining=False)
            self.actions.append(NameConflict(f.reason))

    # ---- probing --------------------------------------------------------------------------------

    def probe_succeeded(self, rtt: float | None) -> None:
        assert self.probe is not None
        target = self.members.get(self.probe.target)
        if target is not None and rtt is not None:
            self.members[target.name] = msgspec.structs.replace(target, rtt=rtt)
        self.health = max(0, self.health - 1)
        self.set(next_probe_at=max(self.get("next_probe_at"), self.now))
        self.probe = None

    def start_probe(self) -> None:
        while True:
            if not self.order:
                self.order = self.ring()
                if not self.order:
                    self.set(next_probe_at=self.now + self.cfg.probe_interval)
                    return
            name = self.order.pop(0)
            target = self.members.get(name)
            if target is not None and target.state in _LIVE:
                break
        seq = self.next_seq()
        k = self.stretch()
        self.probe = Probe(name, seq, self.now, self.now + self.cfg.probe_timeout * k,
                           self.now + self.cfg.probe_interval * k)
        self.set(next_probe_at=self.now + self.cfg.probe_interval * k)
        self.actions.append(Count("probes_sent"))
        self.send(target.addr, Ping(*self.head(), seq=seq, target=name,
                                    updates=self.piggyback(name)))

    def ring(self) -> list[str]:
        """One round's probe order: every live member once, by name, starting after this
        node. Each member is probed by every other within N-1 periods (SWIM's shuffled
        rounds allow up to 2N-3), and where rounds line up the members' successors probe
        each member in successive periods rather than several at once."""
        names = sorted(m.name for m in self.live())
        after = [n for n in names if n > self.me.name]
        return after + names[:len(names) - len(after)]

    def go_indirect(self) -> None:
        p = self.probe
        assert p is not None
        target = self.members.get(p.target)
        if target is None or target.state not in _LIVE:
            self.probe = None
            return
        helpers = self.shuffled([m for m in self.live() if m.name != p.target])
        helpers = helpers[:self.cfg.indirect_probes]
        for h in helpers:
            self.send(h.addr, PingReq(*self.head(), seq=p.seq, target=p.target,
                                      target_addr=target.addr, updates=self.piggyback(h.name)))
        if helpers:
            self.actions.append(Count("indirect_probes"))
        self.send(target.addr, Ping(*self.head(), seq=p.seq, target=p.target,
                                    updates=self.piggyback(p.target)))
        self.probe = msgspec.structs.replace(p, indirect=True, nacks_expected=len(helpers))

    def probe_failed(self) -> None:
        p = self.probe
        assert p is not None
        self.probe = None
        self.actions.append(Count("probes_failed"))
        if p.nacks < p.nacks_expected:  # helpers did not answer either: maybe we are slow
            self.health = min(self.health + 1, self.cfg.max_health)
        target = self.members.get(p.target)
        if target is not None and target.state is ALIVE:
            self.suspect(target, target.inc, self.me.name, target)
        elif target is not None and target.state is SUSPECT \
                and self.me.name not in target.suspected_by:
            self.confirm(target, self.me.name)  # an independent confirmation

    # ---- time -----------------------------------------------------------------------------------

    def tick(self) -> None:
        now, cfg = self.now, self.cfg
        late = now - next_wake(self.s)  # the loop sleeps until exactly then
        if late > cfg.lag_limit:
            self.lagged(late)
        if self.get("joining") and now >= self.get("next_join_at"):
            self.ask_seeds()
        for r in [r for r in self.relays if now >= r.deadline]:
            self.relays.remove(r)
            if not r.nacked:  # keep relaying a late ack a while: the probe may still wait
                self.relays.append(msgspec.structs.replace(
                    r, nacked=True, deadline=now + cfg.probe_timeout * self.stretch()))
                self.send(r.requester_addr, Nack(*self.head(), seq=r.orig_seq,
                                                 target=r.target,
                                                 updates=self.piggyback(r.requester)))
        for c in [c for c in self.checks if now >= c.deadline]:
            self.check_expired(c)
        if self.probe is not None:
            if not self.probe.indirect and now >= self.probe.direct_deadline:
                self.go_indirect()
            elif self.probe.indirect and now >= self.probe.deadline:
                self.probe_failed()
        if self.probe is None and now >= self.get("next_probe_at"):
            self.start_probe()
        for m in list(self.members.values()):
            if m.state is SUSPECT and now >= m.suspect_deadline:
                dead = Member(m.name, m.addr, m.inc, DEAD, now)
                self.put(dead, m)
                self.rumor(dead.update())
                self.push((dead.update(),))
        if now >= self.get("next_sync_at"):
            self.sync()

    def lagged(self, lag: float) -> None:
        """This node was not running for ``lag`` seconds: what timed out meanwhile is no
        evidence about anyone else. Restart the probe, push back every running timer."""
        self.health = min(self.health + 1, self.cfg.max_health)
        if self.probe is not None:
            k = self.stretch()
            self.probe = msgspec.structs.replace(
                self.probe, started=self.now, indirect=False, nacks=0, nacks_expected=0,
                direct_deadline=self.now + self.cfg.probe_timeout * k,
                deadline=self.now + self.cfg.probe_interval * k)
        self.relays = [msgspec.structs.replace(r, deadline=r.deadline + lag)
                       for r in self.relays]
        self.checks = [msgspec.structs.replace(c, deadline=c.deadline + lag)
                       for c in self.checks]
        for m in list(self.members.values()):
            if m.state is SUSPECT:
                self.members[m.name] = msgspec.structs.replace(
                    m, suspect_deadline=m.suspect_deadline + lag)

    def ask_seeds(self) -> None:
        attempts = self.get("join_attempts")
        for seed in self.get("seeds"):
            self.send(seed, Join(*self.head()))
        backoff = min(self.cfg.join_backoff_max, self.cfg.join_backoff_min * 2 ** attempts)
        self.set(join_attempts=attempts + 1, next_join_at=self.now + backoff)

    def sync(self) -> None:
        self.set(next_sync_at=self.now + self.cfg.sync_interval)
        live = self.live()
        dead = [m for m in self.members.values() if m.state is DEAD]
        table = self.table_updates()
        for pool in (live, dead):
            if pool:
                m = pool[self.rand(len(pool))]
                self.send(m.addr, SyncReq(*self.head(), members=table))

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
