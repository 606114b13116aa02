"""Tests of the pure supervisor state machine ``decide(state, event) -> (state, actions)``.

Part (a): examples of OTP's ``supervisor.erl`` contract, one behaviour per test.
Part (b): a hypothesis state machine that drives ``decide`` through a simulated I/O loop (the
"world": fake pids, start outcomes, crashes, delayed and reordered exits, API calls, time) and
compares every action against an independent reference model, ``Model``: OTP's supervisor
written in direct style, where starting or stopping a child blocks (a generator ``yield``) and
everything else waits in a mailbox, read in order, with a selective receive for exits.
"""

from __future__ import annotations

import collections
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings, target
from hypothesis import Phase as Phase_
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test,
)

from prismatic._childspec import (
    AutoShutdown, ChildSpec, ChildType, RestartType, ShutdownKind, Strategy, SupFlags,
    spec_to_wire,
)
from prismatic._exit import Crashed, ExitCode, Killed, Normal, NoProc, Shutdown
from prismatic._errors import ChildSpecError
from prismatic.supervisors import decide, initial_state
from prismatic.supervisors._events import (
    ChildInfo, ChildStatus, CountChildren, DeleteChild, Err, Exit, Exited, Ignored, Init,
    LifecycleKind, Ok, Phase, Ready, Reply, Report, Request, RestartChild, ShutdownRequested,
    StartChild, StartDynamic, StartFailed, StartProc, Started, StopMany, StopProc,
    TerminateChild, TryAgain, WhichChild, WhichChildren, GetChildSpec,
)

BOOM = Crashed("builtins.RuntimeError", "boom")
SHUTDOWN = Shutdown()
K = LifecycleKind


def spec(id: str, restart: str = "permanent", shutdown: Any = None, significant: bool = False,
         type: str | None = None, args: tuple = ()) -> ChildSpec:
    return ChildSpec(id=id, start="tests.apps:nothing", args=args, restart=restart,
                     shutdown=shutdown, significant=significant, type=type)


class Sup:
    """A hand-driven supervisor for the example tests: it plays the I/O loop."""

    def __init__(self, *specs: ChildSpec, **flags: Any) -> None:
        self.flags = SupFlags(**flags)
        self.specs = specs
        self.state = initial_state(self.flags, tuple(specs))
        self.now = 0.0
        self._pid = 100
        self.pid: dict[str, int] = {}  # key -> its latest pid
        self._ref = 0
        self.log: list[Any] = []

    def feed(self, ev: Any) -> list[Any]:
        self.state, acts = decide(self.state, ev)
        self.log += acts
        return acts

    def init(self) -> list[Any]:
        return self.feed(Init(self.now))

    def started(self, key: str) -> list[Any]:
        self._pid += 1
        self.pid[key] = self._pid
        return self.feed(Started(key, self._pid, self.now))

    def failed(self, key: str, reason: Any = BOOM) -> list[Any]:
        return self.feed(StartFailed(key, reason, self.now))

    def ignored(self, key: str) -> list[Any]:
        return self.feed(Ignored(key, self.now))

    def exited(self, who: str | int, reason: Any = SHUTDOWN) -> list[Any]:
        pid = self.pid[who] if isinstance(who, str) else who
        return self.feed(Exited(pid, reason, self.now))

    def start_all(self, acts: list[Any]) -> list[Any]:
        """Answer Started to every StartProc, following the chain; all actions seen."""
        out = list(acts)
        while sp := [a for a in acts if isinstance(a, StartProc)]:
            assert len(sp) == 1  # one start at a time
            acts = self.started(sp[0].key)
            out += acts
        return out

    def boot(self) -> list[Any]:
        out = self.start_all(self.init())
        assert Ready() in out
        assert self.state.phase is Phase.RUNNING
        return out

    def request(self, op: Any) -> list[Any]:
        self._ref += 1
        return self.feed(Request(self._ref, op, self.now))

    def call(self, op: Any) -> Any:
        """A request answered at once: its result."""
        acts = self.request(op)
        replies = [a for a in acts if isinstance(a, Reply) and a.ref == self._ref]
        assert len(replies) == 1, acts
        return replies[0].result

    def row(self, key: str):
        return next((c for c in self.state.children if c.key == key), None)

    def which(self) -> list[ChildInfo]:
        return self.call(WhichChildren()).value


def trace(acts: list[Any]) -> list[str]:
    """The effects, compactly: 'start:a', 'stop:b', 'stopmany:2', 'ready', 'exit', 'reply'."""
    out = []
    for a in acts:
        if isinstance(a, StartProc):
            out.append(f"start:{a.key}")
        elif isinstance(a, StopProc):
            out.append(f"stop:{a.key}")
        elif isinstance(a, StopMany):
            out.append(f"stopmany:{len(a.pids)}")
        elif isinstance(a, Ready):
            out.append("ready")
        elif isinstance(a, Exit):
            out.append("exit")
        elif isinstance(a, Reply):
            out.append("reply")
    return out


def reports(acts: list[Any], kind: LifecycleKind | None = None) -> list[Report]:
    """The reports of ``kind``; by default all but the deletions (checked on their own)."""
    return [a for a in acts if isinstance(a, Report)
            and (a.kind is kind if kind is not None else a.kind is not K.CHILD_DELETED)]


def exit_of(acts: list[Any]) -> Exit:
    ex = [a for a in acts if isinstance(a, Exit)]
    assert len(ex) == 1, acts
    return ex[0]


# =============================================================================================
# (a) examples
# =============================================================================================

# ---- init -----------------------------------------------------------------------------------

def test_init_starts_children_in_order_one_at_a_time():
    s = Sup(spec("a"), spec("b"), spec("c"))
    assert s.init() == [StartProc("a", s.specs[0])]
    assert trace(s.started("a")) == ["start:b"]
    assert trace(s.started("b")) == ["start:c"]
    acts = s.started("c")
    assert trace(acts) == ["ready"]
    assert [r.key for r in reports(s.log, K.CHILD_STARTED)] == ["a", "b", "c"]
    assert s.state.phase is Phase.RUNNING and s.state.job is None


def test_init_without_children_is_ready_at_once():
    s = Sup()
    assert s.init() == [Ready()]
    s2 = Sup(spec("w"), strategy="simple_one_for_one")
    assert s2.init() == [Ready()]  # simple_one_for_one starts nothing at init


def test_init_failure_stops_started_children_in_reverse_and_exits():
    s = Sup(spec("a"), spec("b"), spec("c"), spec("d"))
    s.init()
    s.started("a")
    s.started("b")
    acts = s.failed("c", ExitCode(3))
    assert [r.key for r in reports(acts, K.START_ERROR)] == ["c"]
    assert acts[-1] == StopProc("b", s.pid["b"], 5.0)
    assert trace(s.exited("b")) == ["stop:a"]
    acts = s.exited("a")
    assert trace(acts) == ["exit"]
    reason = exit_of(acts).reason
    assert isinstance(reason, Shutdown)
    assert reason.detail.startswith("failed_to_start_child c")
    assert s.state.phase is Phase.STOPPED
    # after the exit: no more starts; requests answered noproc
    assert s.feed(Exited(999, BOOM)) == []
    assert s.call(WhichChildren()).reason == "noproc"


def test_init_failure_consumes_an_exit_that_arrived_early():
    """b dies while c starts: its exit is deferred, then taken by the stop (selective receive)."""
    s = Sup(spec("a"), spec("b"), spec("c"))
    s.init()
    s.started("a")
    s.started("b")
    assert s.exited("b", BOOM) == []  # deferred: the init awaits c's start
    acts = s.failed("c")
    assert trace(acts) == ["stop:b", "stop:a"]  # b's exit was already there
    assert [r.reason for r in reports(acts, K.SHUTDOWN_ERROR)] == [BOOM]
    acts = s.exited("a")
    assert trace(acts) == ["exit"]
    assert exit_of(acts).reason.detail.startswith("failed_to_start_child c")


def test_init_ignore_keeps_permanent_spec_and_drops_temporary():
    s = Sup(spec("a"), spec("t", restart="temporary"), spec("b"))
    s.init()
    s.ignored("a")
    s.ignored("t")
    assert trace(s.started("b")) == ["ready"]
    assert [(i.id, i.pid) for i in s.which()] == [("b", s.pid["b"]), ("a", None)]


def test_events_during_init_are_deferred_until_ready():
    s = Sup(spec("a"), spec("b"))
    s.init()
    s.started("a")
    assert s.request(WhichChildren()) == []
    assert s.feed(ShutdownRequested(0.0)) == []
    acts = s.started("b")
    assert trace(acts) == ["ready", "reply", "stop:b"]


# ---- strategies -----------------------------------------------------------------------------

