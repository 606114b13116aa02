"""A supervisor's zygote and its spares, in real nodes: who owns them, what happens when the
zygote dies or hangs, and that a child added later gets fast restarts too."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import prismatic as p
from prismatic._process import child_pids, process_name, uss_bytes
from prismatic.supervisors._logfile import log_path
from tests.conftest import alive, process_state, wait_until


def _of_kind(sup: int, comm: str) -> list[int]:
    return [c for c in child_pids(sup) if process_name(c) == comm]


def _zygote_of(sup: int) -> int:
    """The supervisor's zygote (a clone is named after it until it renames itself)."""
    return wait_until(lambda: len(z := _of_kind(sup, "prism:zygote")) == 1 and z[0], 10,
                      "exactly one zygote")


def _dormant(sup: int) -> None:
    """Wait until ``sup`` keeps no zygote and no spare, and still keeps none 0.2 s later (a
    zygote being renewed is briefly absent too)."""
    since: list[float] = []

    def none_for_a_while() -> bool:
        if _of_kind(sup, "prism:zygote") or _of_kind(sup, "prism:spare"):
            since.clear()
            return False
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] >= 0.2

    wait_until(none_for_a_while, 10, "the zygote and spare let go (dormancy)")


def _restart(n, key: str) -> int:
    old = n.conn.pid_of(key)
    os.kill(old, signal.SIGKILL)
    return wait_until(lambda: (new := n.conn.pid_of(key)) not in (None, old) and new, 10,
                      f"{key} restarted")


def test_spares_and_children_are_the_supervisors_own_children(node_factory):
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    _zygote_of(root)
    wait_until(lambda: _of_kind(root, "prism:spare"), 10, "a spare")
    new = _restart(n, "w1")
    assert new in child_pids(root)  # made by the zygote, parented to the supervisor


def test_a_killed_zygote_is_replaced_and_leaves_no_stray(node_factory):
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    zygote = _zygote_of(root)
    os.kill(zygote, signal.SIGKILL)
    wait_until(lambda: _zygote_of(root) != zygote, 10, "a new zygote")
    for _ in range(3):
        _restart(n, "w2")
    wait_until(lambda: len(_of_kind(root, "prism:spare")) == 1, 10, "exactly one spare")
    assert not [c for c in child_pids(root) if process_state(c) == "Z"]
    assert {c.id for c in n.conn.which_children()} == {"w1", "w2", "w3"}
    assert _troubles(n, "zygote_died") == 1  # logged by the supervisor, counted by the node


def _troubles(n, what: str) -> float:
    """The node's ``prismatic_supervisor_troubles_total{what}`` (0 when never counted)."""
    line = f'prismatic_supervisor_troubles_total{{what="{what}"}} '
    found = [x for x in n.conn.metrics().splitlines() if x.startswith(line)]
    return float(found[0].removeprefix(line)) if found else 0.0


@contextlib.contextmanager
def _hung_zygote(n) -> Iterator[int]:
    """The root supervisor's zygote, SIGSTOPped once its spare is made (so a spare asked
    of it never comes); continued on the way out, if it still exists."""
    root = n.conn.status().root_pid
    zygote = _zygote_of(root)
    wait_until(lambda: _of_kind(root, "prism:spare"), 10, "a spare")
    os.kill(zygote, signal.SIGSTOP)
    try:
        yield zygote
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(zygote, signal.SIGCONT)


def test_a_hung_zygote_does_not_hold_up_a_restart(node_factory):
    n = node_factory("tests.apps:one_for_one")
    with _hung_zygote(n) as zygote:
        for _ in range(3):  # the first takes the spare; the next ones cannot wait for one
            _restart(n, "w3")
    assert alive(zygote)


def test_a_child_added_later_gets_a_new_zygote_that_knows_it(node_factory):
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    zygote = _zygote_of(root)
    n.conn.start_child("", p.ChildSpec(id="late", start="tests.apps:Idle", args=("late",)))
    _restart(n, "late")  # forked directly: the zygote did not know the spec
    wait_until(lambda: _zygote_of(root) != zygote, 10, "the zygote renewed")
    wait_until(lambda: _of_kind(root, "prism:spare"), 10, "a spare of the new zygote")
    spare = _of_kind(root, "prism:spare")[0]
    assert _restart(n, "late") == spare  # the spare became the restarted child


