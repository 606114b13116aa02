"""``prismatic chaos``: a short fixed-seed run of every single-node scenario through the
CLI, on real nodes the runner starts and reaps; a broken invariant is reported with exit
code 1 (a tree that leaks a process outside itself); ``--node`` breaks a running node."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import prismatic as p
from prismatic.chaos._cgroup import cgroup_unavailable
from prismatic.chaos._netns import netns_unavailable
from prismatic.chaos._tmpfs import tmpfs_unavailable
from tests.conftest import REPO, SESSION_TAG, wait_until

SCENARIOS = ("kill-storm", "crash-loop", "hang", "flood", "subscriber-flood", "resources",
             "durability", "disk-full")
CLUSTER_SCENARIOS = ("node-loss", "node-stop", "partition")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, PRISMATIC_TEST_TAG=f"{SESSION_TAG}-{uuid.uuid4().hex[:8]}",
               PYTHONPATH=str(REPO), PRISMATIC_HOME=str(tmp_path / "home"))
    env.pop("PRISMATIC_NODE", None)
    return env


def chaos(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prismatic.cli", "chaos", *args], cwd=REPO,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


CLUSTER_RUNS = {
    # node-loss: one SIGKILLed and restarted; node-stop (seed 11: a long stop)
    "loopback": ("--cluster", "3", "--scenario", "node-loss", "--scenario", "node-stop",
                 "--duration", "1", "--seed", "11", "--json"),
    "netns": ("--cluster", "3", "--scenario", "partition", "--duration", "1", "--seed", "16",
              "--json"),
}


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The cluster runs side by side (each mostly waits: for detection, merges, restarts);
    the partition only where network namespaces can be made."""
    procs = {}
    for key, args in CLUSTER_RUNS.items():
        if key == "netns" and netns_unavailable() is not None:
            continue
        tmp = tmp_path_factory.mktemp(f"chaos-{key}")
        procs[key] = subprocess.Popen([sys.executable, "-m", "prismatic.cli", "chaos", "run",
                                       *args], cwd=REPO, env=_env(tmp), text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = {}
    for key, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, stdout[-3000:] + stderr[-2000:]
        out[key] = {s["scenario"]: s for s in json.loads(stdout)["scenarios"]}
    return out


@pytest.fixture(scope="module")
def every_scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of every scenario on the demo tree, 1 s of faults each. Seed 293 plans a
    crash loop of every depth (no escalation, inner, outer), both ways of hanging, and every
    resource exhausted (tests/test_chaos_schedule.py pins that)."""
    tmp = tmp_path_factory.mktemp("chaos")
    out = chaos(tmp, "run", "--duration", "1", "--seed", "293", "--rate", "8", "--json",
                "--report", str(tmp / "report.json"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert json.loads((tmp / "report.json").read_text()) == report
    return {s["scenario"]: s for s in report["scenarios"]} | {"_report": report}


def test_list_names_every_scenario(tmp_path: Path) -> None:
    out = chaos(tmp_path, "list")
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names == [*SCENARIOS, *CLUSTER_SCENARIOS]
    assert all(len(line.split(None, 1)[1]) > 40 for line in out.stdout.splitlines())


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_scenario_runs_and_holds(every_scenario: dict[str, Any], name: str) -> None:
    if name == "disk-full" and tmpfs_unavailable() is not None:
        assert every_scenario["_report"]["skipped"] == {name: tmpfs_unavailable()}
        pytest.skip(f"disk-full: {tmpfs_unavailable()}")
    s = every_scenario[name]
    assert s["ok"] and not s["violations"], s
    assert s["faults_injected"] >= 1, s
    assert sum(s["checks_passed"].values()) > s["faults_injected"], s
    assert not s["checks_failed"], s
    assert s["orphans_found"] == 0
    assert s["control_requests"] > 0 and s["max_control_latency_ms"] > 0
    assert every_scenario["_report"]["seed"] == 293 and every_scenario["_report"]["ok"]


def test_scenario_specific_figures(every_scenario: dict[str, Any]) -> None:
    storm = every_scenario["kill-storm"]
    assert storm["checks_passed"]["kills_accounted"] == 1
    assert storm["checks_passed"]["restarts_consistent"] == 1
    assert storm["convergence_ms"]["n"] == storm["faults_injected"]
    assert every_scenario["crash-loop"]["checks_passed"]["escalation_level"] == 4
    assert every_scenario["hang"]["checks_passed"]["shutdown_escalated"] == 2
    assert storm["checks_passed"]["monitors_fired_once"] == 1
    assert every_scenario["flood"]["checks_passed"]["flood_accounted"] >= 1
    subs = every_scenario["subscriber-flood"]["checks_passed"]
    assert subs["subscriber_flood_accounted"] >= 1 and subs["node_memory_bounded"] >= 2
    assert subs["subscriber_drops_counted_exactly"] >= 1  # a stalled subscriber lost events
    res = every_scenario["resources"]["checks_passed"]
    assert {"memory_limit_crash", "fd_exhaustion_answers", "children_die_with_it"} <= set(res)
    assert "memory_cap_enforced" in res or cgroup_unavailable() is not None
    dur = every_scenario["durability"]
    assert dur["acked_events_written"] > 0
    assert dur["acked_events_verified"] == dur["acked_events_written"]
    if tmpfs_unavailable() is None:
        full = every_scenario["disk-full"]
        assert full["checks_passed"]["disk_full_reported"] == full["faults_injected"] >= 1
        assert full["acked_events_written"] == full["acked_events_verified"] > 0


def test_a_process_left_outside_the_tree_fails_the_run(tmp_path: Path) -> None:
    """The leaky app's daemon outlives its node: the run says so, with the seed, and exits
    1; the runner still reaps it."""
    out = chaos(tmp_path, "run", "--app", "tests.chaos_apps:leaky_tree", "--scenario",
                "durability", "--duration", "0.5", "--rate", "0.1", "--seed", "11")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "VIOLATION" in out.stdout
    assert "no_orphans" in out.stdout or "nothing_left" in out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("prismatic: error: ") and "--seed 11" in last, out.stderr


def test_a_node_that_dies_under_the_run_is_a_violation_not_a_crash(tmp_path: Path) -> None:
    """The root gives up (the app's own crash loop) mid-scenario: the run still reports,
    says the node exited, and exits 1."""
    out = chaos(tmp_path, "run", "--app", "tests.chaos_apps:doomed_tree", "--scenario",
                "kill-storm", "--duration", "4", "--seed", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "kill-storm: FAILED" in out.stdout
    assert "VIOLATION node_alive: the node exited (1)" in out.stdout, out.stdout


def test_node_option_breaks_a_running_node(tmp_path: Path, node_factory: Any) -> None:
    node = node_factory("tests.chaos_apps:wide_tree")
    before = {r.path: r.pid for r in node.conn.tree()}
    out = chaos(tmp_path, "run", "--node", str(node.data_dir), "--scenario", "kill-storm",
                "--duration", "1", "--rate", "10", "--seed", "5", "--json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    (storm,) = json.loads(out.stdout)["scenarios"]
    assert storm["faults_injected"] >= 1 and storm["ok"]  # OTP's default budget: see shape_of_rows
    after = {r.path: r.pid for r in node.conn.tree()}
    assert after.keys() == before.keys()
    assert after != before  # it did break something, and the node is still there
    wait_until(lambda: node.proc.poll() is None, 1, "the node to keep running")


def test_bad_usage_is_one_line_and_exit_2(tmp_path: Path) -> None:
    out = chaos(tmp_path, "run", "--scenario", "no-such")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("prismatic: error: no scenario 'no-such'")
    out = chaos(tmp_path, "run", "--app", "x:y", "--node", "z")
    assert out.returncode == 2


def test_scenarios_for_a_target_offer_what_they_require() -> None:
    from prismatic._errors import ChaosError
    from prismatic.chaos import RunSettings
    from prismatic.chaos._runner import scenarios_for

    single = [s.NAME for s in scenarios_for(RunSettings())]
    assert single == [n for n in SCENARIOS
                      if n != "disk-full" or tmpfs_unavailable() is None]
    on_node = [s.NAME for s in scenarios_for(RunSettings(node="n"))]
    assert "durability" not in on_node and "kill-storm" in on_node
    with pytest.raises(ChaosError, match="durability needs a target that is owned"):
        scenarios_for(RunSettings(node="n", scenarios=("durability",)))
    assert [s.NAME for s in scenarios_for(RunSettings(scenarios=("hang", "kill-storm")))] \
        == ["kill-storm", "hang"]
    on_cluster = [s.NAME for s in scenarios_for(RunSettings(cluster=3))]
    assert on_cluster == list(CLUSTER_SCENARIOS if netns_unavailable() is None
                              else CLUSTER_SCENARIOS[:2])
    with pytest.raises(ChaosError, match="node-loss needs a target that is cluster"):
        scenarios_for(RunSettings(scenarios=("node-loss",)))


def test_a_partition_without_network_namespaces_is_skipped_with_the_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where namespaces cannot be made (not root), a cluster run leaves the partition out
    and says why; naming it is a usage error that says why too."""
    from prismatic._errors import ChaosError
    from prismatic.chaos import RunSettings, _netns
    from prismatic.chaos._runner import scenarios_for, scenarios_skipped
    from prismatic.chaos._target import ClusterTarget

    monkeypatch.setattr(ClusterTarget, "offers", classmethod(lambda cls: cls.BASE_OFFERS))
    monkeypatch.setattr(_netns, "netns_unavailable", lambda: "network namespaces need root")
    settings = RunSettings(cluster=3)
    assert [s.NAME for s in scenarios_for(settings)] == ["node-loss", "node-stop"]
    assert scenarios_skipped(settings) == {"partition": "network namespaces need root"}
    with pytest.raises(ChaosError, match=r"partition needs .* netns \(netns: network "
                                         r"namespaces need root\)"):
        scenarios_for(RunSettings(cluster=3, scenarios=("partition",)))


def test_node_loss_and_a_stopped_node_on_a_loopback_cluster(
        cluster_runs: dict[str, Any]) -> None:
    """Three meshed nodes on loopback. node-loss: one SIGKILLed and restarted: every
    survivor saw it dead, then all saw all alive again, the restarted one as a newer
    incarnation. node-stop (seed 11: a long stop): SIGSTOPped until declared dead, then
    resumed. Both: monitors across the nodes fired once, the global name has one holder and
    the loser was told (node-stop), no orphan."""
    loss, stop = cluster_runs["loopback"]["node-loss"], cluster_runs["loopback"]["node-stop"]
    assert loss["scenario"] == "node-loss" and loss["ok"] and loss["faults_injected"] == 1
    assert loss["checks_passed"]["membership_converged"] == 4  # before, down, back, check
    assert loss["checks_passed"]["nothing_left"] == 2  # the victim's tree, then everyone's
    for s in (loss, stop):
        assert s["ok"] and not s["checks_failed"], s
        assert s["checks_passed"]["monitors_fired_once"] == 1
        assert s["checks_passed"]["global_name_resolved"] == 1
        assert s["checks_passed"]["no_orphans"] >= 1
    assert "2 of 6 monitors fired (noconnection" in loss["notes"][0]  # the victim's mark
    assert stop["faults_injected"] == 1 and stop["checks_passed"]["declared_dead"] == 1
    assert "1 told they lost" in stop["notes"][0], stop["notes"]


@pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))
def test_a_partition_in_network_namespaces(cluster_runs: dict[str, Any]) -> None:
    """Three nodes, each in a network namespace; one cut off (its veth down) until both
    sides declared each other dead, the name registered on both sides, then healed: merged,
    the monitors across the cut fired once with noconnection, the older registration kept
    everywhere and the victim's claimant told once."""
    part = cluster_runs["netns"]["partition"]
    assert part["ok"] and part["faults_injected"] == 1 and not part["checks_failed"], part
    for check in ("declared_dead", "monitors_fired_once", "global_name_resolved"):
        assert part["checks_passed"][check] == 1
    # at least the 2 watchers' monitors of the victim's mark and the victim's 2 of theirs
    # (more if a node of the connected side also saw the other go down for a moment: then
    # its monitor fires too, and monitors_fired_once holds it to that)
    assert re.search(r"[456] of 6 monitors fired \(noconnection\)", part["notes"][0]), \
        part["notes"]
    assert "2 registered, 0 refused, 1 told they lost" in part["notes"][0], part["notes"]
    assert not netns_leftovers()


