"""The lender's bookkeeping as a pure state machine: ``decide(state, event) -> (state,
actions)``. The lender's loop (:mod:`._lender`) turns what its descriptors say into events
and carries out the actions; nothing here touches a process or a socket.

What it keeps: the spare (made, then taken), the children lent and who took each (an
*owner*, a supervisor's pid), the dead children left unreaped for their supervisor to read
(*zombies*, each with its status, which the lender, its parent, reads without reaping), the
statuses of the children reaped last, and the questions waiting for a death.

Invariants (``tests/test_loans.py`` checks them over random event sequences):

* a pid is in at most one of: the spare, lent, zombies, statuses;
* a dead child's group is killed at its death, and it is reaped exactly once: when its
  supervisor says it has read the status (``ReapAsked``), when asked for the status
  (``ExitAsked``), when its grace is over (``Tick``), or at once if nobody will ask (a spare
  let go, a child whose owner died);
* an owner is watched from the first child lent to it until it has none (or died), and a
  child whose owner died is killed;
* every question is answered exactly once: at once if the status is known or the pid is
  not the lender's child (-1), else at that child's death (every question waiting for it,
  from any link: another process's question must not make its supervisor's unknown);
* a ``ReapAsked`` that comes before the death is seen (its supervisor, woken by the same
  death, read the zombie first) reaps the child at its death, not after its grace;
* the statuses of the last ``STATUSES_KEPT`` children reaped are kept, for a question that
  comes late (the oldest go first; a pid the kernel gives a new spare drops its old one).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["LoanState", "decide", "SpareMade", "TakenBy", "OwnerDied", "ChildDied",
           "ReapAsked", "ExitAsked", "LinkClosed", "Tick", "Watch", "Unwatch", "Kill",
           "KillGroup", "Reap", "Answer", "SpareDied", "REMAKE_AFTER_S", "REMAKE_MAX_S",
           "REAP_GRACE_S", "STATUSES_KEPT", "UNKNOWN", "next_due", "owners"]

# A spare is made this long after the last was taken: made at once, its fork would take a
# CPU from the replacement's init, which is what the restart waits for.
REMAKE_AFTER_S = 0.05
REMAKE_MAX_S = 5.0  # spares that die untaken are made again less and less often, to this
# A dead child is left a zombie this long at most, so its supervisor can read its status from
# /proc (see _lending); then it is reaped and its status kept for an ExitAsked.
REAP_GRACE_S = 1.0
STATUSES_KEPT = 256
UNKNOWN = -1  # the status answered for a pid that is not the lender's child


class LoanState(msgspec.Struct, frozen=True):
    spare: int = 0  # the spare's pid (0: none)
    lent: dict[int, int] = {}  # pid -> its owner's pid (0: its owner died; killed)
    zombies: dict[int, tuple[int, float]] = {}  # pid -> (wait status, reap by)
    statuses: dict[int, int] = {}  # of reaped children, the last STATUSES_KEPT; oldest first
    asked: dict[int, tuple[int, ...]] = {}  # pid -> the links that asked (not dead yet)
    read: frozenset[int] = frozenset()  # live children whose Reap came early
    spare_deaths: int = 0  # spares in a row that died untaken
    remake_at: float = 0.0  # monotonic: make a spare then (when there is none)


# ---- events ---------------------------------------------------------------------------------

class SpareMade(msgspec.Struct, frozen=True):
    pid: int


class TakenBy(msgspec.Struct, frozen=True):
    """Child ``pid`` said supervisor ``owner`` took it; ``owner_alive``: the loop could watch
    that supervisor (a pidfd), so it was still alive."""

    pid: int
    owner: int
    owner_alive: bool
    now: float


class OwnerDied(msgspec.Struct, frozen=True):
    owner: int


class ChildDied(msgspec.Struct, frozen=True):
    pid: int
    status: int  # as os.waitpid gives it, read without reaping
    now: float


class ReapAsked(msgspec.Struct, frozen=True):
    pid: int  # its supervisor read the status from /proc


class ExitAsked(msgspec.Struct, frozen=True):
    pid: int
    link: int  # which link asked (the loop's number for it)


class LinkClosed(msgspec.Struct, frozen=True):
    link: int


class Tick(msgspec.Struct, frozen=True):
    now: float


# ---- actions --------------------------------------------------------------------------------

class Watch(msgspec.Struct, frozen=True):
    owner: int


class Unwatch(msgspec.Struct, frozen=True):
    owner: int


class Kill(msgspec.Struct, frozen=True):
    pid: int  # SIGKILL it and its process group


class KillGroup(msgspec.Struct, frozen=True):
    pid: int  # SIGKILL the dead leader's group (its id is safe until the leader is reaped)


class Reap(msgspec.Struct, frozen=True):
    pid: int


class Answer(msgspec.Struct, frozen=True):
    link: int
    pid: int
    status: int


class SpareDied(msgspec.Struct, frozen=True):
    """A spare died untaken (logged and counted by the loop); the next in ``delay`` s."""

    pid: int
    status: int
    delay: float


def decide(state: LoanState, event: Any) -> tuple[LoanState, list[Any]]:
    """Consume one event; return the next state and the actions to carry out, in order."""
    d = _Draft(state)
    handler = getattr(d, "on_" + type(event).__name__)
    handler(event)
    return d.freeze(), d.actions


def owners(lent: dict[int, int]) -> set[int]:
    """The supervisors watched: each owner of a living lent child (``LoanState.lent``)."""
    return {o for o in lent.values() if o}


class _Draft:
    def __init__(self, s: LoanState) -> None:
        self.spare = s.spare
        self.lent = dict(s.lent)
        self.zombies = dict(s.zombies)
        self.statuses = dict(s.statuses)
        self.asked = dict(s.asked)
        self.read = set(s.read)
        self.spare_deaths = s.spare_deaths
        self.remake_at = s.remake_at
        self.actions: list[Any] = []

    def freeze(self) -> LoanState:
        return LoanState(self.spare, self.lent, self.zombies, self.statuses, self.asked,
                         frozenset(self.read), self.spare_deaths, self.remake_at)

    def on_SpareMade(self, e: SpareMade) -> None:
        self.spare = e.pid
        self.statuses.pop(e.pid, None)  # an old child's, whose pid the kernel gave again

    def on_TakenBy(self, e: TakenBy) -> None:
        if e.pid != self.spare:
            return  # only the spare is taken, and says so once (a late word: ignored)
        self.spare = 0
        self.remake_at = e.now + REMAKE_AFTER_S
        self.spare_deaths = 0
        if not e.owner_alive:
            self.lent[e.pid] = 0
            self.actions.append(Kill(e.pid))  # its supervisor is gone: so must it be
            return
        if e.owner not in owners(self.lent):
            self.actions.append(Watch(e.owner))
        self.lent[e.pid] = e.owner

    def on_OwnerDied(self, e: OwnerDied) -> None:
        mine = [pid for pid, owner in self.lent.items() if owner == e.owner]
        if not mine:
            return
        self.actions.append(Unwatch(e.owner))
        for pid in mine:
            self.lent[pid] = 0
            self.actions.append(Kill(pid))

    def on_ChildDied(self, e: ChildDied) -> None:
        pid = e.pid
        if pid != self.spare and pid not in self.lent:
            return  # not a child it keeps (swept as an orphan), or reported twice
        self.actions.append(KillGroup(pid))
        owner = self.lent.pop(pid, None)
        nobody_asks = False
        if pid == self.spare:
            self.spare = 0
            if e.status == 0:  # taken, then let go before it was told anything
                self.remake_at = e.now + REMAKE_AFTER_S
                nobody_asks = True
            else:
                self.spare_deaths += 1
                delay = min(REMAKE_AFTER_S * 2 ** self.spare_deaths, REMAKE_MAX_S)
                self.remake_at = e.now + delay
                self.actions.append(SpareDied(pid, e.status, delay))
        elif owner:
            if owner not in owners(self.lent):
                self.actions.append(Unwatch(owner))
        else:
            nobody_asks = True  # its supervisor died: killed for it
        links = self.asked.pop(pid, ())
        read_already = pid in self.read
        self.read.discard(pid)
        if links:
            self.keep_status(pid, e.status)
            self.actions += [Answer(link, pid, e.status) for link in links]
            self.actions.append(Reap(pid))
        elif nobody_asks or read_already:
            self.keep_status(pid, e.status)  # should anyone ask after all
            self.actions.append(Reap(pid))
        else:  # its supervisor reads it from /proc (or, for an untaken spare, may ask)
            self.zombies[pid] = (e.status, e.now + REAP_GRACE_S)

    def on_ReapAsked(self, e: ReapAsked) -> None:
        zombie = self.zombies.pop(e.pid, None)
        if zombie is not None:
            self.keep_status(e.pid, zombie[0])  # read already; kept should it be asked again
            self.actions.append(Reap(e.pid))
        elif e.pid in self.lent or e.pid == self.spare:  # dead, its death not seen yet
            self.read.add(e.pid)

    def on_ExitAsked(self, e: ExitAsked) -> None:
        pid = e.pid
        if pid in self.zombies:
            status, _ = self.zombies.pop(pid)
            self.keep_status(pid, status)
            self.actions += [Answer(e.link, pid, status), Reap(pid)]
        elif pid in self.statuses:
            self.actions.append(Answer(e.link, pid, self.statuses[pid]))
        elif pid in self.lent or pid == self.spare:
            self.asked[pid] = (*self.asked.get(pid, ()), e.link)  # answered at its death
        else:
            self.actions.append(Answer(e.link, pid, UNKNOWN))

    def on_LinkClosed(self, e: LinkClosed) -> None:
        for pid, links in list(self.asked.items()):
            if e.link in links:
                rest = tuple(link for link in links if link != e.link)
                if rest:
                    self.asked[pid] = rest
                else:
                    del self.asked[pid]

    def on_Tick(self, e: Tick) -> None:
        for pid, (status, due) in list(self.zombies.items()):
            if due <= e.now:
                del self.zombies[pid]
                self.keep_status(pid, status)
                self.actions.append(Reap(pid))

    def keep_status(self, pid: int, status: int) -> None:
        self.statuses[pid] = status
        while len(self.statuses) > STATUSES_KEPT:
            del self.statuses[next(iter(self.statuses))]



def next_due(state: LoanState) -> float:
    """When the next zombie's grace is over (inf: none): the loop's next ``Tick``."""
    return min((due for _, due in state.zombies.values()), default=float("inf"))
