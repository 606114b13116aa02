"""The node's shared spare (``supervisors/_lender.py``): a dormant supervisor's first restart
takes it, and the lent child is the supervisor's in all but the kernel's record: its exit
status comes through, it dies with its supervisor, a lender that dies takes it along and is
forked again, and what another process sends the lender changes nothing."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import time
import uuid

import msgspec
import pytest

import prismatic as p
from prismatic._process import child_pids, process_name
from prismatic.supervisors._lender import LenderHandle
from prismatic.supervisors._shared_spare import lendable, resolve
from prismatic.supervisors._lending import (
    ExitOf, LentExit, Taken, decode, encode, lender_address, spare_address,
)
from tests.conftest import alive, run_fresh, squatted_by_nobody, start_node, wait_until
from tests.test_zygote import _troubles

SHARED_SPARE = "prism:shared-sp"  # the kernel keeps 15 characters of "prism:shared-spare"


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _only(parent: int, comm: str, what: str) -> int:
    """The one live child of ``parent`` named ``comm`` (the lender keeps its dead children
    zombies a moment: see _lender)."""
    return wait_until(lambda: len(k := [c for c in child_pids(parent) if alive(c)
                                        and process_name(c) == comm]) == 1 and k[0],
                      10, what)


def _lender_and_spare(n) -> tuple[int, int]:
    """Node ``n``'s lender and the spare it keeps (each waited for)."""
    lender = _only(n.conn.status().root_pid, "prism:lender", "the lender")
    return lender, _only(lender, SHARED_SPARE, "the shared spare")


def _restarted(n, key: str, old: int) -> int:
    return wait_until(lambda: (new := n.conn.pid_of(key)) not in (None, old) and new, 10,
                      f"{key} restarted")


# ---- pure -----------------------------------------------------------------------------------

def test_resolve_finds_only_static_children_reached_through_static_supervisors():
    w = p.ChildSpec(id="w", start="tests.apps:Idle")
    leaf = p.SupervisorSpec(children=[w])
    made = p.ChildSpec(id="made", type="supervisor", start=lambda: leaf)  # a start function
    tree = p.SupervisorSpec(children=[
        p.ChildSpec(id="sup", start=leaf), made, p.ChildSpec(id="top", start="tests.apps:Idle")])
    assert resolve(tree, ("sup",), "w") is w
    assert resolve(tree, (), "top") is tree.children[2]
    assert resolve(tree, ("sup",), "nope") is None
    assert resolve(tree, ("nope",), "w") is None
    assert resolve(tree, ("made",), "w") is None  # its spec exists only once it has started
    assert resolve(tree, ("top",), "w") is None  # a worker has no children
    assert lendable(w)
    assert not lendable(tree.children[0])  # a supervisor child keeps the fork path
    assert not lendable(p.ChildSpec(id="prog", start=p.Program(argv=["true"])))


def test_lender_messages_round_trip_and_malformed_ones_raise():
    for m in (Taken(5), ExitOf(7), LentExit(7, 9), LentExit(0, -1)):
        assert decode(encode(m)) == m
    for bad in (b"", b"\xc1", encode({"type": "exit_of"}), encode({"type": "bogus", "pid": 1}),
                encode(ExitOf(7))[:-1]):
        with pytest.raises((msgspec.DecodeError, ValueError)):
            decode(bad)


def test_the_lenders_own_modules_are_not_in_the_image_the_tree_is_forked_from():
    """The root imports the lender's loop and bookkeeping when it starts the lender: in the
    node's image, they would take pages, and shift CPython's type attribute cache under
    the children's warmed start (measured: ~280 -> ~345 faults of a supervisor's start)."""
    imported = run_fresh("import sys, prismatic.node, prismatic.supervisors._runtime\n"
                         "print(*sorted(m for m in sys.modules if m.endswith(('_lender', "
                         "'_loans'))))")
    assert imported == []


# ---- in a real node -------------------------------------------------------------------------

def test_a_dormant_supervisors_first_restart_takes_the_shared_spare(node_factory):
    n = node_factory("tests.apps:small_child_supervisor")
    root, sup = n.conn.status().root_pid, n.conn.pid_of("sup")
    lender = _only(root, "prism:lender", "the lender")
    spare = _only(lender, SHARED_SPARE, "the shared spare")
    old = n.conn.pid_of("sup/w")
    os.kill(old, signal.SIGKILL)
    lent = _restarted(n, "sup/w", old)
    assert lent == spare and _parent(lent) == lender
    assert [(c.id, c.pid) for c in n.conn.which_children("sup")] == [("w", lent)]
    # The lender makes another; the supervisor, awake now, restarts with its own.
    wait_until(lambda: [c for c in child_pids(lender) if process_name(c) == SHARED_SPARE
                        and c != lent], 10, "a new shared spare")
    os.kill(lent, signal.SIGKILL)
    own = _restarted(n, "sup/w", lent)
    assert _parent(own) == sup
    assert n.conn.which_children("sup")[0].pid == own