def test_one_for_one_restarts_only_the_child():
    s = Sup(spec("a"), spec("b"), spec("c"), intensity=10)
    s.boot()
    old = dict(s.pid)
    acts = s.exited("b", BOOM)
    assert trace(acts) == ["start:b"]
    assert [(r.kind, r.key, r.reason) for r in reports(acts)] == [(K.CHILD_EXITED, "b", BOOM)]
    s.started("b")
    assert s.pid["a"] == old["a"] and s.pid["c"] == old["c"] and s.pid["b"] != old["b"]
    assert all(c.status is ChildStatus.RUNNING for c in s.state.children)


def test_one_for_all_stops_others_in_reverse_and_restarts_all_in_order():
    s = Sup(spec("a"), spec("b"), spec("t", restart="temporary"), spec("c"),
            strategy="one_for_all", intensity=10)
    s.boot()
    acts = s.exited("b", Killed(9))
    assert trace(acts) == ["stop:c"]  # one stop at a time
    assert trace(s.exited("c")) == ["stop:t"]
    assert trace(s.exited("t")) == ["stop:a"]
    assert trace(s.exited("a")) == ["start:a"]
    assert trace(s.started("a")) == ["start:b"]
    assert trace(s.started("b")) == ["start:c"]  # the temporary child is not restarted
    assert trace(s.started("c")) == []
    assert [i.id for i in s.which()] == ["c", "b", "a"]
    assert len(s.state.restarts) == 1  # one restart, however many children it touched


def test_one_for_all_restarts_terminated_children_too():
    """OTP's terminate_children + start_children: a child stopped with terminate_child has
    pid undefined and is started again by a one_for_all restart."""
    s = Sup(spec("a"), spec("b"), strategy="one_for_all", intensity=10)
    s.boot()
    s.request(TerminateChild("b"))
    s.exited("b")
    assert s.row("b").status is ChildStatus.UNDEFINED
    acts = s.exited("a", BOOM)
    assert trace(acts) == ["start:a"]  # b is not running: nothing to stop
    assert trace(s.started("a")) == ["start:b"]


def test_rest_for_one_restarts_the_child_and_those_after_it():
    s = Sup(spec("a"), spec("b"), spec("c"), spec("d"), strategy="rest_for_one", intensity=10)
    s.boot()
    a_pid = s.pid["a"]
    assert trace(s.exited("b", BOOM)) == ["stop:d"]
    assert trace(s.exited("d")) == ["stop:c"]
    assert trace(s.exited("c")) == ["start:b"]
    assert trace(s.started("b")) == ["start:c"]
    assert trace(s.started("c")) == ["start:d"]
    assert trace(s.started("d")) == []
    assert s.pid["a"] == a_pid
    # the last child: only itself
    assert trace(s.exited("d", BOOM)) == ["start:d"]


def test_simple_one_for_one_dynamic_children():
    s = Sup(spec("w", args=(1,)), strategy="simple_one_for_one", intensity=10)
    s.boot()
    acts = s.request(StartDynamic((2, 3)))
    assert len(acts) == 1 and isinstance(acts[0], StartProc)
    assert acts[0].spec.args == (1, 2, 3) and acts[0].key == "w-0"
    acts = s.started("w-0")
    assert acts[-1] == Reply(s._ref, Ok(s.pid["w-0"]))
    s.request(StartDynamic(()))
    s.started("w-1")
    assert [(i.id, i.pid) for i in s.which()] == [(None, s.pid["w-1"]), (None, s.pid["w-0"])]
    assert s.call(CountChildren()).value == {"specs": 1, "active": 2, "supervisors": 0,
                                              "workers": 2}
    # a crash restarts just that child, with the same args
    acts = s.exited("w-0", BOOM)
    assert trace(acts) == ["start:w-0"] and acts[-1].spec.args == (1, 2, 3)
    s.started("w-0")
    # terminate by pid
    acts = s.request(TerminateChild(s.pid["w-1"]))
    assert acts == [StopProc("w-1", s.pid["w-1"], 5.0)]
    acts = s.exited("w-1")
    assert acts[-1] == Reply(s._ref, Ok())
    assert len(s.which()) == 1
    # shutdown stops all dynamic children at once
    acts = s.feed(ShutdownRequested(0.0))
    assert acts == [StopMany((s.pid["w-0"],), 5.0)]
    acts = s.exited("w-0")
    assert exit_of(acts).reason == Shutdown()


def test_simple_one_for_one_api_errors():
    s = Sup(spec("w"), strategy="simple_one_for_one")
    s.boot()
    assert s.call(TerminateChild("w")).reason == "simple_one_for_one"
    assert s.call(RestartChild("w")).reason == "simple_one_for_one"
    assert s.call(DeleteChild("w")).reason == "simple_one_for_one"
    assert s.call(TerminateChild(4242)).reason == "not_found"
    assert s.call(StartChild(spec("x"))).reason == "badarg"
    # start fails: error reply, nothing added; ignore: ok undefined, nothing added
    s.request(StartDynamic(()))
    acts = s.failed("w-0")
    assert acts[-1].result.reason == "failed_to_start_child"
    s.request(StartDynamic(()))
    assert s.ignored("w-1")[-1] == Reply(s._ref, Ok(None))
    assert s.which() == []
    assert s.call(CountChildren()).value["specs"] == 1


def test_start_dynamic_on_a_static_supervisor_is_badarg():
    s = Sup(spec("a"))
    s.boot()
    assert s.call(StartDynamic((1,))).reason == "badarg"


# ---- restart types --------------------------------------------------------------------------

@pytest.mark.parametrize("restart,reason,restarted", [
    ("permanent", Normal(), True),
    ("permanent", Shutdown(), True),
    ("permanent", BOOM, True),
    ("transient", Normal(), False),
    ("transient", Shutdown(), False),
    ("transient", Shutdown("done"), False),
    ("transient", BOOM, True),
    ("transient", Killed(9), True),
    ("transient", ExitCode(2), True),
    ("transient", NoProc(), True),
    ("temporary", Normal(), False),
    ("temporary", BOOM, False),
    ("temporary", Killed(15), False),
])
def test_do_restart_by_restart_type(restart, reason, restarted):
    s = Sup(spec("a"), spec("x", restart=restart), spec("b"), intensity=5)
    s.boot()
    acts = s.exited("x", reason)
    assert trace(acts) == (["start:x"] if restarted else [])
    assert [(r.kind, r.key) for r in reports(acts)] == [(K.CHILD_EXITED, "x")]
    row = s.row("x")
    if restarted:
        assert len(s.state.restarts) == 1
    else:
        assert s.state.restarts == ()  # not a restart: intensity untouched
        if restart == "temporary":
            assert row is None  # temporary children are forgotten
        else:
            assert row.status is ChildStatus.UNDEFINED and row.pid is None
            assert ("x", None) in [(i.id, i.pid) for i in s.which()]


def test_exit_of_an_unknown_pid_is_ignored():
    s = Sup(spec("a"))
    s.boot()
    before = s.state
    assert s.exited(12345, BOOM) == []
    assert s.state == before


# ---- intensity ------------------------------------------------------------------------------

def test_otp_default_intensity_second_restart_within_period_shuts_down():
    s = Sup(spec("a"), spec("b"), spec("c"))  # intensity 1, period 5
    s.boot()
    s.now = 10.0
    assert trace(s.exited("b", BOOM)) == ["start:b"]
    s.started("b")
    s.now = 14.0
    acts = s.exited("b", BOOM)
    assert [(r.kind, r.key) for r in reports(acts)] == [(K.CHILD_EXITED, "b"),
                                                        (K.INTENSITY_EXCEEDED, "b")]
    assert trace(acts) == ["stop:c"]  # b is not running any more; reverse start order
    assert trace(s.exited("c")) == ["stop:a"]
    acts = s.exited("a")
    assert acts[-1] == Exit(Shutdown("reached_max_restart_intensity"))


def test_otp_default_intensity_restarts_spread_out_are_fine():
    s = Sup(spec("a"))
    s.boot()
    for t in (0.0, 5.25, 10.5, 16.0):
        s.now = t
        assert trace(s.exited("a", BOOM)) == ["start:a"]
        s.started("a")
    assert s.state.phase is Phase.RUNNING


def test_otp_default_intensity_restart_exactly_period_later_shuts_down():
    """OTP's boundary (R >= Now - Period): the restart exactly 5 s ago still counts."""
    s = Sup(spec("a"))
    s.boot()
    s.now = 10.0
    assert trace(s.exited("a", BOOM)) == ["start:a"]
    s.started("a")
    s.now = 15.0
    acts = s.exited("a", BOOM)
    assert (K.INTENSITY_EXCEEDED, "a") in [(r.kind, r.key) for r in reports(acts)]
    assert acts[-1] == Exit(Shutdown("reached_max_restart_intensity"))