def test_without_a_zygote_the_supervisor_forks_its_own_spares(node_factory, monkeypatch):
    monkeypatch.setenv("PRISMATIC_ZYGOTE", "0")  # read by the node: the fallback path
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    spare = wait_until(lambda: _of_kind(root, "prism:spare"), 10, "a spare")[0]
    assert not _of_kind(root, "prism:zygote")
    assert _restart(n, "w1") == spare
    wait_until(lambda: (s := _of_kind(root, "prism:spare")) and s != [spare], 10,
               "the next spare")


PIDS_CGROUP = Path("/sys/fs/cgroup/pids")


@contextlib.contextmanager
def _pids_limited(pid: int, limit: int) -> Iterator[None]:
    """Put ``pid`` alone in a new pids cgroup (v1) allowing ``limit`` processes: its forks
    and clones beyond that fail with EAGAIN, for real. Skips where no such cgroup can be
    made (not root, no writable pids controller)."""
    group = PIDS_CGROUP / f"prismatic-test-{uuid.uuid4().hex[:8]}"
    try:
        home = next(line.split(":", 2)[2] for line in
                    Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                    if line.split(":")[1] == "pids")
        group.mkdir()
    except (OSError, StopIteration) as exc:
        pytest.skip(f"no writable pids cgroup here: {exc}")
    try:
        (group / "pids.max").write_text(str(limit))
        (group / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        for left in (group / "cgroup.procs").read_text().split():
            try:
                (PIDS_CGROUP / home.lstrip("/") / "cgroup.procs").write_text(left)
            except OSError:
                pass  # it exited meanwhile
        group.rmdir()


def test_a_zygote_that_cannot_clone_does_not_stop_restarts(node_factory):
    """The zygote's clones fail for real (a pids cgroup of one process): the supervisor
    logs each failure, forks the replacement itself, and does not spin asking again."""
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    zygote = _zygote_of(root)
    wait_until(lambda: _of_kind(root, "prism:spare"), 10, "a spare")
    out = n.log.with_name("node.out")
    with _pids_limited(zygote, 1):
        _restart(n, "w1")  # takes the spare; the supervisor asks the zygote for the next
        wait_until(lambda: "its zygote could not make a spare: Resource temporarily "
                           "unavailable" in out.read_text(), 10, "the clone failure logged")
        for key in ("w2", "w1", "w3"):  # no spare now: forked directly, promptly
            _restart(n, key)
        failures = out.read_text().count("could not make a spare")
        assert failures <= 10, f"{failures} failed clone requests: asking in a loop"
        assert alive(zygote)
    assert {c.id for c in n.conn.which_children()} == {"w1", "w2", "w3"}


def test_an_idle_supervisor_lets_its_spare_and_zygote_go_and_regains_them(node_factory,
                                                                          monkeypatch):
    """Dormancy: after PRISMATIC_SPARE_IDLE seconds without a start the supervisor keeps no
    spare and no zygote; a restart then forks directly, and brings both back."""
    # 1 s: the zygote and spare a restart brings back live that long, which a loaded
    # machine's polling must not miss (0.3 s did, under load).
    monkeypatch.setenv("PRISMATIC_SPARE_IDLE", "1.0")
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    wait_until(lambda: not _of_kind(root, "prism:zygote") and not _of_kind(root, "prism:spare"),
               10, "the zygote and spare let go")
    # w1, w2, w3 and nothing else but the node's shared spare's keeper (supervisors/_lender)
    assert sorted(process_name(c) for c in child_pids(root)) == [
        "prism:lender", "prism:w1", "prism:w2", "prism:w3"]
    _restart(n, "w1")  # forked by the supervisor itself
    _zygote_of(root)
    wait_until(lambda: _of_kind(root, "prism:spare"), 10, "a spare again")
    wait_until(lambda: not _of_kind(root, "prism:zygote"), 10, "dormant again")
    assert {c.id for c in n.conn.which_children()} == {"w1", "w2", "w3"}


def test_a_bad_spare_idle_setting_stops_the_node_before_it_starts(tmp_path: Path, monkeypatch):
    from tests.test_node_data_dir import one_line_exit_2, run_node

    monkeypatch.setenv("PRISMATIC_SPARE_IDLE", "soon")
    run = run_node(tmp_path / "d", f"spareidle{uuid.uuid4().hex[:6]}")
    one_line_exit_2(run, "PRISMATIC_SPARE_IDLE='soon'")


def test_spare_idle_values():
    from prismatic.supervisors._procs import (
        SPARE_IDLE_DEFAULT_S, check_spare_idle, spare_idle_s,
    )

    assert spare_idle_s({}) == SPARE_IDLE_DEFAULT_S
    assert spare_idle_s({"PRISMATIC_SPARE_IDLE": "never"}) == float("inf")
    assert spare_idle_s({"PRISMATIC_SPARE_IDLE": "2.5"}) == 2.5
    for bad in ("-1", "nan", "soon"):
        assert check_spare_idle({"PRISMATIC_SPARE_IDLE": bad}) is not None
    assert check_spare_idle({"PRISMATIC_SPARE_IDLE": "0"}) is None


def test_a_small_child_supervisor_starts_dormant_and_wakes_on_a_restart(node_factory):
    """A child supervisor of a few children forks them itself (no zygote, no spare: two
    processes fewer per small supervisor); its first restart brings both."""
    n = node_factory("tests.apps:nested")
    mid = n.conn.pid_of("mid")
    leaf = n.conn.pid_of("mid/leaf")
    for sup in (mid, leaf):
        assert not _of_kind(sup, "prism:zygote") and not _of_kind(sup, "prism:spare")
    old = n.conn.pid_of("mid/m")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: n.conn.pid_of("mid/m") not in (None, old), 10, "m restarted")
    _zygote_of(mid)
    wait_until(lambda: _of_kind(mid, "prism:spare"), 10, "a spare under mid")
    assert not _of_kind(leaf, "prism:zygote")  # leaf restarted nothing: still dormant


