"""Each invariant of the chaos runner on its own (``prismatic.chaos._invariants``): the ones
that look at processes against real processes, the others on the records the runner
would have read. Each test has a case where the invariant holds and one where it breaks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prismatic._control import TreeRow
from prismatic.chaos._invariants import (
    DownSeen, ExitSeen, Kill, Monitor, acked_events_intact, call_timed_out, control_answered,
    descendants_gone, disk_full_reported, drops_counted_exactly, escalation_stopped_at,
    expected_escalation, flood_accounted, global_name_resolved, kills_accounted, memory_bounded,
    memory_cap_enforced, membership_converged, monitors_fired_once, no_orphans, nothing_left,
    process_alive, restarts_consistent, shutdown_escalated, subscriber_flood_accounted,
    tree_converged,
)
from prismatic.chaos._cgroup import cgroup_unavailable, open_memory_cgroup
from prismatic.chaos._tmpfs import free_bytes, open_tmpfs, tmpfs_unavailable
from prismatic.chaos._observe import (
    TAG_VAR, exits_in_log, metric_sum, rss_bytes, tagged_processes,
)
from prismatic.chaos._shape import Slot, TreeShape
from tests.conftest import SESSION_TAG, wait_until

SHAPE = TreeShape((Slot("", "supervisor", True), Slot("a", "supervisor", True),
                   Slot("a/w", "worker", True), Slot("t", "worker", False)))


def _row(path: str, pid: int | None) -> TreeRow:
    return TreeRow(path=path, type="worker", pid=pid, restarts=0, uptime=None)


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "30"], env=dict(os.environ, PRISMATIC_TEST_TAG=SESSION_TAG))
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_tree_converged_wants_every_permanent_path_alive(live_pid: int) -> None:
    rows = [_row("", live_pid), _row("a", live_pid), _row("a/w", live_pid)]
    assert tree_converged(SHAPE, rows) is None  # "t" is transient: it may be gone
    dead = _dead_pid()
    problem = tree_converged(SHAPE, [*rows[:2], _row("a/w", dead)])
    assert problem is not None and f"a/w (pid {dead} dead)" in problem
    assert "a/w" in (tree_converged(SHAPE, rows[:2]) or "")


def test_tree_converged_on_the_subtree_a_fault_hit(live_pid: int) -> None:
    dead = _dead_pid()
    rows = [_row("", dead), _row("a", live_pid), _row("a/w", live_pid)]
    assert tree_converged(SHAPE, rows, under="a") is None  # the root is not a's business
    assert tree_converged(SHAPE, rows) is not None
    # the row still names the killed pid (alive a moment longer): not converged yet
    assert "a/w" in (tree_converged(SHAPE, rows, under="a/w", replaced=live_pid) or "")
    assert tree_converged(SHAPE, rows, under="a/w", replaced=dead) is None


def test_a_stopped_or_zombie_process_is_alive_or_dead_as_the_kernel_says(live_pid: int) -> None:
    os.kill(live_pid, signal.SIGSTOP)
    assert process_alive(live_pid)  # frozen is not dead: the hang scenario relies on it
    os.kill(live_pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(live_pid), 5, "the zombie to count as dead")


def test_permanent_paths_exclude_a_permanent_child_of_a_transient_supervisor() -> None:
    shape = TreeShape((Slot("", "supervisor", True), Slot("t", "supervisor", False),
                       Slot("t/w", "worker", True)))
    assert shape.permanent_paths() == {""}
    assert shape.killable() == ()


def test_no_orphans_finds_a_tagged_process_outside_the_tree() -> None:
    """A real double fork escapes its parent; the walk of /proc by tag finds it."""
    tag = f"t-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, **{TAG_VAR: tag, "PRISMATIC_TEST_TAG": SESSION_TAG})
    code = ("import os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(30)\n"
            "    os._exit(0)\n"
            "time.sleep(30)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        def escaped() -> dict[int, int] | None:
            # The middle child is tagged too, and its parent is ``parent`` until it exits:
            # two processes alone may be the parent and that child, before the escape.
            procs = tagged_processes(tag)
            return procs if (len(procs) == 2 and parent.pid in procs
                             and all(ppid != parent.pid for pid, ppid in procs.items()
                                     if pid != parent.pid)) else None
        procs = wait_until(escaped, 10, "the parent and its escaped grandchild")
        problem, orphans = no_orphans(procs, [parent.pid])
        assert orphans and parent.pid not in orphans
        assert problem is not None and str(orphans[0]) in problem
        assert no_orphans({parent.pid: 1}, [parent.pid]) == (None, [])
        assert nothing_left(procs) is not None
    finally:
        for pid in tagged_processes(tag):
            os.kill(pid, signal.SIGKILL)
        parent.wait()
    wait_until(lambda: not tagged_processes(tag), 5, "the test's processes to go")
    assert nothing_left(tagged_processes(tag)) is None


def test_no_orphans_follows_the_chain_to_the_node() -> None:
    assert no_orphans({10: 1, 11: 10, 12: 11}, [10])[1] == []
    assert no_orphans({10: 1, 11: 10, 12: 99}, [10])[1] == [12]
    assert no_orphans({11: 12, 12: 11}, [10])[1] == [11, 12]  # a cycle is not the node
    assert no_orphans({10: 1, 11: 10, 20: 1, 21: 20}, [10, 20])[1] == []  # a cluster


def test_acked_events_intact() -> None:
    acked = {"0-0": 5, "0-1": 6}
    assert acked_events_intact(acked, [("0-0", 5), ("0-1", 6), ("0-2", 7)]) is None
    assert "missing" in (acked_events_intact(acked, [("0-0", 5)]) or "")
    assert "more than once" in (acked_events_intact(acked, [("0-0", 5), ("0-1", 6),
                                                            ("0-1", 9)]) or "")
    assert "another seq" in (acked_events_intact(acked, [("0-0", 5), ("0-1", 8)]) or "")
    # an unacked emit that reached the log twice is a duplicate too
    assert acked_events_intact({}, [("1-0", 1), ("1-0", 2)]) is not None


def test_control_answered() -> None:
    assert control_answered([], 0.01, 2.0) is None
    assert "failed" in (control_answered(["ControlError: x"], 0.01, 2.0) or "")
    assert "3000 ms" in (control_answered([], 3.0, 2.0) or "")


def _exit(pid: int | None, path: str, kind: str = "child_exited", reason: str | None = "killed",
          mono: float = 10.0) -> ExitSeen:
    return ExitSeen(pid=pid, path=path, kind=kind, reason=reason, mono=mono)


def test_kills_accounted() -> None:
    kills = [Kill(101, "a/w", 10.0), Kill(102, "a", 10.5)]
    exits = [_exit(101, "a/w"), _exit(102, "a", mono=10.51)]
    assert kills_accounted(kills, exits) is None
    # a kill nobody reported, with no ancestor dying near it
    assert "never reported" in (kills_accounted(kills, exits[:1]) or "")
    # ... excused when its supervisor died within the window (PDEATHSIG took it)
    crashed = _exit(102, "a", reason="crashed")
    assert kills_accounted([Kill(103, "a/w", 10.4)], [crashed]) is None
    assert kills_accounted([Kill(103, "a/w", 20.0)], [crashed]) is not None
    # ... or gave up (intensity exceeded on a child of its own supervisor)
    assert kills_accounted([Kill(103, "a/w", 10.0)],
                           [_exit(104, "a/x", "intensity_exceeded", None)]) is None
    assert kills_accounted([Kill(103, "a/w", 10.0)], [_exit(104, "b/x", "intensity_exceeded",
                                                            None)]) is not None
    # a SIGKILL exit nobody sent; one reported twice
    assert "nobody sent" in (kills_accounted(kills, [*exits, _exit(999, "a/v")]) or "")
    assert "twice" in (kills_accounted(kills, [*exits, _exit(101, "a/w")]) or "")
    # the same pid, handed to another process later and killed again: two kills, two reports
    reused = [Kill(101, "a/w", 10.0), Kill(101, "b/w", 20.0)]
    assert kills_accounted(reused, [_exit(101, "a/w"), _exit(101, "b/w", mono=20.01)]) is None
    assert "never reported" in (kills_accounted(reused, [_exit(101, "a/w")]) or "")
    # ... and an exit at another path is another process: not this kill's report
    assert "never reported" in (kills_accounted([Kill(101, "a/w", 10.0)],
                                                [_exit(101, "b/w", mono=10.01)]) or "")
    # a report long before the kill is not its report; a kill long before an exit not its cause
    assert "nobody sent" in (kills_accounted([Kill(101, "a/w", 100.0)],
                                             [_exit(101, "a/w", mono=10.0)]) or "")


def test_restarts_consistent() -> None:
    exits = [_exit(1, "a/w"), _exit(2, "a/v", reason="crashed"),
             _exit(None, "a/v", "intensity_exceeded", None)]
    assert restarts_consistent(exits, killed_metric=1, restarts_metric=1,
                               escalations_metric=1) is None
    assert "killed" in (restarts_consistent(exits, 2, 1, 1) or "")
    assert "escalations" in (restarts_consistent(exits, 1, 1, 0) or "")
    assert "restarts" in (restarts_consistent(exits, 1, 0, 1) or "")


def test_expected_escalation_follows_otp_counting() -> None:
    # the crash loop's supervisors: inner (intensity 1) under outer (intensity 3)
    assert expected_escalation((1, 3), 0) == -1  # a plain restart
    assert [expected_escalation((1, 3), n) for n in (1, 2, 3)] == [0, 0, 0]
    assert [expected_escalation((1, 3), n) for n in (4, 8, 100)] == [1, 1, 1]
    assert expected_escalation((5,), 5) == 0 and expected_escalation((5,), 4) == -1


@given(st.lists(st.integers(0, 6), min_size=1, max_size=4), st.integers(0, 40))
def test_expected_escalation_grows_with_failing_starts(intensities: list[int], n: int) -> None:
    level = expected_escalation(intensities, n)
    assert -1 <= level < len(intensities)
    assert expected_escalation(intensities, n + 1) >= level


def test_escalation_stopped_at() -> None:
    chain = ["x/inner", "x", ""]
    assert escalation_stopped_at(chain, 0, {"x/inner"}) is None
    assert escalation_stopped_at(chain, -1, set()) is None
    assert "past" in (escalation_stopped_at(chain, 0, {"x/inner", "x"}) or "")
    assert "to give up" in (escalation_stopped_at(chain, 1, {"x/inner"}) or "")


def test_shutdown_escalated_and_call_timed_out() -> None:
    assert shutdown_escalated(1.05, 1.0, "killed") is None
    assert "not killed" in (shutdown_escalated(1.05, 1.0, "shutdown") or "")
    assert "before" in (shutdown_escalated(0.2, 1.0, "killed") or "")
    assert "past" in (shutdown_escalated(5.0, 1.0, "killed") or "")
    assert call_timed_out("timeout") is None
    assert call_timed_out("a reply") is not None


def test_metric_sum_and_exits_in_log() -> None:
    text = ('# TYPE prismatic_child_exits_total counter\n'
            'prismatic_child_exits_total{reason="killed"} 3.0\n'
            'prismatic_child_exits_total{reason="crashed"} 2.0\n'
            'prismatic_child_exits_totally 7.0\n')
    assert metric_sum(text, "prismatic_child_exits_total") == 5.0
    assert metric_sum(text, "prismatic_child_exits_total", 'reason="killed"') == 3.0

    class Rec:
        def __init__(self, payload: object) -> None:
            self.payload = payload

    recs = [Rec({"path": ["a"], "key": "w", "kind": "child_exited", "pid": 5,
                 "reason": {"kind": "killed", "signal": 9}, "mono": 1.5}),
            Rec({"path": [], "key": "a", "kind": "child_started", "pid": 6, "mono": 2.0})]
    assert exits_in_log(recs) == [ExitSeen(5, "a/w", "child_exited", "killed", 1.5)]



def test_flood_accounted() -> None:
    assert flood_accounted(200, 5, 0, 200, 5, 5) is None
    assert "no back-pressure" in (flood_accounted(5000, 0, 0, 5000, 0, 5) or "")
    assert "handled" in (flood_accounted(200, 5, 0, 199, 5, 5) or "")  # one lost
    assert "dead letters" in (flood_accounted(200, 5, 0, 200, 4, 5) or "")  # one silent
    assert "otherwise" in (flood_accounted(200, 5, 1, 200, 5, 5) or "")


def test_memory_bounded() -> None:
    assert memory_bounded(8 << 20, 9 << 20, 32 << 20) is None
    assert "40 MiB" in (memory_bounded(8 << 20, 48 << 20, 32 << 20) or "")


def test_descendants_gone(live_pid: int) -> None:
    assert "1 child process" in (descendants_gone([live_pid]) or "")
    assert descendants_gone([]) is None


def test_membership_converged() -> None:
    views = {"a": {"a": ("alive", 1), "b": ("alive", 5), "c": ("dead", 3)},
             "b": {"a": ("alive", 1), "b": ("alive", 5), "c": ("left", 3)}}
    assert membership_converged(views, {"a": "alive", "b": "alive", "c": "down"}) is None
    assert "a sees c dead" in (membership_converged(views, {"c": "alive"}) or "")
    assert "b sees a alive" in (membership_converged(views, {"a": "down"}) or "")
    assert membership_converged(views, {"b": "alive"}, {"b": 4}) is None
    assert "not alive" in (membership_converged(views, {"b": "alive"}, {"b": 5}) or "")
    assert "absent" in (membership_converged(views, {"d": "alive"}) or "")


def test_monitors_fired_once() -> None:
    """Watchers on a, b, c each monitor the others' marks (1, 2, 3); c is cut off."""
    marks = {"a": 1, "b": 2, "c": 3}
    mons = [Monitor(w, n, pid) for w in marks for n, pid in marks.items() if n != w]
    lost = {("a", "c"), ("b", "c"), ("c", "a"), ("c", "b")}
    across = [DownSeen(m, "noconnection") for m in mons if (m.watcher, m.node) in lost]
    assert monitors_fired_once(mons, across, set(), lost) is None
    assert "never fired" in (monitors_fired_once(mons, across[1:], set(), lost) or "")
    # a late notice after the heal fires one again
    assert "more than once" in (monitors_fired_once(mons, [*across, DownSeen(
        across[0].monitor, "noconnection")], set(), lost) or "")
    # across a cut the process lives on: the reason can only be noconnection
    wrong = [DownSeen(across[0].monitor, "killed by SIGKILL"), *across[1:]]
    assert "not noconnection" in (monitors_fired_once(mons, wrong, set(), lost) or "")
    # ... unless it died too: then its real reason is as good
    dead = {(across[0].monitor.node, across[0].monitor.ospid)}
    assert monitors_fired_once(mons, wrong, dead, lost) is None
    # within a side nothing may fire
    ab = next(m for m in mons if (m.watcher, m.node) == ("a", "b"))
    assert "reachable node fired" in (monitors_fired_once(
        mons, [*across, DownSeen(ab, "noconnection")], set(), lost) or "")
    # a death (no lost link) fires the monitors of the dead process, once each
    deaths = [DownSeen(m, "killed by SIGKILL") for m in mons if m.node == "b"]
    assert monitors_fired_once(mons, deaths, {("b", 2)}, set()) is None
    assert "never fired" in (monitors_fired_once(mons, deaths[:1], {("b", 2)}, set()) or "")
    assert "nobody set" in (monitors_fired_once(
        mons, [DownSeen(Monitor("a", "z", 9), "noproc")], set(), set()) or "")


