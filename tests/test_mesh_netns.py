"""The node mesh across network namespaces: real links that can be cut (you are root).

Three nodes, each in a network namespace of its own, their veth links on one bridge (in a
fourth namespace, so the host's own network is never touched). A partition is a link taken
down on the bridge's side: nothing resets, packets just vanish, as with a pulled cable or a
dead host. Checked: the cut-off node is declared dead by the others (and declares them dead)
through the probes alone, the sides merge again when the link returns, and a node claiming
a live member's name from another host is refused and stops with a clear error. Skipped,
with the reason, where namespaces cannot be made (not root, no ``ip``).
"""

from __future__ import annotations

import os
import shutil
import sys
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from prismatic._control import ClusterMembersCall
from prismatic.mesh._loop import MemberRow
from prismatic.mesh._secret import init_secret
from tests.conftest import RunningNode, start_node, wait_until

APP = "tests.apps:one_for_one"
RUN = uuid.uuid4().hex[:5]
SUBNET = f"10.{200 + int(RUN[:2], 16) % 50}.{int(RUN[2:4], 16)}"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"pmprobe{RUN}"
    try:
        sh("ip", "netns", "add", probe)
        sh("ip", "netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace here: {exc}"
    return None


pytestmark = pytest.mark.skipif(netns_unavailable() is not None,
                                reason=str(netns_unavailable()))


class Net:
    """Namespaces ``<prefix><RUN>h<i>`` with ``<subnet>.<i>``, veths on a bridge in
    ``<prefix><RUN>br`` (a module of its own passes its own prefix and subnet)."""

    def __init__(self, hosts: int, prefix: str = "pm", subnet: str = SUBNET) -> None:
        self.br = f"{prefix}{RUN}br"
        self.hosts = [f"{prefix}{RUN}h{i}" for i in range(1, hosts + 1)]
        sh("ip", "netns", "add", self.br)
        sh("ip", "-n", self.br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.br, "link", "set", "br0", "up")
        for i, ns in enumerate(self.hosts, 1):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"v{i}",
               "netns", self.br)
            sh("ip", "-n", ns, "addr", "add", f"{subnet}.{i}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", self.br, "link", "set", f"v{i}", "master", "br0")
            sh("ip", "-n", self.br, "link", "set", f"v{i}", "up")

    def link(self, i: int, up: bool) -> None:
        sh("ip", "-n", self.br, "link", "set", f"v{i}", "up" if up else "down")

    def close(self) -> None:
        for ns in (*self.hosts, self.br):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def states(node: RunningNode) -> dict[str, str]:
    rows = msgspec.convert(node.conn._call(lambda ref, cookie: ClusterMembersCall(ref, cookie)),
                           list[MemberRow])
    return {r.name: r.state.value for r in rows}


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    n = Net(4)
    yield n
    n.close()


def name(i: int) -> str:
    return f"h{i}{RUN}"


def start(net: Net, tmp: Path, secret: Path, i: int, *args: str,
          node_name: str | None = None) -> RunningNode:
    sub = tmp / f"h{i}"
    sub.mkdir(exist_ok=True)
    return start_node(sub, APP, name=node_name or name(i), data_dir=sub / "data",
                      prefix=("ip", "netns", "exec", net.hosts[i - 1]),
                      args=("--cluster-secret", str(secret), "--listen",
                            f"{SUBNET}.{i}:4370", *args))


def test_partition_is_detected_by_probes_and_heals(net: Net, tmp_path: Path) -> None:
    secret = init_secret(tmp_path / "cluster.secret")
    seed = f"{SUBNET}.1:4370"
    nodes = [start(net, tmp_path, secret, 1)]
    nodes += [start(net, tmp_path, secret, i, "--join", seed) for i in (2, 3)]
    try:
        everyone = {name(i): "alive" for i in (1, 2, 3)}
        wait_until(lambda: all(states(n) == everyone for n in nodes), 10, "formation")
        net.link(3, up=False)
        t0 = time.monotonic()
        wait_until(lambda: states(nodes[0])[name(3)] == "dead"
                   and states(nodes[1])[name(3)] == "dead", 5, "h3 declared dead")
        took = time.monotonic() - t0
        wait_until(lambda: states(nodes[2])[name(1)] == "dead"
                   and states(nodes[2])[name(2)] == "dead", 5, "h3 to declare the others dead")
        assert states(nodes[0])[name(2)] == "alive"  # the majority side stays whole
        assert took < 3.0, f"a silently lost node took {took:.2f}s to be declared dead"
        net.link(3, up=True)
        t1 = time.monotonic()
        wait_until(lambda: all(states(n) == everyone for n in nodes), 15,
                   "the two sides to merge after the link returned")
        print(f"silent loss declared dead in {took:.2f}s; merged {time.monotonic() - t1:.2f}s "
              f"after the link returned")
    finally:
        net.link(3, up=True)
        for n in nodes:
            n.stop()


def test_a_live_name_claimed_from_another_host_is_refused(net: Net, tmp_path: Path) -> None:
    secret = init_secret(tmp_path / "cluster.secret")
    first = start(net, tmp_path, secret, 1)
    try:
        # host 4 runs a node under host 1's name: its own namespace, so only the mesh can
        # tell (the local name check is per host)
        sub = tmp_path / "impostor"
        sub.mkdir()
        proc = subprocess.run(
            ["ip", "netns", "exec", net.hosts[3], "env", f"PYTHONPATH={Path.cwd()}",
             sys.executable, "-m", "prismatic.node", "--app", APP, "--name", name(1),
             "--data-dir", str(sub / "data"), "--quiet", "--cluster-secret", str(secret),
             "--listen", f"{SUBNET}.4:4370", "--join", f"{SUBNET}.1:4370"],
            capture_output=True, text=True, timeout=30,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"node name {name(1)!r} is taken by a live node at {SUBNET}.1:4370" \
            in proc.stdout + proc.stderr
        assert states(first) == {name(1): "alive"}
    finally:
        first.stop()
