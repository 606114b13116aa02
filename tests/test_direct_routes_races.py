"""Direct routes under races and pressure, between real nodes: what happens to a pair's
switch (its hello, its fence, its route) when the callee's node holds all it may for the
callee's mailbox, when the callee exits mid-switch, and what a process other than the node
can make a callee hold (``prismatic._direct_listener``, ``prismatic.mesh._direct``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import prismatic as p
from prismatic._pair_switch import SWITCH_AFTER, PairState
from tests.conftest import wait_until
from tests.test_mesh import members, metric, states
from tests.test_remote import Nodes

BACKLOG_LIMIT = 1 << 20  # what b holds for one of its mailboxes: reached with a few casts


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    c = Nodes(tmp_path_factory.mktemp("races"))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PRISMATIC_REMOTE_BACKLOG_BYTES", str(BACKLOG_LIMIT))
        c.start("a", "--listen", "127.0.0.1:0")
        c.start("b", "--join", members(c.nodes["a"])[c.name("a")].address)
    names = {c.name(s) for s in "ab"}
    wait_until(lambda: all(set(k for k, v in states(n).items() if v == "alive") == names
                           for n in c.nodes.values()), 10, "the two nodes to form a cluster")
    yield c
    for n in c.nodes.values():
        if n.proc.poll() is None:
            n.stop()
        wait_until(lambda n=n: not n.pids(), 10, "the node's processes to exit")


def test_a_fence_sent_while_the_callees_node_backlog_is_full_is_not_lost(
        nodes: Nodes) -> None:
    """The pair's route is connected; the callee then takes nothing for a while and another
    sender fills what its node holds for it (past the bound, the node drops what comes).
    The pair's next message sends its fence on the node path and goes on the route: the
    fence must still reach the callee, or the callee holds the route's messages for ever
    (a call on it never answered)."""
    a, b = nodes.nodes["a"], nodes.nodes["b"]
    t = nodes.pid("b", "t")
    full = "prismatic_cluster_direct_mailbox_full"
    with p.connect(a.data_dir) as conn, p.connect(a.data_dir) as other:
        for i in range(SWITCH_AFTER + 1):  # the hello, then its answer read: connecting
            assert conn.call(t, ["echo", i]) == i
        pair = conn._messaging().pairs[t]
        assert pair.state is PairState.CONNECTING and pair.route is not None
        route = pair.route
        wait_until(route.connected, 5, "the route's connection")
        full0 = metric(b, full)
        busy = other.send_request(t, ["sleep", 3])  # t takes nothing meanwhile
        big = "x" * 65536
        for i in range((BACKLOG_LIMIT >> 16) + 64):  # the bound, the kernel's buffers, more
            assert other.cast(t, ["flood", i, big])
        wait_until(lambda: metric(b, full) > full0, 3, "b to drop what comes for t")
        assert conn.call(t, ["echo", "after"], timeout=8) == "after"  # fence, then route
        assert state_of(conn, t) is PairState.DIRECT
        assert other.receive_response(busy, timeout=5) == "slept"
        assert conn.call(t, ["echo", "again"], timeout=5) == "again"


def state_of(conn: p.NodeConnection, pid: p.Pid) -> PairState | None:
    pair = conn._messaging().pairs.get(pid)
    return None if pair is None else pair.state
