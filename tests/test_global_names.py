"""Global names on real nodes (:mod:`prismatic.mesh._global_names`): three nodes on loopback.

One name registered from all three nodes at once: exactly one process wins, the others are
refused ``already_registered``, and every node resolves the name to the winner (a call by
``Global(name)`` reaches it). The holder's death frees the name on every node; a SIGKILLed
node's names are freed on the survivors. A node without the mesh keeps global names too.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import prismatic as p
from prismatic.mesh._secret import init_secret
from tests.conftest import RunningNode, start_node, wait_until
from tests.test_mesh import members

APP = "tests.global_apps:tree"
RUN = uuid.uuid4().hex[:6]


class Nodes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.secret = init_secret(tmp / "cluster.secret")
        self.nodes: dict[str, RunningNode] = {}

    def start(self, short: str, *args: str) -> RunningNode:
        sub = self.tmp / short
        sub.mkdir()
        node = start_node(sub, APP, name=f"g{short}{RUN}", data_dir=sub / "data",
                          args=("--cluster-secret", str(self.secret), *args))
        self.nodes[short] = node
        return node

    def address(self, short: str) -> str:
        return members(self.nodes[short])[f"g{short}{RUN}"].address


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    c = Nodes(tmp_path_factory.mktemp("global"))
    c.start("a", "--listen", "127.0.0.1:0")
    seed = c.address("a")
    c.start("b", "--join", seed)
    c.start("c", "--join", seed)
    wait_until(lambda: all(len([m for m in members(n).values() if m.state.value == "alive"])
                           == 3 for n in c.nodes.values()), 10, "three nodes in one cluster")
    yield c
    for n in c.nodes.values():
        if n.proc.poll() is None:
            n.stop()
        wait_until(lambda n=n: not n.pids(), 10, "the node's processes to exit")


def whereis_everywhere(c: Nodes, name: str, shorts: str = "abc") -> set[p.Pid | None]:
    return {c.nodes[s].conn.whereis_global(name) for s in shorts}


def test_one_name_from_three_nodes_at_once_has_one_winner(nodes: Nodes) -> None:
    name = f"x-{uuid.uuid4().hex[:6]}"
    conns = [nodes.nodes[s].conn for s in "abc"]
    at = time.time() + 0.3  # all three claim within a millisecond or so of each other
    requests = [conn.send_request("g1", ["g_register", name, at], 10) for conn in conns]
    answers = [conn.receive_response(r, 10) for conn, r in zip(conns, requests, strict=True)]
    assert sorted(map(str, answers)) == ["['error', 'already_registered']"] * 2 + ["ok"], answers
    winner_conn = conns[answers.index("ok")]
    winner = winner_conn.whereis("g1")
    wait_until(lambda: whereis_everywhere(nodes, name) == {winner}, 5,
               "every node to resolve the name to the winner")
    # Addressed by its global name (resolved at each call), here on the winner's node.
    assert winner_conn.call(p.Global(name), ["echo", 7]) == 7
    assert winner_conn.call("g2", ["g_echo", name, 8]) == 8
    # From every other node too: a worker's call to Global(name) reaches the holder there.
    for conn in conns:
        assert conn.call("g2", ["g_echo", name, 9]) == 9
    # A second name for the same process is fine; unregistering frees it everywhere.
    assert winner_conn.call("g1", ["g_register", name + "-2"]) == "ok"
    wait_until(lambda: whereis_everywhere(nodes, name + "-2") == {winner}, 5, "the 2nd name")
    assert winner_conn.call("g1", ["g_unregister", name + "-2"]) == "ok"
    wait_until(lambda: whereis_everywhere(nodes, name + "-2") == {None}, 5, "it to go")
    # A process registers only itself: another's unregister is refused.
    loser_conn = conns[answers.index("ok") - 1]
    assert loser_conn.call("g1", ["g_unregister", name]) == ["error", "not_registered"]


def test_a_holders_death_frees_its_name_everywhere(nodes: Nodes) -> None:
    name = f"d-{uuid.uuid4().hex[:6]}"
    b = nodes.nodes["b"].conn
    assert b.call("g2", ["g_register", name]) == "ok"
    holder = b.whereis("g2")
    wait_until(lambda: whereis_everywhere(nodes, name) == {holder}, 5, "the name everywhere")
    with pytest.raises(p.ProcessDown):  # exits Normal; its supervisor starts another
        b.call("g2", ["stop"])
    wait_until(lambda: whereis_everywhere(nodes, name) == {None}, 5,
               "the dead holder's name to be freed on every node")
    assert nodes.nodes["a"].conn.call("g1", ["g_register", name]) == "ok"  # free again


def test_a_killed_nodes_names_are_freed_on_the_survivors(nodes: Nodes) -> None:
    name = f"k-{uuid.uuid4().hex[:6]}"
    d = nodes.start("d", "--join", nodes.address("a"))
    assert d.conn.call("g1", ["g_register", name]) == "ok"
    holder = d.conn.whereis("g1")
    wait_until(lambda: whereis_everywhere(nodes, name) == {holder}, 5, "the name everywhere")
    d.proc.kill()
    d.proc.wait()
    d.conn.close()
    wait_until(lambda: whereis_everywhere(nodes, name) == {None}, 5,
               "the killed node's name to be freed on a, b and c")
    wait_until(lambda: not d.pids(), 10, "the killed node's tree to die with it")
    assert nodes.nodes["c"].conn.call("g1", ["g_register", name]) == "ok"


def test_a_node_without_the_mesh_keeps_global_names(tmp_path: Path) -> None:
    node = start_node(tmp_path, APP)
    try:
        assert node.conn.call("g1", ["g_register", "solo"]) == "ok"
        assert node.conn.call("g2", ["g_register", "solo"]) == ["error", "already_registered"]
        assert node.conn.whereis_global("solo") == node.conn.whereis("g1")
        assert node.conn.call("g2", ["g_echo", "solo", 1]) == 1
    finally:
        node.stop()
