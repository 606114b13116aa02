"""The lender's bookkeeping (``supervisors/_loans.py``), a pure state machine, driven by random
event sequences against a model of the processes it keeps; its invariants (the module doc)
checked after every step."""

from __future__ import annotations

from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from prismatic.supervisors import _loans as L

OWNERS = (1001, 1002, 1003)
LINKS = (1, 2)
STATUSES = (0, 9, 256, 15 << 8)


class Loans(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.state = L.LoanState()
        self.now = 0.0
        self.next_pid = 100
        self.alive: set[int] = set()  # the lender's live children
        self.dead: dict[int, int] = {}  # pid -> its status
        self.reaped: Counter[int] = Counter()
        self.group_killed: set[int] = set()
        self.killed: set[int] = set()
        self.owner_of: dict[int, int] = {}
        self.dead_owners: set[int] = set()
        self.watched: set[int] = set()
        self.questions: dict[tuple[int, int], int] = {}  # (link, pid) -> times asked
        self.answers: list[L.Answer] = []

    def feed(self, event: object) -> list[object]:
        self.state, actions = L.decide(self.state, event)
        for a in actions:
            if isinstance(a, L.Reap):
                assert a.pid in self.dead, f"reaped {a.pid}, which is not dead"
                assert a.pid in self.group_killed, f"{a.pid} reaped before its group killed"
                self.reaped[a.pid] += 1
                assert self.reaped[a.pid] == 1, f"{a.pid} reaped twice"
            elif isinstance(a, L.KillGroup):
                assert a.pid in self.dead
                self.group_killed.add(a.pid)
            elif isinstance(a, L.Kill):
                self.killed.add(a.pid)
            elif isinstance(a, L.Watch):
                assert a.owner not in self.watched
                self.watched.add(a.owner)
            elif isinstance(a, L.Unwatch):
                self.watched.remove(a.owner)
            elif isinstance(a, L.Answer):
                key = (a.link, a.pid)
                assert self.questions.get(key), f"an answer nobody waits for: {a}"
                self.questions[key] -= 1
                self.answers.append(a)
                if a.pid in self.dead:
                    assert a.status == self.dead[a.pid]
                elif a.pid not in self.alive:
                    assert a.status == L.UNKNOWN
                else:
                    raise AssertionError(f"answered {a.pid} while it lives")
        return actions

    @rule()
    @precondition(lambda self: not self.state.spare)
    def make_spare(self) -> None:
        pid, self.next_pid = self.next_pid, self.next_pid + 1
        self.alive.add(pid)
        self.feed(L.SpareMade(pid))

    @rule(owner=st.sampled_from(OWNERS))
    @precondition(lambda self: bool(self.state.spare))
    def take(self, owner: int) -> None:
        pid = self.state.spare
        self.owner_of[pid] = owner
        actions = self.feed(L.TakenBy(pid, owner, owner not in self.dead_owners, self.now))
        if owner in self.dead_owners:
            assert L.Kill(pid) in actions

    @rule(data=st.data())
    def taken_late(self, data: st.DataObject) -> None:
        """A child's word that comes after its death: changes nothing."""
        if not self.dead:
            return
        pid = data.draw(st.sampled_from(sorted(self.dead)))
        before = self.state
        assert self.feed(L.TakenBy(pid, OWNERS[0], True, self.now)) == []
        assert self.state == before

    @rule(data=st.data(), status=st.sampled_from(STATUSES))
    def child_dies(self, data: st.DataObject, status: int) -> None:
        if not self.alive:
            return
        pid = data.draw(st.sampled_from(sorted(self.alive)))
        self.alive.remove(pid)
        self.dead[pid] = status
        self.feed(L.ChildDied(pid, status, self.now))
        assert pid in self.group_killed

    @rule(owner=st.sampled_from(OWNERS))
    def owner_dies(self, owner: int) -> None:
        if owner in self.dead_owners:
            return
        self.dead_owners.add(owner)
        self.feed(L.OwnerDied(owner))
        for pid in self.alive:
            if self.owner_of.get(pid) == owner and pid not in (self.state.spare,):
                assert pid in self.killed, f"{pid}, lent to the dead {owner}, not killed"

    @rule(data=st.data())
    def reap_asked(self, data: st.DataObject) -> None:
        pids = sorted({*self.alive, *self.dead, 7})
        self.feed(L.ReapAsked(data.draw(st.sampled_from(pids))))

    @rule(data=st.data(), link=st.sampled_from(LINKS))
    def exit_asked(self, data: st.DataObject, link: int) -> None:
        pid = data.draw(st.sampled_from(sorted({*self.alive, *self.dead, 7})))
        if self.questions.get((link, pid)):
            return  # one question per link and child at a time (several links may ask)
        self.questions[(link, pid)] = self.questions.get((link, pid), 0) + 1
        self.feed(L.ExitAsked(pid, link))

    @rule(link=st.sampled_from(LINKS))
    def link_closed(self, link: int) -> None:
        self.feed(L.LinkClosed(link))
        for key in list(self.questions):
            if key[0] == link:
                self.questions[key] = 0  # nobody to answer now

    @rule(dt=st.sampled_from((0.01, 0.5, L.REAP_GRACE_S + 0.01)))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.feed(L.Tick(self.now))

    # ---- invariants -------------------------------------------------------------------------

    @invariant()
    def disjoint(self) -> None:
        s = self.state
        if not hasattr(self, "alive"):
            return
        homes = [{s.spare} - {0}, set(s.lent), set(s.zombies)]
        for i, a in enumerate(homes):
            for b in homes[i + 1:]:
                assert not a & b, (a, b)
        assert set(s.lent) | ({s.spare} - {0}) <= self.alive
        assert set(s.zombies) <= set(self.dead) and not set(s.zombies) & set(self.reaped)
        assert len(s.statuses) <= L.STATUSES_KEPT
        assert s.read <= set(s.lent) | {s.spare}  # an early Reap is kept only for the living

    @invariant()
    def owners_watched_while_they_have_children(self) -> None:
        if not hasattr(self, "alive"):
            return
        assert self.watched == {o for o in self.state.lent.values() if o}

    @invariant()
    def every_dead_child_is_reaped_or_waits_its_grace(self) -> None:
        if not hasattr(self, "alive"):
            return
        for pid in self.dead:
            if not self.reaped[pid]:
                assert pid in self.state.zombies, f"{pid} dead, neither reaped nor a zombie"
                assert self.state.zombies[pid][1] > self.now

    @invariant()
    def questions_wait_only_for_the_living(self) -> None:
        if not hasattr(self, "alive"):
            return
        for (_, pid), n in self.questions.items():
            assert not n or pid in self.alive, f"a question about dead {pid} unanswered"


TestLoans = Loans.TestCase
TestLoans.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_a_let_go_spare_is_reaped_at_once_and_the_next_made_soon():
    s, a = L.decide(L.LoanState(), L.SpareMade(5))
    s, a = L.decide(s, L.ChildDied(5, 0, 10.0))
    assert a == [L.KillGroup(5), L.Reap(5)] and s.remake_at == 10.0 + L.REMAKE_AFTER_S
    assert s.spare_deaths == 0


def test_spares_dying_untaken_are_made_again_less_and_less_often():
    s = L.LoanState()
    delays = []
    for pid in range(1, 9):
        s, _ = L.decide(s, L.SpareMade(pid))
        s, a = L.decide(s, L.ChildDied(pid, 1 << 8, 0.0))
        delays.append(next(x.delay for x in a if isinstance(x, L.SpareDied)))
    assert delays == sorted(delays) and delays[0] == 2 * L.REMAKE_AFTER_S
    assert delays[-1] == L.REMAKE_MAX_S
    s, _ = L.decide(s, L.SpareMade(20))
    s, _ = L.decide(s, L.TakenBy(20, 1001, True, 0.0))
    assert s.spare_deaths == 0  # a take starts the count again


def test_the_usual_life_of_a_loan():
    s, _ = L.decide(L.LoanState(), L.SpareMade(5))
    s, a = L.decide(s, L.TakenBy(5, 1001, True, 1.0))
    assert a == [L.Watch(1001)] and s.spare == 0 and s.lent == {5: 1001}
    s, a = L.decide(s, L.ChildDied(5, 9, 2.0))
    assert a == [L.KillGroup(5), L.Unwatch(1001)] and s.zombies == {5: (9, 2.0 + L.REAP_GRACE_S)}
    s, a = L.decide(s, L.ReapAsked(5))  # its supervisor read /proc/5/stat
    assert a == [L.Reap(5)] and not s.zombies and s.statuses == {5: 9}  # kept, if asked


def test_a_second_question_about_a_living_child_waits_for_its_death_too():
    """Any process of the node's user may ask (ExitOf) on a link of its own: a question
    already waiting for a child's death (another's, or a link its supervisor has since
    replaced) must not make its supervisor's own question answered unknown (a status lost:
    taken as killed) while the child lives."""
    s, _ = L.decide(L.LoanState(), L.SpareMade(5))
    s, _ = L.decide(s, L.TakenBy(5, 1001, True, 1.0))
    s, a = L.decide(s, L.ExitAsked(5, 1))
    assert a == []
    s, a = L.decide(s, L.ExitAsked(5, 2))
    assert a == []  # not answered -1: 5 is the lender's, and alive
    s, a = L.decide(s, L.ChildDied(5, 9, 2.0))
    assert L.Answer(1, 5, 9) in a and L.Answer(2, 5, 9) in a and a[-1] == L.Reap(5)


def test_a_reap_asked_before_the_death_is_seen_reaps_at_the_death():
    """Its supervisor may read the zombie and say Reap before the lender's loop has turned
    the child's pidfd into ChildDied (both are woken by the same death): the child is reaped
    then, not left a zombie for the whole grace."""
    s, _ = L.decide(L.LoanState(), L.SpareMade(5))
    s, _ = L.decide(s, L.TakenBy(5, 1001, True, 1.0))
    s, a = L.decide(s, L.ReapAsked(5))
    assert a == []
    s, a = L.decide(s, L.ChildDied(5, 9, 2.0))
    assert a[-1] == L.Reap(5) and not s.zombies and s.statuses == {5: 9}
