"""Global names across a real partition (network namespaces; you are root).

Three nodes, each in a namespace of its own on one bridge (as tests/test_mesh_netns.py). The
link of h3 is taken down: each side declares the other dead, and the same global name is
registered on both sides (each side is a working cluster: both succeed). The link returns,
the sides merge: every node resolves the name to the older registration (h1's), and h3's
process is told it lost the name (a ``GlobalNameConflict`` naming the winner), exactly once.

A process's mailbox is an abstract socket, scoped to its network namespace: the test talks to
the nodes from inside their namespaces (``ip netns exec ... python``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prismatic.mesh._secret import init_secret
from tests.conftest import REPO, RunningNode, start_node, wait_until
from tests.test_mesh import metric
from tests.test_mesh_netns import Net, netns_unavailable, states

APP = "tests.global_apps:tree"
RUN = uuid.uuid4().hex[:5]
SUBNET = f"10.{200 + int(RUN[:2], 16) % 50}.{int(RUN[2:4], 16)}"

pytestmark = pytest.mark.skipif(netns_unavailable() is not None,
                                reason=str(netns_unavailable()))

_CLIENT = """
import json, sys
import prismatic as p
c = p.connect(sys.argv[1])
out = []
for op, *args in json.loads(sys.argv[2]):
    if op == "call":
        out.append(c.call(args[0], args[1]))
    else:
        pid = c.whereis_global(args[0]) if op == "whereis_global" else c.whereis(args[0])
        out.append(None if pid is None else [pid.node, pid.ospid])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    n = Net(3, prefix="pg", subnet=SUBNET)
    yield n
    n.close()


def name(i: int) -> str:
    return f"gh{i}{RUN}"


def ask(net: Net, i: int, node: RunningNode, *ops: list[Any]) -> list[Any]:
    """Run ``ops`` against node ``i`` from inside its namespace."""
    proc = subprocess.run(["ip", "netns", "exec", net.hosts[i - 1], sys.executable, "-c",
                           _CLIENT, str(node.data_dir), json.dumps(ops)],
                          capture_output=True, text=True, timeout=30, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def test_a_name_held_on_both_sides_of_a_partition_keeps_the_older(net: Net,
                                                                   tmp_path: Path) -> None:
    secret = init_secret(tmp_path / "cluster.secret")
    nodes: list[RunningNode] = []
    for i in (1, 2, 3):
        sub = tmp_path / f"h{i}"
        sub.mkdir()
        join = ("--join", f"{SUBNET}.1:4370") if i > 1 else ()
        nodes.append(start_node(sub, APP, name=name(i), data_dir=sub / "data",
                                prefix=("ip", "netns", "exec", net.hosts[i - 1]),
                                args=("--cluster-secret", str(secret), "--listen",
                                      f"{SUBNET}.{i}:4370", *join)))
    h1, h2, h3 = nodes
    gname = f"p-{RUN}"
    try:
        everyone = {name(i): "alive" for i in (1, 2, 3)}
        wait_until(lambda: all(states(n) == everyone for n in nodes), 10, "formation")
        net.link(3, up=False)
        wait_until(lambda: states(h1)[name(3)] == "dead" and states(h2)[name(3)] == "dead"
                   and states(h3)[name(1)] == "dead" and states(h3)[name(2)] == "dead", 8,
                   "each side to declare the other dead")
        # Both sides register the name: h1's first (the older registration).
        older = ask(net, 1, h1, ["call", "g1", ["g_register", gname]], ["whereis", "g1"])
        time.sleep(0.01)  # stamps are wall-clock ns: this one is surely the later
        newer = ask(net, 3, h3, ["call", "g1", ["g_register", gname]], ["whereis", "g1"])
        assert older[0] == "ok" and newer[0] == "ok", (older, newer)
        winner, loser = older[1], newer[1]
        net.link(3, up=True)
        wait_until(lambda: all(states(n) == everyone for n in nodes), 15, "the merge")

        def resolved() -> bool:
            return all(ask(net, i, n, ["whereis_global", gname]) == [winner]
                       for i, n in ((1, h1), (2, h2), (3, h3)))
        wait_until(resolved, 10, "every node to resolve the name to the older registration")
        got = ask(net, 3, h3, ["call", "g1", ["g_conflicts"]], ["whereis", "g1"])
        assert got == [[[gname, winner]], loser], got  # told once, the same process
        assert ask(net, 1, h1, ["call", "g1", ["g_conflicts"]]) == [[]]
        # The loser's node always meets both registrations (the winner's side restates its
        # names to it); the others only if its sync reaches them before its g_remove does.
        assert metric(h3, "prismatic_global_conflicts") >= 1
    finally:
        net.link(3, up=True)
        for n in nodes:
            n.stop()