def test_intensity_zero_never_restarts():
    s = Sup(spec("a"), intensity=0)
    s.boot()
    acts = s.exited("a", BOOM)
    assert trace(acts) == ["exit"]
    assert exit_of(acts).reason == Shutdown("reached_max_restart_intensity")


# ---- auto_shutdown --------------------------------------------------------------------------

def test_any_significant_shuts_down_when_a_significant_child_exits():
    s = Sup(spec("a"), spec("s", restart="transient", significant=True), spec("c"),
            auto_shutdown="any_significant")
    s.boot()
    acts = s.exited("s", Normal())
    assert [(r.kind, r.key) for r in reports(acts)] == [(K.CHILD_EXITED, "s"),
                                                        (K.AUTO_SHUTDOWN, "s")]
    assert trace(acts) == ["stop:c"]
    assert trace(s.exited("c")) == ["stop:a"]
    assert s.exited("a")[-1] == Exit(Shutdown("auto_shutdown"))


def test_any_significant_abnormal_transient_exit_is_a_restart_not_a_shutdown():
    s = Sup(spec("s", restart="transient", significant=True), spec("c"),
            auto_shutdown="any_significant")
    s.boot()
    assert trace(s.exited("s", BOOM)) == ["start:s"]
    assert reports(s.log, K.AUTO_SHUTDOWN) == []


def test_any_significant_temporary_abnormal_exit_shuts_down():
    s = Sup(spec("s", restart="temporary", significant=True), spec("c"),
            auto_shutdown="any_significant")
    s.boot()
    acts = s.exited("s", BOOM)
    assert trace(acts) == ["stop:c"]
    assert s.exited("c")[-1] == Exit(Shutdown("auto_shutdown"))


def test_non_significant_exit_never_shuts_down():
    s = Sup(spec("a", restart="transient"), spec("s", restart="transient", significant=True),
            auto_shutdown="any_significant")
    s.boot()
    assert s.exited("a", Normal()) == [Report(K.CHILD_EXITED, "a", s.pid["a"], Normal())]
    assert s.state.phase is Phase.RUNNING


def test_all_significant_waits_for_the_last_significant_child():
    s = Sup(spec("s1", restart="transient", significant=True), spec("p"),
            spec("s2", restart="temporary", significant=True),
            auto_shutdown="all_significant")
    s.boot()
    assert trace(s.exited("s1", Shutdown())) == []
    assert s.state.phase is Phase.RUNNING
    acts = s.exited("s2", Normal())
    assert reports(acts, K.AUTO_SHUTDOWN)
    assert trace(acts) == ["stop:p"]
    assert s.exited("p")[-1] == Exit(Shutdown("auto_shutdown"))


def test_all_significant_counts_a_restarting_significant_child_as_alive():
    """OTP's all_significant check skips only children with pid undefined; a child whose
    restart failed ({restarting, Pid}) still counts."""
    s = Sup(spec("s1", restart="transient", significant=True),
            spec("s2", restart="transient", significant=True), spec("p"),
            auto_shutdown="all_significant", intensity=5)
    s.boot()
    assert trace(s.exited("s1", BOOM)) == ["start:s1"]  # transient, abnormal: a restart
    assert s.exited("s2", Normal()) == []  # deferred while s1 starts
    acts = s.failed("s1")  # s1 restarting; s2's exit is handled before the TryAgain
    assert [(r.kind, r.key) for r in reports(acts)] == [(K.START_ERROR, "s1"),
                                                        (K.CHILD_EXITED, "s2")]
    assert trace(acts) == ["start:s1"]
    assert s.state.phase is Phase.RUNNING
    s.started("s1")
    acts = s.exited("s1", Shutdown())  # now the last significant child is gone
    assert reports(acts, K.AUTO_SHUTDOWN) and trace(acts) == ["stop:p"]


def test_simple_one_for_one_cannot_auto_shutdown():
    """OTP's bad_combination: refused when the flags are built, so no machine ever has it."""
    for mode in ("any_significant", "all_significant"):
        with pytest.raises(ChildSpecError, match="bad_combination"):
            SupFlags(strategy="simple_one_for_one", auto_shutdown=mode)


# ---- try_again ------------------------------------------------------------------------------

def test_failed_restart_is_tried_again_and_counts_to_intensity():
    s = Sup(spec("a"), spec("b"), intensity=3)
    s.boot()
    assert trace(s.exited("a", BOOM)) == ["start:a"]
    acts = s.failed("a")
    assert [(r.kind, r.key) for r in reports(acts)] == [(K.START_ERROR, "a")]
    assert trace(acts) == ["start:a"]  # TryAgain: the restart again
    assert len(s.state.restarts) == 2
    s.started("a")
    assert s.row("a").status is ChildStatus.RUNNING


def test_failed_restarts_reach_the_intensity_limit():
    s = Sup(spec("a"), spec("b"))  # intensity 1
    s.boot()
    s.exited("a", BOOM)
    acts = s.failed("a")
    assert [r.kind for r in reports(acts)] == [K.START_ERROR, K.INTENSITY_EXCEEDED]
    assert trace(acts) == ["stop:b"]
    assert s.exited("b")[-1] == Exit(Shutdown("reached_max_restart_intensity"))


def test_restarting_child_is_visible_until_tried_again():
    """A request queued before the failure is answered before the TryAgain (mailbox order),
    and sees the child as restarting."""
    s = Sup(spec("a"), spec("b"), intensity=5)
    s.boot()
    s.exited("a", BOOM)
    assert s.request(WhichChildren()) == []  # deferred
    ref_which = s._ref
    assert s.request(DeleteChild("a")) == []
    ref_delete = s._ref
    assert s.request(RestartChild("a")) == []
    ref_restart = s._ref
    acts = s.failed("a")
    replies = {a.ref: a.result for a in acts if isinstance(a, Reply)}
    which = replies[ref_which].value
    assert ChildInfo("a", None, True, "worker") in which
    assert replies[ref_delete].reason == "restarting"
    assert replies[ref_restart].reason == "restarting"
    assert trace(acts)[-1] == "start:a"


def test_rest_for_one_try_again_restarts_from_the_failed_child():
    s = Sup(spec("a"), spec("b"), spec("c"), strategy="rest_for_one", intensity=5)
    s.boot()
    assert trace(s.exited("b", BOOM)) == ["stop:c"]
    assert trace(s.exited("c")) == ["start:b"]
    assert trace(s.started("b")) == ["start:c"]
    acts = s.failed("c")
    assert trace(acts) == ["start:c"]  # only c (and those after it) again
    s.started("c")
    assert all(c.status is ChildStatus.RUNNING for c in s.state.children)


def test_one_for_all_try_again_stops_and_restarts_everyone():
    s = Sup(spec("a"), spec("b"), spec("c"), strategy="one_for_all", intensity=5)
    s.boot()
    s.exited("a", BOOM)
    s.exited("c")
    assert trace(s.exited("b")) == ["start:a"]
    assert trace(s.started("a")) == ["start:b"]
    acts = s.failed("b")
    assert trace(acts) == ["stop:a"]  # TryAgain(b): one_for_all again
    assert trace(s.exited("a")) == ["start:a"]
    assert trace(s.started("a")) == ["start:b"]
    assert trace(s.started("b")) == ["start:c"]
    assert len(s.state.restarts) == 2


def test_try_again_for_a_child_terminated_meanwhile_is_dropped():
    s = Sup(spec("a"), spec("b"), intensity=5)
    s.boot()
    s.exited("a", BOOM)
    s.request(TerminateChild("a"))  # deferred, ahead of the TryAgain
    acts = s.failed("a")
    assert trace(acts) == ["reply"]  # terminated (was restarting): no new start
    assert s.row("a").status is ChildStatus.UNDEFINED
    assert s.state.job is None and s.state.deferred == ()


# ---- deferral and selective receive ---------------------------------------------------------

def test_exit_of_another_child_while_awaiting_a_stop_is_handled_after():
    s = Sup(spec("a"), spec("b"), spec("c"), strategy="rest_for_one", intensity=10)
    s.boot()
    a_old = s.pid["a"]
    assert trace(s.exited("b", BOOM)) == ["stop:c"]
    assert s.exited("a", BOOM) == []  # deferred: not the awaited exit
    assert s.request(WhichChildren()) == []  # deferred too
    ref = s._ref
    assert trace(s.exited("c")) == ["start:b"]
    assert trace(s.started("b")) == ["start:c"]
    # the job ends; the deferred exit of a is handled now: a rest_for_one restart from a
    acts = s.started("c")
    assert trace(acts) == ["stop:c"]
    assert [r.key for r in reports(acts, K.CHILD_EXITED)] == ["a"]
    assert trace(s.exited("c")) == ["stop:b"]
    assert trace(s.exited("b")) == ["start:a"]
    s.started("a")
    s.started("b")
    acts = s.started("c")
    assert [a.ref for a in acts if isinstance(a, Reply)] == [ref]  # answered last
    assert s.pid["a"] != a_old
    assert len(s.state.restarts) == 2