def test_a_lent_childs_exit_status_comes_through_the_lender(node_factory):
    """Only the lender, its parent, can read a lent child's wait status: a normal exit must
    still be reported as normal (and a kill as killed)."""
    n = node_factory("tests.apps:small_supervisor_stopping_on_cast")
    lender, spare = _lender_and_spare(n)
    old = n.conn.pid_of("sup/w")
    with n.events() as ev:
        os.kill(old, signal.SIGKILL)
        assert _restarted(n, "sup/w", old) == spare
        n.conn.cast(p.Pid(n.conn.status().node, spare), "stop")
        reasons = {}
        while spare not in reasons:
            e = ev.next(10)
            assert e is not None, "no exit of the lent child"
            if e.kind == "child_exited" and e.path == ("sup",):
                reasons[e.pid] = p.describe(e.reason)
    assert reasons == {old: "killed by SIGKILL", spare: "normal"}


def test_a_lent_child_dies_with_its_supervisor(node_factory):
    n = node_factory("tests.apps:small_child_supervisor")
    lender = _only(n.conn.status().root_pid, "prism:lender", "the lender")
    old = n.conn.pid_of("sup/w")
    os.kill(old, signal.SIGKILL)
    lent = _restarted(n, "sup/w", old)
    assert _parent(lent) == lender
    sup = n.conn.pid_of("sup")
    os.kill(sup, signal.SIGKILL)
    wait_until(lambda: not alive(lent), 5, "the lent child killed with its supervisor")
    wait_until(lambda: n.conn.pid_of("sup") not in (None, sup), 10, "sup restarted")
    wait_until(lambda: n.conn.pid_of("sup/w") not in (None, lent), 10, "sup/w started again")
    assert lender in child_pids(n.conn.status().root_pid)  # the lender carried on


def test_a_lender_that_dies_takes_what_it_lent_and_is_forked_again(node_factory):
    n = node_factory("tests.apps:small_child_supervisor")
    root = n.conn.status().root_pid
    lender = _only(root, "prism:lender", "the lender")
    old = n.conn.pid_of("sup/w")
    os.kill(old, signal.SIGKILL)
    lent = _restarted(n, "sup/w", old)
    os.kill(lender, signal.SIGKILL)
    _restarted(n, "sup/w", lent)  # the supervisor saw it die (killed) and restarted it
    assert not alive(lent)
    new = wait_until(lambda: [c for c in child_pids(root) if process_name(c) == "prism:lender"
                              and c != lender], 10, "a new lender")
    _only(new[0], SHARED_SPARE, "the new lender's spare")
    wait_until(lambda: _troubles(n, "lender_died") >= 1, 5, "the lender's death counted")


def test_what_the_lender_is_sent_by_another_process_changes_nothing(node_factory):
    """Malformed messages and answers sent as questions are refused (answered, counted,
    logged); a status asked of a process that is not the lender's is answered unknown; the
    lender keeps its spare and serves on."""
    n = node_factory("tests.apps:small_child_supervisor")
    lender, spare = _lender_and_spare(n)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(lender_address(n.conn.status().node))
        s.settimeout(5)
        for bad in (b"\xc1\x00", encode(Taken(1)), encode(LentExit(1, 0))):
            s.send(bad)
            assert decode(s.recv(1 << 16)) == LentExit(0, -1)
        s.send(encode(ExitOf(os.getpid())))
        assert decode(s.recv(1 << 16)) == LentExit(os.getpid(), -1)
    wait_until(lambda: _troubles(n, "lender_refused") >= 3, 5, "the refusals counted")
    assert alive(lender) and spare in child_pids(lender)
    old = n.conn.pid_of("sup/w")
    os.kill(old, signal.SIGKILL)
    assert _restarted(n, "sup/w", old) == spare  # served on


