"""What a ``Tick`` does: probe rounds, their deadlines and the other timers of the detector.

SWIM's probe (direct, then indirect through ``k`` helpers, then suspicion), the round-robin
probe order, Lifeguard's health multiplier and its handling of a tick that came late (the
*Probes* and *Local health awareness* paragraphs of :mod:`._membership`), suspicions that
time out, the join retries with backoff and the periodic table sync. :func:`next_wake` says
when the next tick has something to do. Pure, like the :class:`~._member_table.Draft` it
builds on.
"""

from __future__ import annotations

import msgspec

from ..transports._mesh_frames import Join, Nack, Ping, PingReq, SyncReq
from ._events import Count, Member, MeshState, Probe
from ._member_table import ALIVE, DEAD, LIVE, SUSPECT, Draft

__all__ = ["ProbingDraft", "next_wake"]


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



class ProbingDraft(Draft):
    """A :class:`~._member_table.Draft` that also probes and keeps time."""

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
            if target is not None and target.state in LIVE:
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
        if target is None or target.state not in LIVE:
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
        self.reap()
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