def test_selective_receive_takes_an_early_exit_when_the_stop_is_issued():
    s = Sup(spec("a"), spec("b"), spec("c"), strategy="one_for_all", intensity=10)
    s.boot()
    assert trace(s.exited("a", BOOM)) == ["stop:c"]
    assert s.exited("b", BOOM) == []  # b died on its own: deferred
    acts = s.exited("c")
    # stop b is issued and b's early exit consumed at once: the restart goes on
    assert trace(acts) == ["stop:b", "start:a"]
    assert [(r.key, r.reason) for r in reports(acts, K.SHUTDOWN_ERROR)] == [("b", BOOM)]
    s.start_all(s.started("a"))
    assert len(s.state.restarts) == 1  # b's crash was consumed by the stop, not a restart
    assert s.state.deferred == ()


def test_requests_deferred_during_shutdown_get_noproc():
    s = Sup(spec("a"), spec("b"))
    s.boot()
    assert trace(s.feed(ShutdownRequested(0.0))) == ["stop:b"]
    assert s.request(WhichChildren()) == []
    ref = s._ref
    assert trace(s.exited("b")) == ["stop:a"]
    acts = s.exited("a")
    assert acts[-2:] == [Exit(Shutdown()), Reply(ref, Err("noproc", "supervisor has stopped"))]


# ---- API ------------------------------------------------------------------------------------

def test_which_children_and_count_children():
    s = Sup(spec("a"), spec("s", type="supervisor"), spec("c"))
    s.boot()
    assert s.which() == [ChildInfo("c", s.pid["c"], False, "worker"),
                         ChildInfo("s", s.pid["s"], False, "supervisor"),
                         ChildInfo("a", s.pid["a"], False, "worker")]
    assert s.call(CountChildren()).value == {"specs": 3, "active": 3, "supervisors": 1,
                                              "workers": 2}
    s.request(TerminateChild("c"))
    s.exited("c")
    assert s.call(CountChildren()).value == {"specs": 3, "active": 2, "supervisors": 1,
                                              "workers": 2}


def test_start_child_contract():
    s = Sup(spec("a"), intensity=5)
    s.boot()
    new = spec("n")
    acts = s.request(StartChild(new))
    assert acts == [StartProc("n", new)]
    acts = s.started("n")
    assert acts[-1] == Reply(s._ref, Ok(s.pid["n"]))
    assert [i.id for i in s.which()] == ["n", "a"]  # appended: started last
    assert s.call(StartChild(spec("n"))).reason == "already_started"
    s.request(TerminateChild("n"))
    s.exited("n")
    assert s.call(StartChild(spec("n"))).reason == "already_present"
    # a failed start: error, the spec is not kept
    s.request(StartChild(spec("f")))
    acts = s.failed("f", ExitCode(1))
    err = acts[-1].result
    assert isinstance(err, Err) and err.reason == "failed_to_start_child"
    assert err.exit_reason == ExitCode(1)
    assert s.row("f") is None
    # significant child under auto_shutdown=never
    bad = spec("sig", restart="transient", significant=True)
    assert s.call(StartChild(bad)).reason == "bad_child_spec"


def test_start_child_ignore_keeps_the_spec_unless_temporary():
    """OTP: 'If the child process start function returns ignore, the child specification is
    added to the supervisor ..., the pid is set to undefined, and the function returns
    {ok,undefined}' -- except for temporary children, which are not kept."""
    s = Sup(spec("a"))
    s.boot()
    s.request(StartChild(spec("i")))
    assert s.ignored("i")[-1] == Reply(s._ref, Ok(None))
    assert s.row("i") is not None and s.row("i").status is ChildStatus.UNDEFINED
    assert s.call(StartChild(spec("i"))).reason == "already_present"
    s.request(RestartChild("i"))
    assert s.started("i")[-1] == Reply(s._ref, Ok(s.pid["i"]))
    s.request(StartChild(spec("t", restart="temporary")))
    assert s.ignored("t")[-1] == Reply(s._ref, Ok(None))
    assert s.row("t") is None


def test_terminate_child_contract():
    s = Sup(spec("a"), spec("t", restart="temporary"), spec("b"))
    s.boot()
    pid = s.pid["a"]
    acts = s.request(TerminateChild("a"))
    assert acts == [StopProc("a", pid, 5.0)]
    acts = s.exited("a")
    assert acts[-1] == Reply(s._ref, Ok())
    assert [r.kind for r in reports(acts)] == [K.CHILD_STOPPED]
    assert s.row("a").status is ChildStatus.UNDEFINED  # the spec is kept
    assert s.call(TerminateChild("a")) == Ok()  # terminating a stopped child is ok
    s.request(TerminateChild("t"))
    s.exited("t")
    assert s.row("t") is None  # temporary: forgotten
    assert s.call(TerminateChild("nope")).reason == "not_found"
    assert s.call(TerminateChild(s.pid["b"])).reason == "not_found"  # ids only, not pids
    assert s.state.restarts == ()  # terminate is not a restart


def test_restart_child_contract():
    s = Sup(spec("a"), spec("b"))
    s.boot()
    assert s.call(RestartChild("a")).reason == "running"
    assert s.call(RestartChild("zz")).reason == "not_found"
    s.request(TerminateChild("a"))
    s.exited("a")
    acts = s.request(RestartChild("a"))
    assert trace(acts) == ["start:a"]
    assert s.started("a")[-1] == Reply(s._ref, Ok(s.pid["a"]))
    # a failed restart_child: error, the spec stays, not restarting
    s.request(TerminateChild("b"))
    s.exited("b")
    s.request(RestartChild("b"))
    acts = s.failed("b")
    assert acts[-1].result.reason == "failed_to_start_child"
    assert s.row("b").status is ChildStatus.UNDEFINED
    assert s.state.restarts == ()  # restart_child does not count to intensity


def test_delete_child_contract():
    s = Sup(spec("a"), spec("b"))
    s.boot()
    assert s.call(DeleteChild("a")).reason == "running"
    assert s.call(DeleteChild("zz")).reason == "not_found"
    s.request(TerminateChild("a"))
    s.exited("a")
    assert s.call(DeleteChild("a")) == Ok()
    assert s.row("a") is None
    assert s.call(RestartChild("a")).reason == "not_found"
    # and it can be added again
    s.request(StartChild(spec("a")))
    s.started("a")
    assert [i.id for i in s.which()] == ["a", "b"]


def test_shutdown_requested_stops_in_reverse_order():
    s = Sup(spec("a"), spec("b", shutdown="brutal_kill"), spec("c", type="supervisor"))
    s.boot()
    acts = s.feed(ShutdownRequested(0.0))
    assert acts == [StopProc("c", s.pid["c"], ShutdownKind.INFINITY)]
    assert s.exited("c") == [Report(K.CHILD_STOPPED, "c", s.pid["c"], Shutdown(),
                                    ChildType.SUPERVISOR),
                             StopProc("b", s.pid["b"], ShutdownKind.BRUTAL_KILL)]
    acts = s.exited("b", Killed(9))
    assert reports(acts, K.SHUTDOWN_ERROR) == []  # killed is how brutal_kill stops
    assert trace(acts) == ["stop:a"]
    acts = s.exited("a", Killed(9))  # a 5 s shutdown that had to be killed
    assert [r.key for r in reports(acts, K.SHUTDOWN_ERROR)] == ["a"]
    assert acts[-1] == Exit(Shutdown())
    assert s.feed(ShutdownRequested(0.0)) == []


def test_stop_reason_check_normal_is_an_error_only_for_permanent():
    s = Sup(spec("p"), spec("t", restart="transient"))
    s.boot()
    s.feed(ShutdownRequested(0.0))
    acts = s.exited("t", Normal())
    assert reports(acts, K.SHUTDOWN_ERROR) == []
    acts = s.exited("p", Normal())
    assert [r.key for r in reports(acts, K.SHUTDOWN_ERROR)] == ["p"]


# =============================================================================================
# (b) the reference model and the state machine
# =============================================================================================

class _Stopped(Exception):
    """The model supervisor exited."""


class MChild:
    __slots__ = ("key", "spec", "status", "pid", "dynamic")

    def __init__(self, key: str, spec: ChildSpec, dynamic: bool = False) -> None:
        self.key = key
        self.spec = spec
        self.status = "undefined"  # running | undefined | restarting
        self.pid: int | None = None
        self.dynamic = dynamic