def test_a_spare_taken_by_another_process_is_not_lent_twice(node_factory):
    """Whoever connects to the spare's address first takes it: the spare accepts one
    connection and closes its address. A supervisor that finds none forks its child; one
    taken and let go without a word exits, and the lender makes another."""
    n = node_factory("tests.apps:small_child_supervisor")
    sup = n.conn.pid_of("sup")
    lender, spare = _lender_and_spare(n)
    thief = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    thief.connect(spare_address(n.conn.status().node))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as late:
        late.setblocking(False)
        try:  # queued behind the first (backlog 0: one at most), or the address closed
            late.connect(spare_address(n.conn.status().node))
        except (BlockingIOError, ConnectionRefusedError):
            pass
        else:  # queued in the moment between the spare's accept and its close: reset
            late.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert late.recv(1) == b""
    old = n.conn.pid_of("sup/w")
    os.kill(old, signal.SIGKILL)
    own = _restarted(n, "sup/w", old)
    assert _parent(own) == sup  # found no spare: forked it itself
    thief.close()
    wait_until(lambda: not alive(spare), 5, "the spare let go to exit")
    again = wait_until(lambda: [c for c in child_pids(lender) if process_name(c) == SHARED_SPARE
                                and c != spare], 10, "another shared spare")
    assert again[0] != spare


def test_a_spare_address_held_by_another_user_costs_only_the_shared_spare(tmp_path):
    """Another user's process holds the shared spare's address before the node starts: a
    dormant supervisor trusts nothing there (it checks the listener's uid) and forks its
    child; the lender's spares, which cannot bind, are made again less and less often."""
    name = f"lend{uuid.uuid4().hex[:8]}"
    with squatted_by_nobody(spare_address(name)):
        n = start_node(tmp_path, "tests.apps:small_child_supervisor", name=name)
        try:
            sup = n.conn.pid_of("sup")
            old = n.conn.pid_of("sup/w")
            os.kill(old, signal.SIGKILL)
            assert _parent(_restarted(n, "sup/w", old)) == sup
            # The k-th and (k+1)-th deaths come 0.05 * 2**k s apart, not 50 ms: two deaths
            # seen as they come (the polling's delay is far below the bound).
            c = wait_until(lambda: (d := _troubles(n, "spare_died")) >= 2 and d, 10,
                           "spares failing")
            wait_until(lambda: _troubles(n, "spare_died") > c, 10, "one more failing")
            seen = time.monotonic()
            wait_until(lambda: _troubles(n, "spare_died") > c + 1, 10, "another failing")
            assert time.monotonic() - seen >= 0.3
        finally:
            n.stop()
            wait_until(lambda: not n.pids(), 10, "the node's processes to exit")


def test_a_spare_taken_for_a_restart_that_does_not_come_is_let_go(node_factory):
    """A dormant supervisor takes the spare as soon as it sees a worker die (told nothing
    yet, so its wake-up overlaps the decision); a decision that restarts nothing (a
    temporary worker) lets it go: it exits, not counted as a trouble, and the lender makes
    another."""
    n = node_factory("tests.apps:small_supervisor_of_a_temporary_worker")
    lender, spare = _lender_and_spare(n)
    os.kill(n.conn.pid_of("sup/w"), signal.SIGKILL)
    wait_until(lambda: [c.id for c in n.conn.which_children("sup")] == ["k"], 10,
               "w gone for good")
    wait_until(lambda: not alive(spare), 5, "the spare let go")
    again = _only(lender, SHARED_SPARE, "another shared spare")
    assert again != spare
    assert _troubles(n, "spare_died") == 0
    old = n.conn.pid_of("sup/k")  # and the next restart takes the new one
    os.kill(old, signal.SIGKILL)
    assert _restarted(n, "sup/k", old) == again


def _child_exits(ev, path: tuple[str, ...], pids: set[int]) -> dict[int, str]:
    reasons: dict[int, str] = {}
    while not pids <= reasons.keys():
        e = ev.next(10)
        assert e is not None, f"no exit of {pids - reasons.keys()}"
        if e.kind == "child_exited" and e.path == path:
            reasons[e.pid] = p.describe(e.reason)
    return reasons


