"""The global registry (OTP's ``global``) as a pure state machine: ``decide``.

A global name is unique cluster-wide and names one process on any node. Every node keeps the
whole table (``name -> (pid, owner node, stamp)``) so ``whereis_global`` is a local lookup.

* **Ownership.** A node speaks only for its own processes' names: it alone adds them
  (``g_add``), removes them (``g_remove``: unregistered, the process exited) and states them
  in full (``g_sync``: "these and no others are mine"). Every node applies what an owner
  says about the owner's names, and only from an owner it believes alive; it drops all names
  of an owner the membership declares dead or left (or that comes back as a new
  incarnation). So a holder's death frees its names on every node, and a lost node's names
  are freed everywhere that sees it lost.
* **Registering: one arbiter per name.** The arbiter (*leader*) of a name is chosen by
  rendezvous hashing over the members this node believes alive (itself included), so every
  node with the same view picks the same one, and a membership change moves only the names
  of the nodes that came or went. The registrant's node sends ``g_claim`` to the leader; the
  leader grants it unless its table or a live reservation gives the name to another pid,
  and then reserves the name for the claimant (``RESERVE_S``, until the claimant's
  ``g_add`` arrives, or its ``g_remove`` releases it). On a grant the registrant's node
  checks its own table once more, commits (the registration gets the owner's wall-clock
  stamp), tells every member (``g_add``), and only then answers the process ``ok``. A claim
  whose leader is declared dead is sent to the new leader, and only the leader it was last
  sent to decides it (a grant from the one before, late, is released); one unanswered for
  ``CLAIM_TIMEOUT_S`` fails (``no_answer``). Of concurrent claims for one name from any
  number of nodes that share a view, exactly one wins; the others are refused
  (``already_registered``).
* **Joins and heals.** When a member comes up (first seen, back from dead, or a new
  incarnation) each side sends it its own names (``g_sync`` with ``reply``: the other answers
  with its own), and every ``SYNC_S`` each node restates its names to every live member
  (heals a lost frame).
* **The guarantee.** While members agree on who is alive, a name has at most one holder.
  During a partition each side believes the other dead: both sides may register the same
  name (each side is a working cluster; OTP's ``global`` behaves the same way). Views that
  briefly disagree (a member that just joined and has not yet heard every table) may grant a
  name twice too. Either way the conflict is resolved deterministically as soon as the two
  registrations meet in one table: **the older registration (smaller stamp) wins, a tie
  goes to the owner with the smaller node name**. Every node computes the same winner. The
  loser's owner removes it, tells everyone (``g_remove``) and tells the losing process,
  exactly once, with a :class:`~prismatic.GlobalNameConflict` in its ``handle_info``; a
  process is never left believing it holds a name it lost. Stamps are wall clocks, so the
  "older" of two registrations on hosts with skewed clocks is only as exact as the clocks;
  the choice is still the same on every node.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from ..transports._global_frames import (
    GlobalAdd, GlobalClaim, GlobalReg, GlobalRemove, GlobalSync, GlobalVerdict,
)

__all__ = [
    "Reg", "Claim", "Reservation", "GlobalState", "Register", "Unregister",
    "ProcessExited", "NodeUp", "NodeDown", "Received", "Tick", "SendTo", "Reply",
    "Notify", "Count", "decide", "initial_state", "whereis", "leader", "beats", "next_wake",
    "RESERVE_S", "CLAIM_TIMEOUT_S", "SYNC_S",
]

RESERVE_S = 5.0  # a leader keeps a granted name for its claimant this long, at most
CLAIM_TIMEOUT_S = 5.0  # a claim nobody answers fails after this long
SYNC_S = 2.0  # each node restates its names to every live member this often


class Reg(msgspec.Struct, frozen=True):
    """``pid`` holds ``name``; ``node`` owns the registration (the pid's node)."""

    name: str
    pid: Any
    node: str
    stamp: int


class Claim(msgspec.Struct, frozen=True):
    """A registration of one of this node's processes, waiting for its leader's verdict."""

    ref: int
    name: str
    pid: Any
    stamp: int
    leader: str
    deadline: float


class Reservation(msgspec.Struct, frozen=True):
    """A name this node (as leader) granted to ``pid`` of ``node``, not yet committed."""

    name: str
    pid: Any
    node: str
    deadline: float


class GlobalState(msgspec.Struct, frozen=True):
    me: str
    addr: str
    alive: dict[str, int]  # the other members we believe alive (or suspect): incarnation
    table: dict[str, Reg]
    claims: dict[int, Claim]
    reserved: dict[str, Reservation]
    next_sync_at: float


# ---- events -------------------------------------------------------------------------------


class Register(msgspec.Struct, frozen=True):
    """Local process ``pid`` asks for ``name``; ``ref`` names the answer; ``stamp`` is the
    wall clock in ns (the loop reads it; the machine reads no clock)."""

    now: float
    ref: int
    name: str
    pid: Any
    stamp: int


class Unregister(msgspec.Struct, frozen=True):
    now: float
    ref: int
    name: str
    pid: Any


class ProcessExited(msgspec.Struct, frozen=True):
    now: float
    pid: Any


class NodeUp(msgspec.Struct, frozen=True):
    """The membership sees ``node`` alive at incarnation ``inc`` (new, back, or restarted)."""

    now: float
    node: str
    inc: int


class NodeDown(msgspec.Struct, frozen=True):
    """The membership declared ``node`` dead or left."""

    now: float
    node: str


class Received(msgspec.Struct, frozen=True):
    now: float
    frame: Any


class Tick(msgspec.Struct, frozen=True):
    now: float


# ---- actions ------------------------------------------------------------------------------


class SendTo(msgspec.Struct, frozen=True):
    node: str
    frame: Any


class Reply(msgspec.Struct, frozen=True):
    """The answer to local request ``ref``: ``error`` None is ok; else
    ``already_registered`` (``holder`` has it), ``not_registered``, ``no_answer``."""

    ref: int
    error: str | None = None
    detail: str = ""
    holder: Any = None


class Notify(msgspec.Struct, frozen=True):
    """Tell local process ``pid`` that it lost ``name`` to ``winner`` (a heal's conflict)."""

    pid: Any
    name: str
    winner: Any


class Count(msgspec.Struct, frozen=True):
    what: str


def initial_state(me: str, addr: str, now: float) -> GlobalState:
    return GlobalState(me, addr, {}, {}, {}, {}, now + SYNC_S)


def whereis(state: GlobalState, name: str) -> Any:
    reg = state.table.get(name)
    return reg.pid if reg is not None else None


def leader(name: str, nodes: list[str]) -> str:
    """Rendezvous hashing: the node with the highest hash of (node, name)."""
    def weight(node: str) -> bytes:
        return hashlib.blake2b(f"{node}\0{name}".encode(), digest_size=8).digest()
    return max(nodes, key=lambda n: (weight(n), n))


def beats(a: Reg, b: Reg) -> bool:
    """Whether registration ``a`` wins a conflict with ``b``: older, then smaller owner."""
    return (a.stamp, a.node) < (b.stamp, b.node)


def decide(state: GlobalState, event: Any) -> tuple[GlobalState, list[Any]]:
    d = _Draft(state, event.now)
    if isinstance(event, Register):
        d.register(event)
    elif isinstance(event, Unregister):
        d.unregister(event)
    elif isinstance(event, ProcessExited):
        d.process_exited(event.pid)
    elif isinstance(event, NodeUp):
        d.node_up(event.node, event.inc)
    elif isinstance(event, NodeDown):
        d.node_down(event.node)
    elif isinstance(event, Received):
        d.received(event.frame)
    elif isinstance(event, Tick):
        d.tick()
    return d.freeze(), d.actions


class _Draft:
    def __init__(self, s: GlobalState, now: float) -> None:
        self.s = s
        self.now = now
        self.me = s.me
        self.alive = dict(s.alive)
        self.table = dict(s.table)
        self.claims = dict(s.claims)
        self.reserved = dict(s.reserved)
        self.next_sync_at = s.next_sync_at
        self.actions: list[Any] = []

    def freeze(self) -> GlobalState:
        return GlobalState(self.me, self.s.addr, self.alive, self.table, self.claims,
                           self.reserved, self.next_sync_at)

    # ---- helpers --------------------------------------------------------------------------

    def send(self, node: str, frame: Any) -> None:
        self.actions.append(SendTo(node, frame))

    def broadcast(self, frame: Any) -> None:
        for node in sorted(self.alive):
            self.send(node, frame)

    def leader_of(self, name: str) -> str:
        return leader(name, [self.me, *self.alive])

    def mine(self) -> tuple[GlobalReg, ...]:
        return tuple(GlobalReg(r.name, r.pid, r.stamp) for r in self.table.values()
                     if r.node == self.me)

    def sync_frame(self, reply: bool) -> GlobalSync:
        return GlobalSync(self.me, self.s.addr, self.mine(), reply)

    # ---- local requests -------------------------------------------------------------------

    def register(self, e: Register) -> None:
        cur = self.table.get(e.name)
        if cur is not None:
            if cur.pid == e.pid:
                self.actions.append(Reply(e.ref))
            else:
                self.refuse_taken(e.ref, e.name, cur.pid)
            return
        c = Claim(e.ref, e.name, e.pid, e.stamp, self.leader_of(e.name),
                  self.now + CLAIM_TIMEOUT_S)
        self.claims[e.ref] = c
        self.ask(c)

    def refuse_taken(self, ref: int, name: str, holder: Any) -> None:
        self.actions.append(Reply(ref, "already_registered",
                                  f"global name {name!r} is held by {holder}", holder))

    def ask(self, c: Claim) -> None:
        if c.leader == self.me:
            granted, holder = self.arbitrate(c.name, c.pid, self.me)
            self.verdict(c.ref, granted, holder)
        else:
            self.send(c.leader, GlobalClaim(self.me, self.s.addr, c.ref, c.name, c.pid))

    def unregister(self, e: Unregister) -> None:
        cur = self.table.get(e.name)
        if cur is None or cur.pid != e.pid or cur.node != self.me:
            self.actions.append(Reply(e.ref, "not_registered",
                                      f"this process does not hold global name {e.name!r}"))
            return
        del self.table[e.name]
        self.broadcast(GlobalRemove(self.me, self.s.addr, e.name, e.pid))
        self.actions.append(Reply(e.ref))

    def process_exited(self, pid: Any) -> None:
        for name, reg in list(self.table.items()):
            if reg.pid == pid and reg.node == self.me:
                del self.table[name]
                self.broadcast(GlobalRemove(self.me, self.s.addr, name, pid))
        for ref, c in list(self.claims.items()):
            if c.pid == pid:
                del self.claims[ref]  # the leader's reservation is released by its grant

    # ---- the leader's side ----------------------------------------------------------------

    def arbitrate(self, name: str, pid: Any, node: str) -> tuple[bool, Any]:
        cur = self.table.get(name)
        if cur is not None and cur.pid != pid:
            return False, cur.pid
        res = self.reserved.get(name)
        if res is not None and res.pid != pid and res.deadline > self.now:
            return False, res.pid
        if cur is None:
            self.reserved[name] = Reservation(name, pid, node, self.now + RESERVE_S)
        return True, None

    # ---- the registrant's side ------------------------------------------------------------

    def verdict(self, ref: int, granted: bool, holder: Any) -> None:
        c = self.claims.pop(ref, None)
        if c is None:
            return
        if not granted:
            self.refuse_taken(ref, c.name, holder)
            return
        cur = self.table.get(c.name)
        if cur is not None and cur.pid != c.pid:  # committed elsewhere meanwhile
            self.release(c)
            self.refuse_taken(ref, c.name, cur.pid)
            return
        if cur is None:
            reg = Reg(c.name, c.pid, self.me, c.stamp)
            self.table[c.name] = reg
            self.reserved.pop(c.name, None)
            self.broadcast(GlobalAdd(self.me, self.s.addr, GlobalReg(c.name, c.pid, c.stamp)))
        self.actions.append(Reply(ref))

    def release(self, c: Claim) -> None:
        """A granted claim that will not be committed: free the leader's reservation."""
        if c.leader == self.me:
            res = self.reserved.get(c.name)
            if res is not None and res.pid == c.pid:
                del self.reserved[c.name]
        elif c.leader in self.alive:
            self.send(c.leader, GlobalRemove(self.me, self.s.addr, c.name, c.pid))

    # ---- membership -----------------------------------------------------------------------

    def node_up(self, node: str, inc: int) -> None:
        if node == self.me:
            return
        known = self.alive.get(node)
        if known == inc:
            return
        if known is not None:
            self.node_down(node)  # a new incarnation: the old one's names died with it
        self.alive[node] = inc
        self.send(node, self.sync_frame(reply=True))

    def node_down(self, node: str) -> None:
        if node == self.me or node not in self.alive:
            return
        del self.alive[node]
        for name, reg in list(self.table.items()):
            if reg.node == node:
                del self.table[name]
        for name, res in list(self.reserved.items()):
            if res.node == node:
                del self.reserved[name]
        for ref, c in list(self.claims.items()):
            if c.leader == node:  # ask the new leader
                c = msgspec.structs.replace(c, leader=self.leader_of(c.name))
                self.claims[ref] = c
                self.ask(c)

    # ---- frames ---------------------------------------------------------------------------

    def received(self, f: Any) -> None:
        if f.src not in self.alive:
            self.actions.append(Count("stale_frames"))  # from a member we believe gone
            return
        if isinstance(f, GlobalClaim):
            granted, holder = self.arbitrate(f.name, f.pid, f.src)
            self.send(f.src, GlobalVerdict(self.me, self.s.addr, f.ref, f.name, f.pid,
                                           granted, holder))
        elif isinstance(f, GlobalVerdict):
            c = self.claims.get(f.ref)
            if c is not None and c.name == f.name and c.leader == f.src:
                self.verdict(f.ref, f.granted, f.holder)
                return
            if c is not None:  # a leader's it no longer is (declared dead, then back)
                self.actions.append(Count("stale_frames"))
            if f.granted and getattr(self.table.get(f.name), "pid", None) != f.pid:
                # Our process exited while it waited, an earlier leader's grant was used,
                # or the claim went to another leader: free this node's reservation.
                self.send(f.src, GlobalRemove(self.me, self.s.addr, f.name, f.pid))
        elif isinstance(f, GlobalAdd):
            self.merge(Reg(f.reg.name, f.reg.pid, f.src, f.reg.stamp))
        elif isinstance(f, GlobalRemove):
            self.removed(f.src, f.name, f.pid)
        elif isinstance(f, GlobalSync):
            names = {r.name: r for r in f.regs}
            for name, reg in list(self.table.items()):
                if reg.node == f.src and (name not in names or names[name].pid != reg.pid):
                    del self.table[name]
            for r in f.regs:
                self.merge(Reg(r.name, r.pid, f.src, r.stamp))
            if f.reply:
                self.send(f.src, self.sync_frame(reply=False))

    def removed(self, src: str, name: str, pid: Any) -> None:
        """``src`` says ``pid`` no longer holds (or claims) ``name``."""
        cur = self.table.get(name)
        if cur is not None and cur.node == src and cur.pid == pid:
            del self.table[name]
        res = self.reserved.get(name)
        if res is not None and res.node == src and res.pid == pid:
            del self.reserved[name]

    def merge(self, new: Reg) -> None:
        """An owner's registration: taken as it is, unless the table holds the name for
        another pid; then the resolver keeps one, and the loser's owner tells its process."""
        res = self.reserved.get(new.name)
        if res is not None and res.pid == new.pid:
            del self.reserved[new.name]
        cur = self.table.get(new.name)
        if cur is None or (cur.pid == new.pid and cur.node == new.node):
            self.table[new.name] = new
            return
        winner, loser = (new, cur) if beats(new, cur) else (cur, new)
        self.table[new.name] = winner
        self.actions.append(Count("conflicts"))
        if loser.node == self.me:
            self.actions.append(Notify(loser.pid, loser.name, winner.pid))
            self.broadcast(GlobalRemove(self.me, self.s.addr, loser.name, loser.pid))

    # ---- time -----------------------------------------------------------------------------

    def tick(self) -> None:
        for name, res in list(self.reserved.items()):
            if res.deadline <= self.now:
                del self.reserved[name]
        for ref, c in list(self.claims.items()):
            if c.deadline <= self.now:
                del self.claims[ref]
                self.actions.append(Reply(ref, "no_answer", f"the leader of global name "
                                          f"{c.name!r} ({c.leader}) did not answer"))
        if self.now >= self.next_sync_at:
            self.next_sync_at = self.now + SYNC_S
            if self.alive:
                frame = self.sync_frame(reply=False)
                for node in sorted(self.alive):
                    self.send(node, frame)


def next_wake(state: GlobalState) -> float:
    times = [state.next_sync_at]
    times.extend(c.deadline for c in state.claims.values())
    times.extend(r.deadline for r in state.reserved.values())
    return min(times)