def netns_leftovers() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith("cx")]


def test_ctrl_c_stops_injecting_then_checks_and_reports(tmp_path: Path) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C: the node under test (in a
    group of its own) keeps running until the runner stops it; the report comes out."""
    env = dict(os.environ, PRISMATIC_TEST_TAG=f"{SESSION_TAG}-{uuid.uuid4().hex[:8]}",
               PYTHONPATH=str(REPO), PRISMATIC_HOME=str(tmp_path / "home"))
    env.pop("PRISMATIC_NODE", None)
    proc = subprocess.Popen([sys.executable, "-m", "prismatic.cli", "chaos", "run",
                             "--scenario", "kill-storm", "--scenario", "hang", "--duration",
                             "60", "--seed", "2"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            process_group=0)
    try:
        assert "seed 2" in proc.stderr.readline()  # type: ignore[union-attr]
        data_dir = wait_until(lambda: _node_data_dir(proc.pid), 20, "the runner's node")
        # Ctrl-C before the first scenario starts would run none: wait for its first kill
        # to be restarted (the node itself may still be starting when it appears).
        wait_until(lambda: _restarts(data_dir) > 0, 30, "kill-storm's first restart")
        os.killpg(proc.pid, signal.SIGINT)
        out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + rest
    assert "kill-storm: ok (stopped early)" in out
    assert "hang:" not in out  # no scenario starts after Ctrl-C
    assert "stopping: no more faults" in rest


def _node_data_dir(runner: int) -> str | None:
    """The data dir of the node the chaos runner ``runner`` started, once it runs."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _child_of(int(entry), runner):
            try:
                with open(f"/proc/{entry}/cmdline") as f:
                    argv = f.read().split("\0")
            except OSError:
                continue
            if "--data-dir" in argv and "chaos-" in " ".join(argv):
                return argv[argv.index("--data-dir") + 1]
    return None


def _restarts(data_dir: str) -> int:
    try:
        with p.connect(data_dir) as conn:
            return conn.status().restarts
    except p.PrismaticError:
        return 0  # not answering yet


def _child_of(pid: int, parent: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1]) == parent
    except (OSError, ValueError, IndexError):
        return False