def _abnormal(reason: Any) -> bool:
    return not isinstance(reason, (Normal, Shutdown))


def _clean(spec: ChildSpec, reason: Any) -> bool:
    """Did a child told to stop stop as told? (OTP's shutdown/2 result check.)"""
    if reason == Killed(9):
        return spec.shutdown is ShutdownKind.BRUTAL_KILL
    if isinstance(reason, Shutdown):
        return True
    return isinstance(reason, Normal) and spec.restart is not RestartType.PERMANENT


class Model:
    """OTP's supervisor, synchronous. ``self.gen`` is the supervisor process: it yields
    ``("recv",)`` to take the next mailbox message, ``("start", key)`` to await the result of
    the start it just requested, ``("exit", pids)`` to await one exit among ``pids`` (the
    driver looks in the mailbox first: a selective receive). Output: ``self.out``, normalized
    actions."""

    def __init__(self, flags: SupFlags, specs: tuple[ChildSpec, ...]) -> None:
        self.flags = flags
        self.simple = flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE
        self.template = specs[0] if self.simple else None
        self.children: list[MChild] = [] if self.simple else [MChild(s.id, s) for s in specs]
        self.restart_times: list[float] = []
        self.mailbox: list[Any] = []
        self.out: list[Any] = []
        self.stopped = False
        self.next_dyn = 0
        self.gen = self.main()
        self.waiting: Any = next(self.gen)

    # ---- the driver -------------------------------------------------------------------------

    def feed(self, ev: Any) -> None:
        if self.stopped:
            if isinstance(ev, Request):
                self.emit(Reply(ev.ref, Err("noproc")))
            return
        w = self.waiting
        if w[0] == "start" and isinstance(ev, (Started, StartFailed, Ignored)) \
                and ev.key == w[1]:
            self.send(ev)
        elif w[0] == "exit" and isinstance(ev, Exited) and ev.pid in w[1]:
            self.send(ev)
        else:
            self.mailbox.append(ev)
        self.pump()

    def pump(self) -> None:
        while not self.stopped:
            w = self.waiting
            if w[0] == "recv":
                if not self.mailbox:
                    return
                self.send(self.mailbox.pop(0))
            elif w[0] == "exit":
                early = next((e for e in self.mailbox
                              if isinstance(e, Exited) and e.pid in w[1]), None)
                if early is None:
                    return
                self.mailbox.remove(early)
                self.send(early)
            else:
                return

    def send(self, value: Any) -> None:
        try:
            self.waiting = self.gen.send(value)
        except StopIteration:
            self.stopped = True
            self.waiting = None

    def take(self) -> list[Any]:
        out, self.out = self.out, []
        return out

    @property
    def idle(self) -> bool:
        return self.stopped or (self.waiting[0] == "recv" and not self.mailbox)

    def emit(self, action: Any) -> None:
        self.out.append(norm(action))

    def report(self, kind: LifecycleKind, c: MChild, reason: Any = None) -> None:
        self.out.append(("report", kind, c.key, reason))

    # ---- the supervisor process -------------------------------------------------------------

    def main(self):
        ev = yield ("recv",)
        assert isinstance(ev, Init)
        try:
            yield from self.init()
            while True:
                ev = yield ("recv",)
                if isinstance(ev, Exited):
                    yield from self.child_exited(ev)
                elif isinstance(ev, TryAgain):
                    c = self.find(ev.key)
                    if c is not None and c.status == "restarting":
                        yield from self.restart(c, ev.now)
                elif isinstance(ev, ShutdownRequested):
                    yield from self.terminate_and_exit(Shutdown())
                elif isinstance(ev, Request):
                    yield from self.request(ev)
                # anything else (a stale start result) is dropped
        except _Stopped:
            return

    def init(self):
        for c in list(self.children):
            res = yield from self.start(c)
            if isinstance(res, Started):
                self.set_running(c, res.pid)
            elif isinstance(res, Ignored):
                self.set_undefined_or_drop(c)
            else:
                self.report(K.START_ERROR, c, res.reason)
                c.status, c.pid = "undefined", None
                yield from self.terminate_and_exit(
                    Shutdown(f"failed_to_start_child {c.key}"))
        self.emit(Ready())

    def find(self, key: str) -> MChild | None:
        return next((c for c in self.children if c.key == key), None)

    def start(self, c: MChild):
        self.emit(StartProc(c.key, c.spec))
        res = yield ("start", c.key)
        return res

    def set_running(self, c: MChild, pid: int) -> None:
        c.status, c.pid = "running", pid
        self.report(K.CHILD_STARTED, c)

    def set_undefined_or_drop(self, c: MChild) -> None:
        """After an ignore: dynamic and temporary children are not kept."""
        if c.dynamic or c.spec.restart is RestartType.TEMPORARY:
            self.children.remove(c)
        else:
            c.status, c.pid = "undefined", None

    def del_child(self, c: MChild) -> None:
        if c.dynamic or c.spec.restart is RestartType.TEMPORARY:
            self.children.remove(c)
        else:
            c.status, c.pid = "undefined", None

    def child_exited(self, ev: Exited):
        c = next((x for x in self.children if x.status == "running" and x.pid == ev.pid), None)
        if c is None:
            return
        self.report(K.CHILD_EXITED, c, ev.reason)
        restart = c.spec.restart
        if restart is RestartType.PERMANENT or \
                (restart is RestartType.TRANSIENT and _abnormal(ev.reason)):
            yield from self.restart(c, ev.now)
        else:
            self.del_child(c)
            yield from self.auto_shutdown(c)

    def auto_shutdown(self, c: MChild):
        mode = self.flags.auto_shutdown
        if mode is AutoShutdown.NEVER or not c.spec.significant:
            return
        if mode is AutoShutdown.ALL_SIGNIFICANT and any(
                x.spec.significant and x.status != "undefined" for x in self.children):
            return
        self.report(K.AUTO_SHUTDOWN, c)
        yield from self.terminate_and_exit(Shutdown("auto_shutdown"))

    def restart(self, c: MChild, now: float):
        # OTP's supervisor.erl, add_restart/3 (times newest first, then counted against I):
        #     Threshold = Now - Period,
        #     Restarts1 = lists:takewhile(fun (R) -> R >= Threshold end, Restarts0),
        #     [Now | Restarts1].
        # so a restart exactly Period seconds ago still counts.
        self.restart_times.append(now)
        threshold = now - self.flags.period
        window = [t for t in self.restart_times if t >= threshold]
        if len(window) > self.flags.intensity:
            self.report(K.INTENSITY_EXCEEDED, c)
            self.del_child(c)
            yield from self.terminate_and_exit(Shutdown("reached_max_restart_intensity"))
        strategy = self.flags.strategy
        if strategy in (Strategy.ONE_FOR_ONE, Strategy.SIMPLE_ONE_FOR_ONE):
            res = yield from self.start(c)
            if isinstance(res, Started):
                self.set_running(c, res.pid)
            elif isinstance(res, Ignored):
                self.set_undefined_or_drop(c)
            else:
                self.report(K.START_ERROR, c, res.reason)
                c.status = "restarting"  # keeps its old pid, as OTP's {restarting, OldPid}
                self.mailbox.append(TryAgain(c.key, res.now))
            return
        if strategy is Strategy.ONE_FOR_ALL:
            group = list(self.children)
        else:
            group = self.children[self.children.index(c):]
        c.status, c.pid = "undefined", None
        for x in reversed(group):
            yield from self.terminate(x)
        for x in group:
            if x not in self.children:
                continue  # temporary: dropped by the stop
            res = yield from self.start(x)
            if isinstance(res, Started):
                self.set_running(x, res.pid)
            elif isinstance(res, Ignored):
                self.set_undefined_or_drop(x)
            else:
                self.report(K.START_ERROR, x, res.reason)
                x.status = "restarting"
                self.mailbox.append(TryAgain(x.key, res.now))
                return

    def terminate(self, c: MChild):
        if c.status == "running":
            self.emit(StopProc(c.key, c.pid, c.spec.shutdown))
            ev = yield ("exit", frozenset((c.pid,)))
            self.stopped_as(c, ev.reason)
        self.del_child(c)

    def stopped_as(self, c: MChild, reason: Any) -> None:
        if not _clean(c.spec, reason):
            self.report(K.SHUTDOWN_ERROR, c, reason)
        self.report(K.CHILD_STOPPED, c, reason)

    def terminate_and_exit(self, reason: Any):
        if self.simple:
            live = [c for c in self.children if c.status == "running"]
            if live:
                self.emit(StopMany(tuple(c.pid for c in live), self.template.shutdown))
                pending = {c.pid: c for c in live}
                while pending:
                    ev = yield ("exit", frozenset(pending))
                    c = pending.pop(ev.pid)
                    self.stopped_as(c, ev.reason)
                    self.del_child(c)
        else:
            for c in reversed(list(self.children)):
                yield from self.terminate(c)
        self.emit(Exit(reason))
        for ev in self.mailbox:
            if isinstance(ev, Request):
                self.emit(Reply(ev.ref, Err("noproc")))
        self.mailbox.clear()
        raise _Stopped

    # ---- API ----------------------------------------------------------------------------

    def reply(self, ref: int, result: Any) -> None:
        self.emit(Reply(ref, result))

    def request(self, req: Request):
        op, ref = req.op, req.ref
        if isinstance(op, WhichChildren):
            self.reply(ref, Ok([
                ChildInfo(None if c.dynamic else c.key,
                          c.pid if c.status == "running" else None,
                          c.status == "restarting", c.spec.type.value)
                for c in reversed(self.children)]))
        elif isinstance(op, (WhichChild, GetChildSpec)):
            # an id names a static child; under simple_one_for_one a running child's pid
            if self.simple:
                c = next((x for x in self.children if isinstance(op.target, int)
                          and x.status == "running" and x.pid == op.target), None)
            else:
                c = self.find(op.target) if isinstance(op.target, str) else None
            if c is None:
                self.reply(ref, Err("not_found"))
            elif isinstance(op, GetChildSpec):
                self.reply(ref, Ok(spec_to_wire(c.spec)))
            else:
                self.reply(ref, Ok(ChildInfo(None if c.dynamic else c.key,
                                             c.pid if c.status == "running" else None,
                                             c.status == "restarting", c.spec.type.value)))
        elif isinstance(op, CountChildren):
            sups = sum(1 for c in self.children if c.spec.type is ChildType.SUPERVISOR)
            self.reply(ref, Ok({
                "specs": 1 if self.simple else len(self.children),
                "active": sum(1 for c in self.children if c.status == "running"),
                "supervisors": sups, "workers": len(self.children) - sups}))
        elif isinstance(op, StartDynamic):
            if not self.simple:
                self.reply(ref, Err("badarg"))
                return
            t = self.template
            key = f"{t.id}-{self.next_dyn}"
            self.next_dyn += 1
            c = MChild(key, ChildSpec(id=t.id, start=t.start, args=(*t.args, *op.args),
                                      restart=t.restart, shutdown=t.shutdown, type=t.type,
                                      significant=t.significant), dynamic=True)
            self.children.append(c)
            res = yield from self.start(c)
            if isinstance(res, Started):
                self.set_running(c, res.pid)
                self.reply(ref, Ok(res.pid))
            elif isinstance(res, Ignored):
                self.children.remove(c)
                self.reply(ref, Ok(None))
            else:
                self.report(K.START_ERROR, c, res.reason)
                self.children.remove(c)
                self.reply(ref, Err("failed_to_start_child"))
        elif isinstance(op, StartChild):
            sp = op.spec
            if self.simple:
                self.reply(ref, Err("badarg"))
            elif sp.significant and self.flags.auto_shutdown is AutoShutdown.NEVER:
                self.reply(ref, Err("bad_child_spec"))
            elif (old := self.find(sp.id)) is not None:
                self.reply(ref, Err("already_started" if old.status == "running"
                                    else "already_present"))
            else:
                c = MChild(sp.id, sp)
                self.children.append(c)
                res = yield from self.start(c)
                if isinstance(res, Started):
                    self.set_running(c, res.pid)
                    self.reply(ref, Ok(res.pid))
                elif isinstance(res, Ignored):
                    self.set_undefined_or_drop(c)
                    self.reply(ref, Ok(None))
                else:
                    self.report(K.START_ERROR, c, res.reason)
                    self.children.remove(c)
                    self.reply(ref, Err("failed_to_start_child"))
        elif isinstance(op, TerminateChild):
            target = op.target
            if self.simple:
                if isinstance(target, str):
                    self.reply(ref, Err("simple_one_for_one"))
                    return
                c = next((x for x in self.children if x.pid == target), None)
            else:
                c = self.find(target) if isinstance(target, str) else None
            if c is None:
                self.reply(ref, Err("not_found"))
                return
            yield from self.terminate(c)
            self.reply(ref, Ok(None))
        elif self.simple:
            self.reply(ref, Err("simple_one_for_one"))
        elif isinstance(op, RestartChild):
            c = self.find(op.id)
            if c is None:
                self.reply(ref, Err("not_found"))
            elif c.status != "undefined":
                self.reply(ref, Err(c.status))
            else:
                res = yield from self.start(c)
                if isinstance(res, Started):
                    self.set_running(c, res.pid)
                    self.reply(ref, Ok(res.pid))
                elif isinstance(res, Ignored):
                    self.set_undefined_or_drop(c)
                    self.reply(ref, Ok(None))
                else:
                    self.report(K.START_ERROR, c, res.reason)
                    self.reply(ref, Err("failed_to_start_child"))
        elif isinstance(op, DeleteChild):
            c = self.find(op.id)
            if c is None:
                self.reply(ref, Err("not_found"))
            elif c.status != "undefined":
                self.reply(ref, Err(c.status))
            else:
                self.children.remove(c)
                self.reply(ref, Ok(None))