def test_a_lent_childs_status_is_not_read_as_normal_where_proc_hides_it(tmp_path):
    """/proc/PID/stat shows a zombie's exit_code only to a reader ptrace would let look; to
    any other it shows 0, which reads as a normal exit. A node without CAP_SYS_PTRACE (a
    container's default) whose worker runs under another group is such a reader: a lent
    transient child killed must still be seen killed, and restarted."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv, to run a worker under another group")
    n = start_node(tmp_path, "tests.apps:small_supervisor_of_a_transient_in_another_group",
                   prefix=("setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace",
                           "--"))
    try:
        lender, spare = _lender_and_spare(n)
        old = n.conn.pid_of("sup/w")
        with n.events() as ev:
            os.kill(old, signal.SIGKILL)
            assert _restarted(n, "sup/w", old) == spare
            os.kill(spare, signal.SIGKILL)
            reasons = _child_exits(ev, ("sup",), {old, spare})
        assert reasons == {old: "killed by SIGKILL", spare: "killed by SIGKILL"}
        _restarted(n, "sup/w", spare)  # transient: killed is abnormal, so restarted
    finally:
        n.stop()
        wait_until(lambda: not n.pids(), 10, "the node's processes to exit")


def _kid_of(n, pid: int) -> int | None:
    for line in n.lines():
        if line.startswith(f"kid {pid} "):
            return int(line.split()[2])
    return None


def test_a_lent_childs_group_is_killed_before_its_restart(node_factory):
    """As a forked child's: whatever a lent child spawned in its process group is killed
    before its supervisor decides on its death (a replacement must not find its ports or
    locks held), not whenever the lender, woken by the same death, gets a CPU."""
    n = node_factory("tests.apps:small_supervisor_of_a_group_keeper")
    lender, spare = _lender_and_spare(n)
    old = n.conn.pid_of("sup/w")
    os.kill(old, signal.SIGKILL)
    lent = _restarted(n, "sup/w", old)
    assert lent == spare
    kid = wait_until(lambda: _kid_of(n, lent), 10, "the lent child's own child")
    os.kill(lender, signal.SIGSTOP)  # a lender that has not had the CPU yet
    try:
        os.kill(lent, signal.SIGKILL)
        _restarted(n, "sup/w", lent)
        wait_until(lambda: not alive(kid), 2, "the lent child's group killed")
    finally:
        os.kill(lender, signal.SIGCONT)


def test_a_lent_child_that_fails_its_init_is_not_a_spare_that_died(node_factory):
    """A lent child whose init fails dies before it tells the lender who took it: its start
    failure is its supervisor's (reported, retried), not a spare dying untaken (no
    spare_died trouble, no backoff of the next spare)."""
    n = node_factory("tests.apps:small_supervisor_failing_its_second_start")
    lender, spare = _lender_and_spare(n)
    old = n.conn.pid_of("sup/w")
    with n.events() as ev:
        os.kill(old, signal.SIGKILL)
        _restarted(n, "sup/w", old)  # the third start, forked by sup, awake now
        wait_until(lambda: not alive(spare), 5, "the lent child's failed start")
        kinds = []
        while (e := ev.next(1)) is not None:
            kinds.append((e.kind, e.path, e.key))
    assert ("start_error", ("sup",), "w") in kinds  # reported as its supervisor's
    again = _only(lender, SHARED_SPARE, "another shared spare")
    assert again != spare
    assert _troubles(n, "spare_died") == 0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_lender_out_of_descriptors_does_not_spin_and_serves_the_link_later(node_factory):
    """A link the lender cannot accept (EMFILE) stays queued, so its listening socket stays
    readable: the lender must not turn that into a busy loop of failed accepts (a CPU, and a
    log line and a trouble each turn); it tries again a moment later, and serves the link
    once it can."""
    n = node_factory("tests.apps:small_child_supervisor")
    lender, _ = _lender_and_spare(n)
    limit = resource.prlimit(lender, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{lender}/fd"))
    resource.prlimit(lender, resource.RLIMIT_NOFILE, (in_use, limit[1]))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(lender_address(n.conn.status().node))  # queued: it cannot accept it
            wait_until(lambda: _troubles(n, "lender_refused") >= 1, 5, "the refusal counted")
            cpu, start = _cpu_s(lender), time.monotonic()
            wait_until(lambda: time.monotonic() - start >= 1.0, 2, "a second")
            assert _cpu_s(lender) - cpu < 0.2, "the lender spins on a link it cannot accept"
            assert _troubles(n, "lender_refused") < 50
            resource.prlimit(lender, resource.RLIMIT_NOFILE, limit)
            s.settimeout(5)
            s.send(encode(ExitOf(os.getpid())))
            assert decode(s.recv(1 << 16)) == LentExit(os.getpid(), -1)  # served
    finally:
        resource.prlimit(lender, resource.RLIMIT_NOFILE, limit)


def test_a_lent_child_in_its_init_dies_with_its_supervisor(node_factory):
    """The lender learns who took its spare only after the child's init; a supervisor
    killed during a (slow) init must not leave the child running until it returns."""
    n = node_factory("tests.apps:small_supervisor_slow_on_its_second_start")
    lender, spare = _lender_and_spare(n)
    old = n.conn.pid_of("sup/w")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: sum(line == "started" for line in n.lines()) == 2, 10,
               "the lent child in its (slow) init")
    assert _parent(spare) == lender and alive(spare)
    os.kill(n.conn.pid_of("sup"), signal.SIGKILL)
    wait_until(lambda: not alive(spare), 3, "the lent child killed with its supervisor")


def _zombie_at(pid: int) -> int | None:
    """A child of this process that exits 0 at once and is left a zombie, given ``pid`` (set
    through ns_last_pid; None if another fork took it first, or the kernel refuses)."""
    for _ in range(20):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
        except OSError:
            return None
        child = os.fork()
        if child == 0:
            os._exit(0)
        if child == pid:
            return child
        os.waitpid(child, 0)
    return None


def test_a_lent_childs_pid_reused_by_another_zombie_is_not_read_as_its_status(node_factory):
    """A supervisor held up past the lender's grace finds its lent child reaped; if its pid
    is by then another process's zombie, /proc/PID/stat is that one's: it must not be taken
    for the child's status (here a normal exit, for a child that was killed)."""
    if os.getuid() != 0:
        pytest.skip("needs root, to choose the next pid")
    n = node_factory("tests.apps:small_child_supervisor")
    lender, spare = _lender_and_spare(n)
    old = n.conn.pid_of("sup/w")
    sup = n.conn.pid_of("sup")
    impostor = None
    with n.events() as ev:
        os.kill(old, signal.SIGKILL)
        assert _restarted(n, "sup/w", old) == spare
        os.kill(sup, signal.SIGSTOP)  # held up: it sees the death after the grace
        try:
            os.kill(spare, signal.SIGKILL)
            wait_until(lambda: not os.path.exists(f"/proc/{spare}"), 5,
                       "the lent child reaped after the grace")
            impostor = _zombie_at(spare)
            if impostor is None:
                pytest.skip("could not give the lent child's pid to another process")
            wait_until(lambda: not alive(impostor), 5, "the other process a zombie")
        finally:
            os.kill(sup, signal.SIGCONT)
        try:
            reasons = _child_exits(ev, ("sup",), {old, spare})
        finally:
            if impostor:
                os.waitpid(impostor, 0)
    assert reasons[spare] == "killed by SIGKILL"


