"""Nothing of a node's tree outlives the node (:mod:`prismatic._tree_cgroup`), with real
nodes SIGKILLed: a worker's ``setsid`` daemon (out of every process group of the tree, its
supervisors all dead at once) dies with the node; with the sweeper killed too, the next start
on the same data directory kills it. Needs a cgroup v2 the tests may create cgroups in."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import prismatic as p
from prismatic._process import process_name
from prismatic._tree_cgroup import tree_cgroups
from tests.conftest import RunningNode, alive, start_node, wait_until

APP = "tests.process_apps:spawners"
Made = list[int | RunningNode]


def _can_make_cgroups() -> bool:
    where = tree_cgroups(Path("."))
    if where is None:
        return False
    probe = where[0] / f"prismatic-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _can_make_cgroups(),
                                reason="no cgroup v2 this user may create cgroups in")


@pytest.fixture
def made() -> Iterator[Made]:
    """Nodes and processes a test made: stopped or killed at the end if still alive (the
    code under test failed)."""
    made: Made = []
    yield made
    for x in made:
        if isinstance(x, RunningNode):
            x.stop()
        elif alive(x):
            os.kill(x, signal.SIGKILL)


def _daemon(node: RunningNode) -> int:
    w = wait_until(lambda: node.conn.pid_of("s"), 10, "s to run")
    daemon = node.conn.call(p.Pid(node.conn.status().node, w), ["daemon"])
    assert alive(daemon) and os.getsid(daemon) != os.getsid(w)  # a session of its own
    return daemon


def _cgroups(data_dir: Path) -> list[Path]:
    where = tree_cgroups(data_dir)
    assert where is not None
    return list(where[0].glob(where[1] + "*"))


def test_a_workers_daemon_dies_with_a_sigkilled_node(tmp_path: Path, made: Made) -> None:
    made.append(node := start_node(tmp_path, APP))
    made.append(daemon := _daemon(node))
    [cgroup] = _cgroups(node.data_dir)
    assert daemon in [int(x) for x in (cgroup / "cgroup.procs").read_text().split()]
    client = p.connect(node.data_dir)  # a client's monitor fires NoConnection: node lost
    worker = p.Pid(client.node, node.conn.pid_of("s"))
    ref = client.monitor(worker)
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()
    with client:
        assert client.receive_notice(5) == p.Down(ref, worker, p.NoConnection())
    wait_until(lambda: not alive(daemon), 5, "the daemon to die with the node")
    wait_until(lambda: not node.pids(), 10, "every process of the node (the sweeper too) gone")
    assert not cgroup.exists()  # removed by the sweeper


def test_the_next_start_kills_what_a_dead_node_left(tmp_path: Path, made: Made) -> None:
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    data, name = tmp_path / "data", f"cg{uuid.uuid4().hex[:8]}"
    made.append(node := start_node(tmp_path / "1", APP, data_dir=data, name=name))
    made.append(daemon := _daemon(node))
    [sweeper] = [pid for pid in node.pids() if process_name(pid) == "prism-sweeper"]
    os.kill(sweeper, signal.SIGKILL)  # nobody left to kill the daemon when the node dies
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()
    wait_until(lambda: node.pids() == [daemon], 10, "all but the daemon to die")
    made.append(again := start_node(tmp_path / "2", APP, data_dir=data, name=name))
    assert not alive(daemon)  # killed before the new tree started
    assert len(_cgroups(data)) == 1  # the predecessor's removed, this start's made
    assert any("left behind" in line for line in
               (tmp_path / "2" / "node.out").read_text().splitlines())
    again.stop()
    wait_until(lambda: not again.pids(), 10, "the second node's processes to exit")


def test_a_daemon_in_a_cgroup_below_the_trees_dies_with_the_node(tmp_path: Path,
                                                                 made: Made) -> None:
    """A process of the tree may sit in a cgroup below the node's (a nested node puts its
    own tree there, as a container runtime does): the node's cgroup then lists none of it
    in its own ``cgroup.procs``, yet it is the node's. A clean stop leaves no worker in the
    node's cgroup itself, so only the nested one holds the daemon."""
    made.append(node := start_node(tmp_path, APP))
    w = wait_until(lambda: node.conn.pid_of("s"), 10, "s to run")
    daemon, inner = node.conn.call(p.Pid(node.conn.status().node, w), ["daemon_in_cgroup"])
    made.append(daemon)
    [cgroup] = _cgroups(node.data_dir)
    assert Path(inner).parent == cgroup
    try:
        node.stop()
        wait_until(lambda: not alive(daemon), 5, "the nested daemon to die with the node")
        wait_until(lambda: not cgroup.exists(), 5, "the sweeper to remove the node's cgroup")
    finally:  # what a failure left: not for the next test run to find
        if alive(daemon):
            os.kill(daemon, signal.SIGKILL)
        for left in (Path(inner), cgroup):
            wait_until(lambda left=left: _rmdir(left), 5, f"{left} removed")


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:  # busy: a killed process is still leaving
        return False
    return True


def test_a_start_removes_the_empty_cgroups_dead_nodes_left(tmp_path: Path, made: Made) -> None:
    """A node SIGKILLed with its sweeper leaves its cgroup (empty, once its tree has died)
    until a node starts on the same data directory; a temporary data directory never sees
    one, so any start removes such leftovers, whatever their data directory."""
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    made.append(node := start_node(tmp_path / "1", APP))
    [cgroup] = _cgroups(node.data_dir)
    [sweeper] = [pid for pid in node.pids() if process_name(pid) == "prism-sweeper"]
    os.kill(sweeper, signal.SIGKILL)
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait()
    try:
        wait_until(lambda: not (cgroup / "cgroup.procs").read_text().split(), 10,
                   "the dead node's tree to die")
        made.append(start_node(tmp_path / "2", APP))  # another data directory
        assert not cgroup.exists()
    finally:
        wait_until(lambda: _rmdir(cgroup), 5, f"{cgroup} removed")