def norm(a: Any) -> Any:
    """An action as a comparable value: replies by error atom, reports by kind/key/reason,
    the failed_to_start_child exit detail without its free text."""
    if isinstance(a, tuple):
        return a
    if isinstance(a, Report):
        return ("report", a.kind, a.key, a.reason)
    if isinstance(a, Reply):
        r = a.result
        if isinstance(r, Err):
            return ("reply", a.ref, "err", r.reason)
        v = tuple(r.value) if isinstance(r.value, list) else r.value
        return ("reply", a.ref, "ok", v)
    if isinstance(a, Exit):
        r = a.reason
        if isinstance(r, Shutdown) and r.detail.startswith("failed_to_start_child"):
            r = Shutdown(r.detail.split(":")[0])
        return ("exit", r)
    return a


# ---- the world ------------------------------------------------------------------------------

CRASH_REASONS = st.sampled_from([
    Normal(), Shutdown(), Shutdown("done"), BOOM, Killed(9), Killed(15), ExitCode(3), NoProc(),
])
STOP_REASONS = st.one_of(
    st.just(Shutdown()),
    st.sampled_from([Shutdown(), Killed(9), Normal(), BOOM, Shutdown("late")]),
)
START_FAIL_REASONS = st.sampled_from([BOOM, ExitCode(1), Killed(9)])
TICKS = st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 11.0])


@st.composite
def configs(draw, strategy: Strategy) -> tuple[SupFlags, tuple[ChildSpec, ...]]:
    # never half the time: an auto shutdown ends the supervisor before crashes pile up
    auto = draw(st.sampled_from([AutoShutdown.NEVER, *AutoShutdown]))
    if strategy is Strategy.SIMPLE_ONE_FOR_ONE:
        auto = AutoShutdown.NEVER  # any other is OTP's bad_combination, refused by SupFlags
    flags = SupFlags(strategy=strategy, intensity=draw(st.integers(0, 4)),
                     period=draw(st.sampled_from([1.0, 3.0, 5.0, 10.0])), auto_shutdown=auto)
    n = 1 if strategy is Strategy.SIMPLE_ONE_FOR_ONE else draw(st.integers(0, 4))
    specs = []
    for i in range(n):
        restart = draw(st.sampled_from(list(RestartType)))
        significant = (auto is not AutoShutdown.NEVER and restart is not RestartType.PERMANENT
                       and draw(st.booleans()))
        specs.append(ChildSpec(
            id=f"c{i}", start="tests.apps:nothing", args=(i,), restart=restart,
            shutdown=draw(st.sampled_from([None, 0.0, 2.0, ShutdownKind.BRUTAL_KILL,
                                           ShutdownKind.INFINITY])),
            type=draw(st.sampled_from(list(ChildType))), significant=significant))
    return flags, tuple(specs)


def is_subsequence(xs: list[Any], ys: list[Any]) -> bool:
    it = iter(ys)
    return all(any(x == y for y in it) for x in xs)