def test_the_roots_hold_on_the_lender_works_past_descriptor_1024(tmp_path):
    """A root of a few hundred children holds more than 1,024 descriptors (the node raises
    the limit), so a lender forked again (after a death) has a pidfd past 1,023, where
    select.select raises ValueError: stopping it must still work (the root's last act)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("needs a descriptor limit above 1,200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    handle = LenderHandle(p.SupervisorSpec(children=[]), f"lend{uuid.uuid4().hex[:8]}")
    try:
        assert handle.start()
        assert handle.pidfd >= 1024
        pid = handle.pid
        handle.stop()
        assert not os.path.exists(f"/proc/{pid}")  # stopped and reaped
    finally:
        if handle.pid:
            os.kill(handle.pid, signal.SIGKILL)
            os.waitpid(handle.pid, 0)
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_lender_that_accepts_no_link_does_not_hold_up_a_restart(node_factory):
    """A supervisor connects to the lender as it lends (for the child's exit status later):
    with the lender's queue of links full (a lender stopped, hung, or out of descriptors)
    that connect must not block the supervisor, whose restart is under way."""
    n = node_factory("tests.apps:small_child_supervisor")
    lender, spare = _lender_and_spare(n)
    queued = []
    os.kill(lender, signal.SIGSTOP)
    try:
        while True:  # fill its queue of links not accepted yet
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.setblocking(False)
            queued.append(s)
            try:
                s.connect(lender_address(n.conn.status().node))
            except BlockingIOError:
                break
        old = n.conn.pid_of("sup/w")
        os.kill(old, signal.SIGKILL)
        assert _restarted(n, "sup/w", old) == spare
    finally:
        os.kill(lender, signal.SIGCONT)
        for s in queued:
            s.close()


def test_a_spare_taken_and_never_told_is_not_held_for_ever(node_factory):
    """A process that connects to the shared spare and never says what it should become (a
    stray client, a supervisor stopped mid-restart) must not keep the node without a shared
    spare for as long as it holds the connection: the spare gives up on it (a supervisor
    tells it within its on_exit), and the lender makes another."""
    n = node_factory("tests.apps:small_child_supervisor")
    lender, spare = _lender_and_spare(n)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as holder:
        holder.connect(spare_address(n.conn.status().node))
        wait_until(lambda: not alive(spare), 10, "the spare giving up on its silent taker")
        again = _only(lender, SHARED_SPARE, "another shared spare")
        old = n.conn.pid_of("sup/w")
        os.kill(old, signal.SIGKILL)
        assert _restarted(n, "sup/w", old) == again