def test_global_name_resolved() -> None:
    older, newer = ("a", 10), ("c", 30)
    everyone = {"a": older, "b": older, "c": older}
    assert global_name_resolved("g", everyone, [older, newer], {newer: [older]}) is None
    assert "resolves differently" in (global_name_resolved(
        "g", everyone | {"c": newer}, [older, newer], {newer: [older]}) or "")
    assert "told 0 time(s)" in (global_name_resolved("g", everyone, [older, newer], {}) or "")
    assert "told 2 time(s)" in (global_name_resolved(
        "g", everyone, [older, newer], {newer: [older, older]}) or "")
    assert "winner" in (global_name_resolved(
        "g", everyone, [older, newer], {newer: [older], older: [newer]}) or "")
    assert "not a live process" in (global_name_resolved(
        "g", everyone, [newer], {}) or "")  # the holder it names died
    assert "no holder" in (global_name_resolved("g", dict.fromkeys("abc"), [older], {}) or "")
    assert global_name_resolved("g", dict.fromkeys("abc"), [], {}) is None  # nobody took it


def test_subscriber_flood_accounted() -> None:
    assert subscriber_flood_accounted(1000, 1000, 0, 0) is None
    assert subscriber_flood_accounted(1000, 990, 0, 10) is None  # dropped, but counted
    assert "lost without being counted" in (subscriber_flood_accounted(1000, 990, 0, 0) or "")
    assert "out of publish order" in (subscriber_flood_accounted(1000, 1000, 3, 0) or "")
    assert "received for" in (subscriber_flood_accounted(1000, 1001, 0, 0) or "")