class SupervisorWorld(RuleBasedStateMachine):
    """Drives ``decide`` like the I/O loop does, and the model alongside."""

    def setup(self, cfg) -> None:
        self.cfg = cfg
        flags, specs = cfg
        self.flags = flags
        self.specs = specs
        self.simple = flags.strategy is Strategy.SIMPLE_ONE_FOR_ONE
        self.state = initial_state(flags, specs)
        self.model = Model(flags, specs)
        self.clock = 0.0
        self.next_pid = 1000
        self.next_ref = 1
        self.alive: dict[int, str] = {}  # processes alive in the world: pid -> key
        self.known: dict[int, str] = {}  # every pid ever started
        self.delivered: set[int] = set()  # pids whose Exited was fed
        self.pending_start: str | None = None
        self.to_stop: set[int] = set()  # alive pids the supervisor asked to stop
        self.outbox: list[tuple[int, Any]] = []  # exits on their way: (pid, reason)
        self.exited = False
        self.asked_after_exit = False
        self.init_starts: list[str] = []
        self.shutdown_stops: list[str] | None = None
        self.shutdown_order: list[str] = []
        self.feed(Init(self.clock))

    # ---- feeding and checking ---------------------------------------------------------------

    def feed(self, ev: Any) -> None:
        prev = self.state
        self.state, actions = decide(prev, ev)
        self.model.feed(ev)
        # The model has no deletion reports: instead, the rows that left the table are
        # exactly the ones reported deleted (what the node's tree picture relies on). A row
        # may leave and a new one with its id come back in one decision (a deferred
        # start_child after a restart dropped a temporary child): reported deleted, and the
        # new row has no process yet, so its start is reported after the deletion.
        deleted = [a.key for a in actions if isinstance(a, Report) and a.kind is K.CHILD_DELETED]
        before = {c.key for c in prev.children}
        now = {c.key: c for c in self.state.children}
        gone = before - set(now)
        assert len(deleted) == len(set(deleted)) and gone <= set(deleted), (ev, deleted, gone)
        for key in set(deleted) - gone:
            assert key in before and now[key].status is ChildStatus.UNDEFINED \
                and now[key].pid is None, (ev, key, now[key])
        got = [norm(a) for a in actions
               if not (isinstance(a, Report) and a.kind is K.CHILD_DELETED)]
        want = self.model.take()
        assert got == want, f"\nevent {ev}\nmachine {got}\nmodel   {want}"
        for a in actions:
            if isinstance(a, Report) and a.kind in COUNTED:
                self.counts[COUNTED[a.kind]] += 1
                event(f"decided: {COUNTED[a.kind]}")
            elif isinstance(a, Exit):
                why = a.reason.detail.split(" ")[0] if isinstance(a.reason, Shutdown) \
                    else type(a.reason).__name__
                self.counts[f"exit: {why or 'shutdown'}"] += 1
        self.apply(prev, actions)

    def apply(self, prev, actions: list[Any]) -> None:
        if self.exited:
            assert all(isinstance(a, Reply) and a.result == Err("noproc", "supervisor has stopped")
                       for a in actions), actions
            return
        begins = (prev.phase is not Phase.STOPPING
                  and self.state.phase in (Phase.STOPPING, Phase.STOPPED)
                  and not self.simple)
        if begins:
            # the stops of the shutdown: the trailing run of StopProcs of this step
            self.shutdown_order = [c.key for c in reversed(prev.children)]
            self.shutdown_stops = []
            eff = [a for a in actions if not isinstance(a, Report)]
            ends = [i for i, a in enumerate(eff) if isinstance(a, Exit)]
            if ends:
                eff = eff[:ends[0]]
            while eff and isinstance(eff[-1], StopProc):
                self.shutdown_stops.insert(0, eff.pop().key)
        elif self.shutdown_stops is not None:
            self.shutdown_stops += [a.key for a in actions if isinstance(a, StopProc)]
        for a in actions:
            if self.exited:  # only the noproc answers to requests left in the queue
                assert isinstance(a, Reply) and a.result.reason == "noproc", a
                continue
            if isinstance(a, StartProc):
                assert self.pending_start is None, "two starts at once"
                assert a.key in {c.key for c in self.state.children}, "start of an unknown child"
                if self.state.phase is Phase.STARTING:
                    self.init_starts.append(a.key)
                self.pending_start = a.key
            elif isinstance(a, StopProc):
                assert self.known.get(a.pid) == a.key, f"stop of an unknown pid {a}"
                if a.pid in self.alive:
                    self.to_stop.add(a.pid)
            elif isinstance(a, StopMany):
                assert self.simple
                assert len(set(a.pids)) == len(a.pids)
                for pid in a.pids:
                    assert pid in self.known
                    if pid in self.alive:
                        self.to_stop.add(pid)
            elif isinstance(a, Exit):
                self.exited = True
                assert self.state.phase is Phase.STOPPED
                # every process this supervisor started is gone, and it saw each exit
                assert set(self.known) <= self.delivered, set(self.known) - self.delivered
                assert not [c for c in self.state.children if c.status is ChildStatus.RUNNING]
                assert self.pending_start is None
                if self.shutdown_stops is not None:
                    assert is_subsequence(self.shutdown_stops, self.shutdown_order), \
                        (self.shutdown_stops, self.shutdown_order)
        if self.state.phase is not Phase.STARTING:
            assert is_subsequence(self.init_starts, [s.id for s in self.specs])

    # ---- the world's moves -----------------------------------------------------------------
    # One rule draws the next move from a weighted menu of those possible now: hypothesis
    # picks among enabled rules uniformly, which left ~85% of the moves to API requests and
    # almost no crash near another (issue 19 item 6). The weights put crashes first; ticks
    # are mostly short, so crashes cluster inside the intensity window and escalate; after
    # the supervisor exits, a new one starts from the same specs, as its parent would.

    @rule(data=st.data())
    def step(self, data):
        menu = self.menu()
        move = data.draw(st.sampled_from(menu), label="move")
        event(f"move: {move}")
        self.counts[f"move: {move}"] += 1
        getattr(self, f"do_{move}")(data)

    def menu(self) -> list[str]:
        if self.exited:
            return ["request_after_exit"] if not self.asked_after_exit else ["reincarnate"]
        menu = ["tick"] * 2 + ["request"] * (4 if not self.alive else 1) + ["shutdown"]
        if self.pending_start is not None:
            menu += ["answer_start"] * 6
        if self.alive:
            menu += ["crash"] * 8
            if not self.pending_start and not self.outbox:
                menu += ["crash_when_idle"] * 4
        if self.to_stop:
            menu += ["obey_stop"] * 5
        if self.outbox:
            menu += ["deliver_exit"] * 4
        return menu

    def do_answer_start(self, data):
        outcome = data.draw(st.integers(0, 19), label="outcome")
        reason = data.draw(START_FAIL_REASONS, label="reason")
        key, self.pending_start = self.pending_start, None
        # failures are rarer at init, where one ends the supervisor's life
        init = self.state.phase is Phase.STARTING
        fails = outcome == 18 if init else 14 <= outcome <= 16
        ignored = outcome == 19 if init else outcome >= 17
        if fails:
            self.feed(StartFailed(key, reason, self.clock))
        elif ignored:
            self.feed(Ignored(key, self.clock))
        else:
            pid = self.next_pid
            self.next_pid += 1
            self.alive[pid] = self.known[pid] = key
            self.feed(Started(key, pid, self.clock))

    def kill(self, i: int, reason: Any, at_once: bool) -> None:
        pid = sorted(self.alive)[i % len(self.alive)]
        del self.alive[pid]
        self.to_stop.discard(pid)
        self.outbox.append((pid, reason))
        if at_once:
            self.deliver(len(self.outbox) - 1)

    def do_crash(self, data):
        self.kill(data.draw(st.integers(0, 7), label="i"),
                  data.draw(CRASH_REASONS, label="reason"),
                  data.draw(st.booleans(), label="at_once"))

    def do_crash_when_idle(self, data):
        self.kill(data.draw(st.integers(0, 7), label="i"),
                  data.draw(CRASH_REASONS, label="reason"), True)

    def do_obey_stop(self, data):
        i = data.draw(st.integers(0, 7), label="i")
        reason = data.draw(STOP_REASONS, label="reason")
        pid = sorted(self.to_stop)[i % len(self.to_stop)]
        self.to_stop.discard(pid)
        del self.alive[pid]
        self.outbox.append((pid, reason))
        if data.draw(st.booleans(), label="at_once"):
            self.deliver(len(self.outbox) - 1)

    def do_deliver_exit(self, data):
        self.deliver(data.draw(st.integers(0, 7), label="i") % len(self.outbox))

    def deliver(self, i: int) -> None:
        pid, reason = self.outbox.pop(i)
        self.delivered.add(pid)
        self.feed(Exited(pid, reason, self.clock))

    def do_tick(self, data):
        self.clock += data.draw(TICKS, label="dt")

    def do_request(self, data):
        ids = [s.id for s in self.specs] + ["x", "y"]
        pids = sorted(self.known) + [4242]
        if self.simple:
            op = data.draw(st.one_of(
                st.builds(StartDynamic, st.tuples(st.integers(0, 3))),
                st.builds(StartDynamic, st.just(())),
                # one branch for the pid-named ops, so StartDynamic keeps its share
                st.sampled_from(pids).flatmap(lambda pid: st.sampled_from(
                    [TerminateChild(pid), TerminateChild(pid), WhichChild(pid),
                     GetChildSpec(pid)])),
                st.sampled_from([WhichChildren(), CountChildren(), TerminateChild("c0"),
                                 WhichChild("c0"), GetChildSpec("c0"),
                                 RestartChild("c0"), DeleteChild("c0"),
                                 StartChild(spec("x"))]),
            ), label="op")
        else:
            new_spec = st.builds(
                lambda id, r, sig: ChildSpec(id=id, start="m:f", restart=r,
                                             significant=sig and r is not RestartType.PERMANENT),
                st.sampled_from(ids), st.sampled_from(list(RestartType)), st.booleans())
            op = data.draw(st.one_of(
                st.sampled_from([WhichChildren(), CountChildren(), StartDynamic(()),
                                 WhichChild("c0"), GetChildSpec("c1"), WhichChild("x")]),
                st.builds(StartChild, new_spec),
                st.builds(TerminateChild, st.one_of(st.sampled_from(ids),
                                                    st.sampled_from(pids))),
                st.builds(RestartChild, st.sampled_from(ids)),
                st.builds(DeleteChild, st.sampled_from(ids)),
            ), label="op")
        ref = self.next_ref
        self.next_ref += 1
        self.feed(Request(ref, op, self.clock))

    def do_shutdown(self, data):
        if data.draw(st.integers(0, 7), label="go") == 0:
            self.feed(ShutdownRequested(self.clock))

    def do_request_after_exit(self, data):
        self.asked_after_exit = True
        ref = self.next_ref
        self.next_ref += 1
        self.feed(Request(ref, WhichChildren(), self.clock))

    def do_reincarnate(self, data):
        """The supervisor is gone: its parent starts a new one from the same specs."""
        self.counts["incarnations"] += 1
        self.setup(self.cfg)

    def teardown(self):
        counts = getattr(self, "counts", None)
        if counts is None:
            return
        for key in COUNTED.values():
            target(float(counts[key]), label=key)
        for key, n in counts.items():
            type(self).totals[key] += n

    # ---- invariants -------------------------------------------------------------------------

    @invariant()
    def table_is_sound(self):
        if not hasattr(self, "state"):
            return
        s = self.state
        keys = [c.key for c in s.children]
        assert len(keys) == len(set(keys)), keys
        running = [c.pid for c in s.children if c.status is ChildStatus.RUNNING]
        assert len(running) == len(set(running)), "two rows hold the same live pid"
        deferred_exits = {e.pid for e in s.deferred if isinstance(e, Exited)}
        for c in s.children:
            if c.status is ChildStatus.RUNNING:
                assert c.pid in self.known
                # a running row is alive, or its exit is on its way or waiting in the queue
                assert c.pid not in self.delivered or c.pid in deferred_exits, c
        if s.phase is Phase.STOPPED:
            assert s.job is None and s.deferred == ()
        elif s.job is None:
            assert s.deferred == (), "idle with events left unhandled"

    @invariant()
    def no_deadlock(self):
        """Whatever the machine awaits, the world will produce."""
        if not hasattr(self, "state"):
            return
        job = self.state.job
        if job is None or self.state.phase is Phase.STOPPED:
            return
        assert job.await_start or job.await_exits, "a job that awaits nothing"
        if job.await_start:
            assert self.pending_start == job.await_start
        coming = self.to_stop | {pid for pid, _ in self.outbox}
        assert job.await_exits <= coming, (job.await_exits, coming)

    @invariant()
    def agrees_with_model_when_idle(self):
        if not hasattr(self, "state"):
            return
        assert self.exited == self.model.stopped
        if self.exited or self.state.job is not None or not self.model.idle:
            return
        mine = [(c.key, c.status.value, c.pid if c.status is ChildStatus.RUNNING else None)
                for c in self.state.children if c.dynamic or not self.simple]
        model = [(c.key, c.status, c.pid if c.status == "running" else None)
                 for c in self.model.children]
        assert mine == model


