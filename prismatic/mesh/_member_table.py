"""The member table as one ``decide`` call works on it: a mutable draft of the state.

:class:`Draft` holds the working copy (frozen again at the call's end), the rules by which
what others say is merged into it (incarnations, suspicion, refutation: the *States*
paragraph of :mod:`._membership`), Lifeguard's suspicion timeout
(:func:`suspicion_timeout`), and the rumours that spread each change (piggybacked and
pushed: *Dissemination*). Probing and timers build on it in :mod:`._probing`, the frames
and the transport's signals in :mod:`._membership`. Pure: no I/O, no clock, no randomness
but the seeded stream kept in the state.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from ..transports._mesh_frames import MAX_PIGGYBACK, Gossip, MemberState, Ping, Update
from ._events import (
    Changed, Check, Count, DetectorConfig, Forgotten, Member, MeshState, Rumor, Send, Tombstone,
)

__all__ = ["Draft", "suspicion_timeout", "ALIVE", "SUSPECT", "DEAD", "LEFT", "LIVE"]

ALIVE, SUSPECT, DEAD, LEFT = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD,
                              MemberState.LEFT)
LIVE = (ALIVE, SUSPECT)


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



class Draft:
    """A mutable working copy of one state for the duration of one ``decide`` call: the
    member table and how it changes (see the module's docstring)."""

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
        self.forgotten = s.forgotten  # copied before a change (a reap is rare)
        self.changes: dict[str, Any] = {}
        self.actions: list[Any] = []

    def freeze(self) -> MeshState:
        return msgspec.structs.replace(
            self.s, me=self.me, members=self.members, probe=self.probe,
            relays=tuple(self.relays), checks=tuple(self.checks), rumors=tuple(self.rumors),
            health=self.health, seq=self.seq, rng=self.rng, order=tuple(self.order),
            forgotten=self.forgotten, **self.changes)

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
        return [m for m in self.members.values() if m.state in LIVE]

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
        elif target is None and to in self.forgotten:  # it speaks: it may refute
            t = self.forgotten[to]
            out.append(Update(to, t.addr, t.inc, DEAD, self.me.name))
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
            if m.addr == addr and m.state in LIVE:
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
        if cur is None and u.name in self.forgotten:
            if u.inc <= self.forgotten[u.name].inc:
                return  # a late rumour of a member that went: only a new incarnation is news
            self.forgotten = {n: t for n, t in self.forgotten.items() if n != u.name}
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
            if (cur.state in LIVE and (newer or same)) or (cur.state is DEAD and newer):
                self.put(Member(u.name, u.addr, u.inc, DEAD, now), cur)
                self.rumor(u)
        elif u.state is LEFT:
            if (cur.state is not LEFT and (newer or same)) or (cur.state is LEFT and newer):
                self.put(Member(u.name, u.addr, u.inc, LEFT, now), cur)
                self.rumor(u)

    def reap(self) -> None:
        """Forget the members that went ``reap_after`` ago (keeping a tombstone as long
        again), and the tombstones that are that old."""
        now, keep = self.now, self.cfg.reap_after
        gone = [m for m in self.members.values()
                if m.state in (DEAD, LEFT) and now - m.since >= keep]
        expired = [n for n, t in self.forgotten.items() if now >= t.until]
        if not gone and not expired:
            return
        forgotten = {n: t for n, t in self.forgotten.items() if now < t.until}
        for m in gone:
            del self.members[m.name]
            forgotten[m.name] = Tombstone(m.addr, m.inc, now + keep)
            self.actions.append(Forgotten(m.name, m.addr))
        self.forgotten = forgotten
        names = {m.name for m in gone}
        self.rumors = [r for r in self.rumors if r.update.name not in names]

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