def test_a_small_supervisors_worker_holds_few_pages_its_supervisor_wrote(node_factory):
    """A small supervisor forks its children before its first decision. Forked after it, a
    child shared every page the supervisor had written so far, and the supervisor wrote
    many again at once (the child's start: the same decision code, its reports, its loop):
    each such page was copied into the supervisor and its original left to the child
    alone. Measured, private memory of such a worker beyond a worker of the root's: 0.33
    MiB forked after, 0.17-0.19 forked before."""
    n = node_factory("tests.apps:small_supervisors_beside_workers")

    def median_uss(paths: list[str]) -> float:
        return sorted(uss_bytes(n.conn.pid_of(path)) for path in paths)[len(paths) // 2]

    flat = median_uss([f"f{i}" for i in range(4)])
    small = median_uss([f"s{i}/w" for i in range(4)])
    assert small - flat < 0.25 * 2**20, (flat, small)


def test_a_hung_zygote_does_not_hang_a_supervisor_going_dormant(node_factory, monkeypatch):
    """Letting the zygote go stops it in order, waiting for the spares it was asked for: a
    zygote that never answers (here SIGSTOPped while a spare was asked of it) must not
    hold the supervisor in that wait, or it restarts nothing ever again."""
    monkeypatch.setenv("PRISMATIC_SPARE_IDLE", "1.5")
    n = node_factory("tests.apps:one_for_one")
    with _hung_zygote(n) as zygote:
        _restart(n, "w1")  # takes the spare; its successor is asked of the hung zygote
        wait_until(lambda: not alive(zygote), 10, "the hung zygote let go (dormancy)")
        _restart(n, "w2")  # the supervisor still restarts
        wait_until(lambda: _troubles(n, "zygote_hung") == 1, 5, "the hung zygote counted")
    assert {c.id for c in n.conn.which_children()} == {"w1", "w2", "w3"}


def test_a_supervisor_that_cannot_fork_its_zygote_back_goes_on(node_factory, monkeypatch):
    """Waking from dormancy, the supervisor forks the replacement itself, then its zygote
    again: where the process limit (a pids cgroup, for real) refuses that second fork, the
    supervisor logs it and goes on with direct forks; it must not die of it (the root's
    death ends the node)."""
    # 1 s: the zygote and spare a restart brings back live that long, which a loaded
    # machine's polling must not miss (0.3 s did, under load).
    monkeypatch.setenv("PRISMATIC_SPARE_IDLE", "1.0")
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    _dormant(root)
    with _pids_limited(root, 2):  # the supervisor and the one child it forks
        _restart(n, "w1")  # forked directly; the zygote's fork then fails
        wait_until(lambda: "Resource temporarily unavailable" in
                   n.log.with_name("node.out").read_text(), 10, "the failed fork logged")
        assert alive(root)
        assert n.proc.poll() is None
    _restart(n, "w2")
    assert {c.id for c in n.conn.which_children()} == {"w1", "w2", "w3"}


def test_a_start_the_process_limit_refuses_is_a_start_error(node_factory, monkeypatch):
    """OTP's ``start_child`` answers ``{error, Reason}`` when the child cannot start, and the
    supervisor and its other children go on. A fork the process limit refuses (a pids
    cgroup, for real; the pool is dormant, so it forks the child itself) is such a failure:
    it must not kill the supervisor (and with it every child of the pool)."""
    monkeypatch.setenv("PRISMATIC_SPARE_IDLE", "0.3")
    n = node_factory("tests.apps:dynamic")
    root = n.conn.status().root_pid
    first = n.conn.start_child("", ("job0",))
    _dormant(root)
    with _pids_limited(root, 1):  # the supervisor alone: its fork of a child fails
        with pytest.raises(p.SupervisorError) as e:
            n.conn.start_child("", ("job1",))
        assert e.value.reason == "failed_to_start_child"
        assert alive(root) and alive(first)
    assert alive(n.conn.start_child("", ("job2",)))
    assert n.conn.count_children()["active"] == 2


def test_a_program_the_process_limit_refuses_is_a_start_error(node_factory):
    """As a worker's, a program child's start that no fork or spawn can make (a pids
    cgroup of the supervisor alone) answers failed_to_start_child; the supervisor lives."""
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    spec = p.ChildSpec(id="prog", start=p.Program(argv=("sleep", "600")), restart="temporary")
    with _pids_limited(root, 1):
        with pytest.raises(p.SupervisorError) as e:
            n.conn.start_child("", spec)
        assert e.value.reason == "failed_to_start_child"
        assert alive(root)
    fds = len(os.listdir(f"/proc/{root}/fd"))
    for _ in range(3):
        with _pids_limited(root, 1), pytest.raises(p.SupervisorError):
            n.conn.start_child("", spec)
    assert len(os.listdir(f"/proc/{root}/fd")) == fds  # the failed starts' pipes closed
    assert {c.id for c in n.conn.which_children()} == {"w1", "w2", "w3"}


def test_a_probe_the_process_limit_refuses_fails_the_start_or_skips_the_round(node_factory):
    """A program's readiness probe that cannot be forked fails its start (killed, answered
    failed_to_start_child); a liveness probe that cannot be forked skips its round (the
    program is not judged by what the supervisor could not do). Neither kills the
    supervisor."""
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    http = p.HttpCheck(url="http://127.0.0.1:9/")
    ready = p.ChildSpec(id="ready", start=p.Program(argv=("sleep", "600"), ready=http),
                        restart="temporary")
    with _pids_limited(root, 2):  # the supervisor and the program: no probe
        with pytest.raises(p.SupervisorError) as e:
            n.conn.start_child("", ready)
        assert e.value.reason == "failed_to_start_child"
        assert alive(root)
    alive_spec = p.ChildSpec(id="alive", restart="temporary", start=p.Program(
        argv=("sleep", "600"), alive=http, alive_every=0.05, alive_failures=1000))
    prog = n.conn.start_child("", alive_spec)
    out = n.log.with_name("node.out")
    with _pids_limited(root, 1):  # the supervisor alone (the program is elsewhere): no probe
        wait_until(lambda: "cannot fork its liveness probe" in out.read_text(), 10,
                   "a round skipped")
        assert alive(root) and alive(prog)
    n.conn.terminate_child("", "alive")
    assert {c.id for c in n.conn.which_children()} >= {"w1", "w2", "w3"}


def _signal_disposition(pid: int, sig: int) -> str:
    """'ignored', 'caught' or 'default': ``sig`` as process ``pid`` has it (/proc status)."""
    fields = dict(line.split(":\t", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    bit = 1 << (sig - 1)
    if int(fields["SigIgn"], 16) & bit:
        return "ignored"
    return "caught" if int(fields["SigCgt"], 16) & bit else "default"


def test_a_small_supervisors_children_forked_ahead_become_each_kind_in_order(node_factory):
    """A small supervisor forks its first children before its first decision (a process
    each, told later which child to become, prepared for none). As OTP: they start in order,
    each init done before the next; args reach them; an ignored one is no process; a child
    supervisor and workers alike are whole (a worker ignores SIGINT and catches SIGTERM to
    run terminate); a restart restarts with the args; no process of them is ever shown as a
    child or counted, and none unused is left once the supervisor is idle."""
    n = node_factory("tests.apps:small_supervisor_of_every_kind")
    s = n.conn.pid_of("s")
    lines = [ln for ln in n.lines() if ln.startswith("init-")]
    assert lines == ["init-begin a 7", "init-end a 7", "init-begin c/w 0", "init-end c/w 0",
                     "init-begin d 9", "init-end d 9"], lines
    rows = {r.id: r for r in n.conn.which_children("s")}
    assert sorted(rows) == ["a", "b", "c", "d"] and rows["b"].pid is None
    assert n.conn.count_children("s") == {"specs": 4, "active": 3, "supervisors": 1,
                                          "workers": 3}
    _dormant(s)
    kids = set(child_pids(s))
    assert kids == {rows["a"].pid, rows["c"].pid, rows["d"].pid}, kids
    a = rows["a"].pid
    assert process_name(a) == "prism:a" and process_name(rows["c"].pid) == "prism-sup:c"
    assert _signal_disposition(a, signal.SIGINT) == "ignored"
    assert _signal_disposition(a, signal.SIGTERM) == "caught"
    os.kill(a, signal.SIGINT)
    n.conn.terminate_child("s", "a")
    wait_until(lambda: "terminate a shutdown" in n.lines(), 10, "a's terminate ran")
    n.conn.restart_child("s", "a")
    wait_until(lambda: n.lines().count("init-end a 7") == 2, 10, "a restarted with its args")
    assert sorted(r.id for r in n.conn.which_children("s")) == ["a", "b", "c", "d"]
    assert "hello from d" in log_path(n.data_dir, "s/d").read_text()  # its print, its log
    # One whose first child's init fails: its start fails (as OTP), no process of it stays.
    with pytest.raises(p.StartError):
        n.conn.start_child("", p.ChildSpec(id="f", type="supervisor",
                                           start="tests.apps:small_supervisor_failing_first"))
    root = n.conn.status().root_pid
    zygote = _zygote_of(root)

    def left_of_f() -> list[int]:  # an orphan goes to the root; its own spares are its zygote's
        return [k for k in n.pids() if process_name(k) in ("prism-sup:f", "prism:x", "prism:y")
                ] + [k for k in child_pids(root)
                     if process_name(k) == "prism:spare" and os.getpgid(k) != zygote]

    wait_until(lambda: not left_of_f(), 10, "nothing left of f")


def test_a_spare_dead_before_it_is_told_what_to_become_is_not_the_supervisors_end(
        node_factory):
    """A restart takes a spare that died a moment ago, its death not yet read: telling it
    which child to become fails (a broken pipe), the restart takes the next way, and the
    spare's death, read after, is a spare that died (logged, counted), not a crash of the
    supervisor (the spare was no longer in its list: ValueError, and the root took the node
    down with it)."""
    n = node_factory("tests.apps:one_for_one")
    root = n.conn.status().root_pid
    _zygote_of(root)
    spare = wait_until(lambda: (s := _of_kind(root, "prism:spare")) and s[0], 10, "a spare")
    w1 = n.conn.pid_of("w1")
    os.kill(root, signal.SIGSTOP)  # both deaths wait to be read, the child's first
    try:
        os.kill(w1, signal.SIGKILL)
        wait_until(lambda: process_state(w1) == "Z", 5, "w1 dead")
        os.kill(spare, signal.SIGKILL)
        wait_until(lambda: process_state(spare) == "Z", 5, "the spare dead")
    finally:
        os.kill(root, signal.SIGCONT)
    wait_until(lambda: n.conn.pid_of("w1") not in (None, w1), 10, "w1 restarted")
    assert n.conn.status().root_pid == root
    wait_until(lambda: _troubles(n, "spare_died") >= 1, 5, "the spare's death counted")
