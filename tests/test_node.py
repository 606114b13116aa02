"""Integration tests: real nodes, real forked process trees, real signals."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import uuid

import pytest

import prismatic as p
from prismatic.eventlog import open_event_log
from prismatic._replay import open_log_reader
from tests.conftest import REPO, SESSION_TAG, alive, run_fresh, wait_until



def tagged_env() -> tuple[dict[str, str], str]:
    """The environment and a unique name for a node a test runs by hand: tagged under the
    session's tag, so the orphan sweep sees whatever it leaves, and never the default name,
    which another run on this machine may be using."""
    tag = f"{SESSION_TAG}-{uuid.uuid4().hex[:8]}"
    return dict(os.environ, PYTHONPATH=str(REPO), PRISMATIC_TEST_TAG=tag), f"t{tag[-8:]}"

def started(path: str, key: str):
    def match(ev) -> bool:
        return "/".join(ev.path) == path and ev.key == key and ev.kind == "child_started"
    return match


def test_sigkill_worker_is_restarted_in_place(node_factory):
    n = node_factory("tests.apps:one_for_one")
    before = {c.id: c.pid for c in n.conn.which_children()}
    with n.events() as ev:
        os.kill(before["w2"], signal.SIGKILL)
        new = ev.wait_for(started("", "w2"), 10)
    after = {c.id: c.pid for c in n.conn.which_children()}
    assert after["w2"] == new.pid != before["w2"]
    assert after["w1"] == before["w1"] and after["w3"] == before["w3"]
    assert not alive(before["w2"])


def test_one_for_all_restarts_every_child(node_factory):
    n = node_factory("tests.apps:one_for_all")
    before = {c.id: c.pid for c in n.conn.which_children()}
    with n.events() as ev:
        os.kill(before["w1"], signal.SIGKILL)
        ev.wait_for(started("", "w3"), 10)
    after = {c.id: c.pid for c in n.conn.which_children()}
    assert all(after[k] != before[k] for k in before)
    # the survivors were stopped in reverse start order, with shutdown
    assert [line for line in n.lines() if line.startswith("terminate")] == [
        "terminate w3 shutdown", "terminate w2 shutdown"]


def test_rest_for_one_restarts_the_rest(node_factory):
    n = node_factory("tests.apps:rest_for_one")
    before = {c.id: c.pid for c in n.conn.which_children()}
    with n.events() as ev:
        os.kill(before["w2"], signal.SIGKILL)
        ev.wait_for(started("", "w3"), 10)
    after = {c.id: c.pid for c in n.conn.which_children()}
    assert after["w1"] == before["w1"]
    assert after["w2"] != before["w2"] and after["w3"] != before["w3"]


def logged(n) -> list:
    """The node's lifecycle events so far, from its durable log: for what happens on its own
    right after start, before a live subscription could be made."""
    with open_log_reader(n.data_dir) as log:
        return list(log.query(pattern="supervisor.#"))


def test_crash_loop_escalates_two_levels(node_factory):
    n = node_factory("tests.apps:escalation")

    def gave_up() -> set[str] | None:
        events = logged(n)
        seen = {"/".join(e.payload["path"]) or "root" for e in events
                if e.payload["kind"] == "intensity_exceeded"}
        mid_gone = any(e.payload["kind"] == "child_exited" and e.payload["key"] == "mid"
                       and not e.payload["path"] for e in events)
        return seen if mid_gone else None

    seen = wait_until(gave_up, 20, "mid to give up and exit")
    assert "mid/leaf" in seen and "mid" in seen and "root" not in seen
    # mid is transient and exited with shutdown: not restarted; the node and bystander live
    assert n.proc.poll() is None
    rows = {c.id: c for c in n.conn.which_children()}
    assert rows["mid"].pid is None and rows["bystander"].pid is not None


def test_sigkill_mid_supervisor_rebuilds_subtree(node_factory):
    n = node_factory("tests.apps:nested")
    old = {r.path: r.pid for r in n.conn.tree()}
    with n.events() as ev:
        os.kill(old["mid"], signal.SIGKILL)
        # the root reports mid started only once mid's whole subtree is up again
        ev.wait_for(started("", "mid"), 10)
    # the killed supervisor's children died with it (PDEATHSIG), none survived
    for path in ("mid/leaf", "mid/leaf/a", "mid/leaf/b", "mid/m"):
        wait_until(lambda pid=old[path]: not alive(pid), 5, f"{path} to die")
    new = {r.path: r.pid for r in n.conn.tree()}
    for path in ("mid", "mid/leaf", "mid/leaf/a", "mid/leaf/b", "mid/m"):
        assert new[path] and new[path] != old[path]
    assert new["top"] == old["top"]


def test_ordered_shutdown_reverse_start_order(node_factory):
    n = node_factory("tests.apps:shutdown_order")
    assert n.stop() == 0
    order = [line.split()[1] for line in n.lines() if line.startswith("terminate")]
    assert order == ["last", "s2", "s1", "first"]
    wait_until(lambda: not n.pids(), 10, "all processes gone")


def test_sigkill_node_leaves_no_process(node_factory):
    n = node_factory("tests.apps:nested")
    pids = n.pids()
    assert len(pids) >= 7  # node, root, mid, leaf, a, b, m, top (+ spares)
    n.proc.send_signal(signal.SIGKILL)
    n.proc.wait()
    wait_until(lambda: not n.pids(), 10, "the whole tree to die with the node")


def test_init_failure_is_a_start_error_and_node_keeps_running(node_factory):
    n = node_factory("tests.apps:one_for_one")
    spec = p.ChildSpec(id="bad", start="tests.apps:FailInit")
    with pytest.raises(p.StartError) as err:
        n.conn.start_child("", spec)
    assert isinstance(err.value.exit_reason, p.Crashed)
    assert err.value.exit_reason.message == "init refuses"
    assert n.conn.status().ready and n.proc.poll() is None
    assert "bad" not in {c.id for c in n.conn.which_children()}


def test_supervisor_start_failure_fails_the_node(tmp_path):
    env, name = tagged_env()
    out = subprocess.run(
        [sys.executable, "-m", "prismatic.node", "--app", "tests.apps:failing_start",
         "--data-dir", str(tmp_path / "d"), "--quiet", "--name", name],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "failed to start" in out.stdout and "failed_to_start_child bad" in out.stdout


@pytest.mark.parametrize("app, message", [
    ("nosuchmodule:x", "cannot be imported"),
    ("tests.apps:not_a_spec", "not a prismatic.SupervisorSpec"),
    ("tests.apps", "must be 'module:attr'"),
])
def test_bad_app_is_one_line_and_exit_2(tmp_path, app, message):
    env, name = tagged_env()
    out = subprocess.run([sys.executable, "-m", "prismatic.node", "--app", app, "--data-dir",
                          str(tmp_path / "d"), "--name", name], cwd=REPO, capture_output=True,
                         text=True, env=env, timeout=30)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr
    assert "Traceback" not in out.stderr


def test_supervisor_api_contract(node_factory):
    n = node_factory("tests.apps:one_for_one")
    c = n.conn
    assert c.count_children() == {"specs": 3, "active": 3, "supervisors": 0, "workers": 3}
    assert [r.id for r in c.which_children()] == ["w3", "w2", "w1"]  # OTP: last started first
    with pytest.raises(p.SupervisorError) as e:
        c.restart_child("", "w1")
    assert e.value.reason == "running"
    with pytest.raises(p.SupervisorError) as e:
        c.delete_child("", "w1")
    assert e.value.reason == "running"
    c.terminate_child("", "w1")
    assert {r.id: r.pid for r in c.which_children()}["w1"] is None
    pid = c.restart_child("", "w1")
    assert pid and alive(pid)
    c.terminate_child("", "w1")
    c.delete_child("", "w1")
    assert "w1" not in {r.id for r in c.which_children()}
    with pytest.raises(p.SupervisorError) as e:
        c.terminate_child("", "w1")
    assert e.value.reason == "not_found"
    new = c.start_child("", p.ChildSpec(id="extra", start="tests.apps:Idle", args=("extra",)))
    assert alive(new)
    with pytest.raises(p.SupervisorError) as e:
        c.start_child("", p.ChildSpec(id="extra", start="tests.apps:Idle"))
    assert e.value.reason == "already_started"
    assert c.start_child("", p.ChildSpec(id="ign", start="tests.apps:IgnoreInit",
                                         restart="temporary")) is None
    with pytest.raises(p.SupervisorError) as e:
        c.which_children("nope")
    assert e.value.reason == "not_found"


def test_simple_one_for_one_dynamic_children(node_factory):
    n = node_factory("tests.apps:dynamic")
    c = n.conn
    pids = [c.start_child("", (f"job{i}",)) for i in range(5)]
    assert all(alive(pid) for pid in pids)
    assert c.count_children() == {"specs": 1, "active": 5, "supervisors": 0, "workers": 5}
    assert all(r.id is None for r in c.which_children())
    with n.events() as ev:
        os.kill(pids[0], signal.SIGKILL)  # transient + abnormal: restarted
        ev.wait_for(lambda e: e.kind == "child_started", 10)
    c.terminate_child("", pids[1])
    assert c.count_children()["active"] == 4
    with pytest.raises(p.SupervisorError) as e:
        c.terminate_child("", "job")
    assert e.value.reason == "simple_one_for_one"
    with pytest.raises(p.SupervisorError) as e:
        c.restart_child("", "job")
    assert e.value.reason == "simple_one_for_one"


def test_significant_child_auto_shutdown(node_factory):
    n = node_factory("tests.apps:significant")
    wait_until(lambda: any(e.payload["kind"] == "child_exited" and e.payload["key"] == "inner"
                           for e in logged(n)), 10, "inner to shut down")
    rows = {r.id: r for r in n.conn.which_children()}
    assert rows["inner"].pid is None and rows["other"].pid is not None


def test_shutdown_timeout_kills_and_async_worker_runs(node_factory):
    n = node_factory("tests.apps:stubborn")
    wait_until(lambda: "async done" in n.lines(), 10, "the async worker's message")
    stubborn = n.conn.pid_of("stubborn")
    with n.events() as ev:
        n.conn.terminate_child("", "stubborn")
        stopped = ev.wait_for(lambda e: e.key == "stubborn" and e.kind == "child_stopped", 10)
    assert stopped.reason == p.Killed(9)
    assert not alive(stubborn)


def test_lifecycle_events_land_in_the_event_log(node_factory):
    n = node_factory("tests.apps:one_for_one")
    victim = n.conn.pid_of("w1")
    with n.events() as ev:
        os.kill(victim, signal.SIGKILL)
        new = ev.wait_for(started("", "w1"), 10)
    with open_event_log(n.data_dir / "eventlog", node="reader", readonly=True) as log:
        def restarted():
            recs = list(log.query(pattern="supervisor.root.w1.#"))
            return recs if any(r.payload["pid"] == new.pid for r in recs) else None

        recs = wait_until(restarted, 10, "the restart to be committed to the event log")
    kinds = [r.topic.rsplit(".", 1)[1] for r in recs]
    assert kinds == ["child_started", "child_exited", "child_started"]
    assert recs[1].payload["reason"] == {"kind": "killed", "signal": 9}
    assert [r.seq for r in recs] == sorted(r.seq for r in recs)


def test_an_event_log_of_another_node_is_one_clear_line(tmp_path):
    """The node refuses a data directory whose log belongs to another node: exit 2, one
    line, the log untouched, no tree left running."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)  # private, as the node makes it (a looser one is tightened, logged)
    with open_event_log(str(data / "eventlog"), node="someone-else") as log:
        log.append("x.y", 1, source="test")
    before = (data / "eventlog" / "data.mdb").read_bytes()
    env, name = tagged_env()
    proc = subprocess.run([sys.executable, "-m", "prismatic.node", "--app",
                           "tests.apps:one_for_one", "--data-dir", str(data),
                           "--name", name],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "someone-else" in errors[0], proc.stderr
    assert (data / "eventlog" / "data.mdb").read_bytes() == before


def test_the_hub_learns_a_subtree_died_with_its_supervisor(node_factory):
    """No supervisor is left to report the children of a SIGKILLed supervisor; the node
    derives their exits (killed, by PDEATHSIG) from its tree, for monitors and links."""
    import msgspec

    from prismatic._hubclient import HubClient
    from prismatic.transports._messages import ExitOfReq

    n = node_factory("tests.apps:nested")
    old = {r.path: r.pid for r in n.conn.tree()}
    node = n.conn.status().node
    with n.events() as ev:
        os.kill(old["mid"], signal.SIGKILL)
        ev.wait_for(started("", "mid"), 10)
    hub = HubClient(node)
    try:
        for path in ("mid/leaf/a", "mid/m"):
            reply = hub.request(lambda ref, path=path: ExitOfReq(ref, p.Pid(node, old[path]), 0))
            assert msgspec.convert(reply.value, p.ExitReason) == p.Killed(signal.SIGKILL)
    finally:
        hub.close()


def test_the_node_raises_its_own_descriptor_limit_and_only_its_own(node_factory):
    """The node talks to and watches every process (one descriptor each; libzmq aborts when
    it cannot get one), so it lifts its soft RLIMIT_NOFILE to the hard limit; the tree,
    forked before, keeps the limit it was started with."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, hard, 512)
    if low == hard:
        pytest.skip("the hard descriptor limit leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        n = node_factory("tests.apps:flat")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert resource.prlimit(n.proc.pid, resource.RLIMIT_NOFILE) == (hard, hard)
    assert resource.prlimit(n.conn.status().root_pid, resource.RLIMIT_NOFILE) == (low, hard)


def test_the_trees_image_stays_light():
    """Every module imported before the node forks its tree is in every process of it (the
    README's "Light processes"): none of ZeroMQ, LMDB, uvloop, asyncio, Prometheus, OpenSSL
    (hashlib, hmac, secrets), TOML, JSON or subprocess may be among them. Checked in a fresh
    interpreter that imports what the node imports before its fork (``python -m
    prismatic.node`` too: its command-line module), and the demo tree."""
    heavy = ["zmq", "lmdb", "uvloop", "asyncio", "prometheus_client", "_hashlib", "hmac",
             "_ssl", "tomllib", "json", "subprocess"]
    code = ("import sys, prismatic._node, prismatic.node, prismatic._demo\n"
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    loaded = run_fresh(code)
    assert loaded == [], f"loaded before the fork: {loaded}"


def test_the_node_imports_its_loop_with_the_collector_paused_then_on_again():
    """After its fork the node imports its loop's modules with the garbage collector paused
    and freezes what they made (they live as long as the node): the collector must be on
    again afterwards (or the node's garbage cycles would never be freed), and stay off in a
    process that had turned it off. In a fresh interpreter, where nothing imported the loop."""
    code = ("import gc, sys, prismatic._node as n\n"
            "assert 'prismatic._node_loop' not in sys.modules\n"
            "n._import_loop()\n"
            "print(gc.isenabled(), len(gc.get_objects()) < 1000, gc.get_freeze_count() > 0)\n"
            "gc.disable()\n"
            "n._import_loop()\n"
            "print(gc.isenabled())")
    assert run_fresh(code) == ["True", "True", "True", "False"]