def test_drops_counted_exactly() -> None:
    assert drops_counted_exactly(1000, 1000, 0, 0) is None
    assert drops_counted_exactly(1000, 700, 300, 300) is None  # dropped, counted exactly
    assert "!= 1000 published" in (drops_counted_exactly(1000, 700, 250, 300) or "")
    assert "250 counted lost" in (drops_counted_exactly(1000, 750, 250, 300) or "")


def test_rss_bytes_of_a_live_process(live_pid: int) -> None:
    assert rss_bytes(live_pid) > 0
    with pytest.raises(OSError):
        rss_bytes(_dead_pid())


def test_memory_cap_enforced() -> None:
    assert memory_cap_enforced("killed", 1, 60 << 20, 64 << 20) is None
    assert memory_cap_enforced("killed", 1, None, 64 << 20) is None  # no peak reported
    assert "ended crashed" in (memory_cap_enforced("crashed", 1, None, 64 << 20) or "")
    assert "no OOM kill" in (memory_cap_enforced("killed", 0, None, 64 << 20) or "")
    assert "over the 64 MiB cap" in (memory_cap_enforced("killed", 1, 65 << 20, 64 << 20) or "")


@pytest.mark.skipif(cgroup_unavailable() is not None, reason=str(cgroup_unavailable()))
def test_a_memory_cgroup_holds_a_process_and_goes_away(live_pid: int) -> None:
    with open_memory_cgroup(64 << 20) as group:
        group.add(live_pid)
        assert group.procs() == [live_pid] and group.oom_kills() == 0
        os.kill(live_pid, signal.SIGKILL)
        wait_until(lambda: not group.procs() or None, 5, "the process to leave its cgroup")
    assert not group.path.exists()


def test_disk_full_reported() -> None:
    full = "EventLogError: emit refused: EventLogFullError: event log x: disk full, 2 events"
    assert disk_full_reported([full, full], 0.05, 10) is None
    assert "never filled" in (disk_full_reported([], 0.05, 10) or "")
    assert "did not say" in (disk_full_reported(
        [full, "ControlError: node did not answer within 2.0s"], 0.05, 10) or "")
    assert "after space was freed" in (disk_full_reported([full], None, 10) or "")


@pytest.mark.skipif(tmpfs_unavailable() is not None, reason=str(tmpfs_unavailable()))
def test_a_tmpfs_fills_and_goes_away(tmp_path: Path) -> None:
    with open_tmpfs(tmp_path / "disk", 1 << 20) as disk:
        assert 0 < free_bytes(disk) <= 1 << 20
        with pytest.raises(OSError):  # ENOSPC: it is a disk that fills
            (disk / "big").write_bytes(b"x" * (2 << 20))
    assert not os.path.ismount(tmp_path / "disk")