# No explain phase: its line tracing (Python < 3.12) made shrinking a found failure outlast
# the test timeout.
SETTINGS = settings(max_examples=100, stateful_step_count=60, deadline=None, database=None,
                    phases=[Phase_.explicit, Phase_.reuse, Phase_.generate, Phase_.target,
                            Phase_.shrink],
                    suppress_health_check=[HealthCheck.too_slow])
COUNTED = {K.CHILD_EXITED: "crashes handled", K.INTENSITY_EXCEEDED: "intensity escalations",
           K.CHILD_STARTED: "starts"}


def _world_for(strategy: Strategy) -> type[SupervisorWorld]:
    cls = type(f"World_{strategy.value}", (SupervisorWorld,),
               {"strategy": strategy, "totals": collections.Counter()})

    @initialize(cfg=configs(strategy))
    def boot(self, cfg):
        self.counts = collections.Counter()
        self.setup(cfg)

    cls.boot = boot  # type: ignore[attr-defined]
    return cls


# What each strategy's run must at least exercise: a change to the moves' weights or the
# configs that starves the machine of crashes or escalations fails here, not silently. The
# fixed example sequence gave 650-920 crashes handled and 59-89 escalations per strategy,
# explore runs 646-770 and 25-190 (print them with -s).
FLOORS = {"crashes handled": 400, "intensity escalations": 20}


@pytest.mark.parametrize("strategy", list(Strategy), ids=lambda s: s.value)
def test_supervisor_world(strategy: Strategy) -> None:
    world = _world_for(strategy)
    run_state_machine_as_test(world, settings=SETTINGS)
    totals = dict(world.totals)
    print(f"\n{strategy.value}: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    for key, floor in FLOORS.items():
        assert totals.get(key, 0) >= floor, (key, totals)


def _record_decisions(s: Sup) -> list[tuple[Any, Any, Any]]:
    """Every (state before, event, (state after, actions)) that ``s`` decides from now on."""
    recorded: list[tuple[Any, Any, Any]] = []
    feed = s.feed

    def recording_feed(ev: Any) -> list[Any]:
        before = s.state
        acts = feed(ev)
        recorded.append((before, ev, (s.state, acts)))
        return acts

    s.feed = recording_feed  # type: ignore[method-assign]
    return recorded


def test_decisions_do_not_depend_on_the_row_memo():
    """Each decision hands its row lookups to the next one (an O(1) memo); replaying every
    recorded (state, event) out of order, so the memo never applies, decides the same."""
    s = Sup(*(spec(f"w{i}") for i in range(30)), spec("t", restart="temporary"),
            intensity=100)
    recorded = _record_decisions(s)
    s.boot()
    s.start_all(s.exited("w7", BOOM))  # a restart: a row's pid changes
    s.exited("t", BOOM)  # a temporary child's row goes: the rows after it move up
    s.start_all(s.exited("w29", BOOM))
    s.start_all(s.request(StartChild(spec("late"))))  # a row is added
    s.start_all(s.exited("late", BOOM))
    assert len(recorded) > 35
    for before, ev, after in reversed(recorded):
        assert decide(before, ev) == after


def test_a_pool_whose_children_go_in_any_order_decides_as_without_the_row_memo():
    """A simple_one_for_one pool's rows go one by one (temporary jobs that end, then a
    shutdown's exits in any order): the row index keeps each deletion O(1) and is rebuilt
    now and then; replayed without the memo, every decision is the same."""
    s = Sup(spec("w", restart="temporary"), strategy="simple_one_for_one", intensity=10)
    recorded = _record_decisions(s)
    s.boot()
    rng = random.Random(7)
    for _ in range(3):
        for _ in range(40):
            s.start_all(s.request(StartDynamic(())))
        live = [c.key for c in s.state.children if c.dynamic]
        for key in rng.sample(live, 25):  # jobs that end, rows deleted in any order
            assert reports(s.exited(key, Normal()), K.CHILD_DELETED)
        left = [c.key for c in s.state.children if c.dynamic]
        assert [i.pid for i in s.which()] == [s.pid[k] for k in reversed(left)]
    acts = s.feed(ShutdownRequested(s.now))
    (stop,) = [a for a in acts if isinstance(a, StopMany)]
    pids = list(stop.pids)
    rng.shuffle(pids)
    for pid in pids[:-1]:
        assert not [a for a in s.exited(pid) if isinstance(a, Exit)]
    assert exit_of(s.exited(pids[-1])).reason == Shutdown()
    assert len(recorded) > 250
    for before, ev, after in reversed(recorded):
        assert decide(before, ev) == after
