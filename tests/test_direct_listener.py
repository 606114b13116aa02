"""Direct routes to a process's own listener (``prismatic._direct_listener``, the caller's
side in ``prismatic._remote_routes``) between real nodes: a pair that keeps talking
switches off the node's hop with its order kept; a callee that dies on the route fails its
calls with its real exit reason, once, but not a call whose answer had reached the caller;
a lost node fails them with NoConnection; the listener admits only the cluster's key,
drops malformed batches, and goes with its process.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq

import prismatic as p
from prismatic._pair_switch import SWITCH_AFTER, PairState
from prismatic.mesh._secret import derive_keys, read_secret
from prismatic.transports._messages import CallFrame, CallRefused, CallReply, CastFrame
from prismatic.transports._remote_frames import (
    DIRECT_PREFIX, Deliver, decode_answers, encode_deliveries,
)
from tests.conftest import wait_until
from tests.test_mesh import member_socket, members, metric, states
from tests.test_remote import Nodes, open_cluster, socket_inodes


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    with open_cluster(tmp_path_factory.mktemp("listener"), "ab") as c:
        yield c


def state(conn: p.NodeConnection, pid: p.Pid) -> PairState | None:
    pair = conn._messaging().pairs.get(pid)
    return None if pair is None else pair.state


def switch(conn: p.NodeConnection, pid: p.Pid) -> None:
    """Enough calls for the pair to ask for, and take, its direct route."""
    for i in range(SWITCH_AFTER + 2):
        assert conn.call(pid, ["echo", i]) == i
    wait_until(lambda: conn.call(pid, ["echo", 0]) == 0 and state(conn, pid)
               is PairState.DIRECT, 5, "the pair to switch to its route")


def listening_ports(ospid: int) -> set[int]:
    """The TCP ports process ``ospid`` listens on (its descriptors' inodes, in /proc)."""
    inodes = socket_inodes(ospid)
    return {port for port, inode in listeners() if inode in inodes}


def listeners() -> list[tuple[int, str]]:
    """Every TCP socket in LISTEN state here: (port, inode)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                row = line.split()
                if row[3] == "0A":
                    out.append((int(row[1].rsplit(":", 1)[1], 16), row[9]))
    return out


def test_order_is_kept_across_the_switch(nodes: Nodes) -> None:
    """Casts, sends and pipelined calls from one client to one process, the pair switching
    to its route midway (messages on the node path still in flight when the route's
    first ones arrive): the callee sees them in send order."""
    a, b = nodes.nodes["a"], nodes.nodes["b"]
    c = nodes.pid("b", "c")
    switched0 = metric(a, "prismatic_cluster_direct_switched")
    opened0 = metric(b, "prismatic_cluster_direct_listeners_opened")
    before = len(a.conn.call(c, ["casts"]))
    big = "x" * (256 << 10)  # the node path's hop copies these: it falls behind the route
    reqs = []
    with p.connect(a.data_dir) as conn:
        def one(i: int, payload: str) -> None:
            if i % 3 == 0:
                assert conn.cast(c, ["seq", i, payload])
            elif i % 3 == 1:
                assert conn.send(c, ["seq", i, payload])
            else:
                reqs.append((i, conn.send_request(c, ["seq", i, payload])))

        for i in range(SWITCH_AFTER + 2):
            one(i, "")
        conn.call(c, ["echo", 0])  # the hello's answer is in: the route connects now,
        i = SWITCH_AFTER + 2  # and what follows goes on the node path until it is up
        deadline = time.monotonic() + 10
        while state(conn, c) is not PairState.DIRECT:
            assert time.monotonic() < deadline, "the pair never switched"
            one(i, big if i < SWITCH_AFTER + 40 else "")
            i += 1
        on_node_path = i
        for i in range(on_node_path, on_node_path + 300):  # on the route
            one(i, "")
        for i, req in reqs:
            assert conn.receive_response(req, timeout=10) == i
        assert state(conn, c) is PairState.DIRECT
    assert on_node_path > SWITCH_AFTER + 3  # messages went on both paths after the hello
    got = [x[1] for x in a.conn.call(c, ["casts"])[before:] if x[:1] == ["seq"]]
    assert got == list(range(on_node_path + 300))
    assert metric(a, "prismatic_cluster_direct_switched") > switched0
    assert metric(b, "prismatic_cluster_direct_listeners_opened") >= max(opened0, 1)  # c's


def test_a_callee_that_dies_on_its_route_fails_its_calls_with_its_reason_once(
        nodes: Nodes) -> None:
    """Three calls in flight on the route; the callee answers the first, crashes on the
    second. The caller is busy with a call on the node path meanwhile, where the callee's
    node tells it of the exit: the first call's answer, already at the caller, is kept;
    the other two fail with the real reason, once."""
    u = nodes.pid("b", "u")
    beta = nodes.pid("b", "b")
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        switch(conn, u)
        r1 = conn.send_request(u, ["sleep", 0.2])
        r2 = conn.send_request(u, ["crash"])
        r3 = conn.send_request(u, ["echo", 3])
        assert conn.call(beta, ["sleep", 1.0], timeout=5) == "slept"  # on the node path
        assert state(conn, u) is PairState.OFF  # the node's word came meanwhile
        assert conn.receive_response(r1, timeout=5) == "slept"
        for req in (r2, r3):
            with pytest.raises(p.ProcessDown) as down:
                conn.receive_response(req, timeout=5)
            assert p.describe(down.value.reason) == "ValueError: asked to crash"
        with pytest.raises(p.NoProcError):  # the old pid reaches nobody: the node path says
            conn.call(u, ["echo", 1], timeout=5)
        dead = '{kind="cast",reason="noproc"}'
        dead0 = metric(nodes.nodes["b"], "prismatic_dead_letters", dead)
        assert conn.cast(u, ["seq", "late"])  # and a cast to it is a dead letter there
        wait_until(lambda: metric(nodes.nodes["b"], "prismatic_dead_letters", dead) > dead0,
                   5, "the dead letter")
        fresh = nodes.restarted("b", "u", u)
        assert conn.call(fresh, ["echo", "new"], timeout=5) == "new"
        switch(conn, fresh)  # and SIGKILLed mid-call: the reason its node saw, once
        req = conn.send_request(fresh, ["die"])
        with pytest.raises(p.ProcessDown) as down:
            conn.receive_response(req, timeout=5)
        assert down.value.reason == p.Killed(9)
    nodes.restarted("b", "u", fresh)


def test_a_lost_node_fails_the_calls_on_its_routes_with_noconnection(nodes: Nodes) -> None:
    k = nodes.start("k", "--join", members(nodes.nodes["a"])[nodes.name("a")].address)
    wait_until(lambda: states(nodes.nodes["a"]).get(nodes.name("k")) == "alive", 10,
               "k to join")
    target = nodes.pid("k", "b")
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        switch(conn, target)
        req = conn.send_request(target, ["sleep", 20])
        time.sleep(0.05)  # the call is on its way
        k.proc.send_signal(signal.SIGKILL)
        k.proc.wait()
        started = time.monotonic()
        with pytest.raises(p.ProcessDown) as down:
            conn.receive_response(req, timeout=15)
        assert isinstance(down.value.reason, p.NoConnection)
        assert time.monotonic() - started < 5
    k.conn.close()
    wait_until(lambda: not k.pids(), 10, "the killed node's tree to die with it")
    del nodes.nodes["k"]


def test_a_peer_without_the_cluster_key_is_refused_at_the_listener(nodes: Nodes) -> None:
    b = nodes.nodes["b"]
    c = nodes.pid("b", "c")
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        switch(conn, c)
    (port,) = listening_ports(c.ospid)
    keys = derive_keys(read_secret(nodes.secret))
    unknown0 = metric(b, "prismatic_cluster_direct_listener_refused_unknown_key")
    bad0 = metric(b, "prismatic_cluster_direct_listener_refused_bad_handshake")
    ctx = zmq.Context()
    try:
        stranger = ctx.socket(zmq.DEALER)  # knows the server's key, holds another one
        stranger.linger = 0
        public, secret = zmq.curve_keypair()
        stranger.curve_serverkey = keys.public
        stranger.curve_publickey, stranger.curve_secretkey = public, secret
        stranger.connect(f"tcp://127.0.0.1:{port}")
        call = encode_deliveries([Deliver(c, CallFrame(1, ["echo", "in"]))])
        stranger.send(call)
        wait_until(lambda: metric(b, "prismatic_cluster_direct_listener_refused_unknown_key")
                   > unknown0, 5, "the refusal of another key counted")
        assert not stranger.poll(200), "a peer with another key got an answer"
        stranger.close(0)
        plain = ctx.socket(zmq.DEALER)  # no CURVE at all
        plain.linger = 0
        plain.connect(f"tcp://127.0.0.1:{port}")
        plain.send(call)
        wait_until(lambda: metric(b, "prismatic_cluster_direct_listener_refused_bad_"
                                     "handshake") > bad0, 5, "the failed handshake counted")
        assert not plain.poll(200), "a peer without CURVE got an answer"
    finally:
        ctx.destroy(0)
    logged = (b.log.parent / "node.out").read_text()  # a worker's log lines go there too
    assert "refused a peer at 127.0.0.1" in logged
    assert keys.secret.decode() not in logged and keys.public.decode() not in logged


def test_malformed_batches_on_a_listener_are_dropped_counted_and_it_serves_on(
        nodes: Nodes) -> None:
    b = nodes.nodes["b"]
    c = nodes.pid("b", "c")
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        switch(conn, c)
    (port,) = listening_ports(c.ospid)
    bad0 = metric(b, "prismatic_cluster_direct_listener_bad_frames")
    ctx = zmq.Context()
    s = member_socket(ctx, nodes.secret, f"127.0.0.1:{port}", 0)
    try:
        s.send(DIRECT_PREFIX + b"\xc1")  # not msgpack
        s.send(DIRECT_PREFIX + msgspec.msgpack.encode([["no", "delivery"]]))
        s.send_multipart([b"two", b"parts"])
        s.send(b"PM\x01" + msgspec.msgpack.encode({"x": 1}))  # not a direct batch
        wait_until(lambda: metric(b, "prismatic_cluster_direct_listener_bad_frames")
                   >= bad0 + 4, 5, "the bad batches to be counted")
        stale = p.Pid(c.node, c.ospid, 1, 1)  # another incarnation's: nobody
        s.send(encode_deliveries([Deliver(stale, CallFrame(6, ["echo", "stale"])),
                                  Deliver(stale, CastFrame(["seq", "stale"])),
                                  Deliver(c, CallFrame(7, ["echo", "still"]))]))
        assert s.poll(5000), "no answer on the same route"
        answers: list[Any] = decode_answers(s.recv())[0] or []
        assert answers == [CallRefused(6, "noproc"), CallReply(7, "still")]
    finally:
        s.close(0)
        ctx.term()
    assert nodes.pid("b", "c") == c  # the same process serves on
    wait_until(lambda: f"direct listener of {c}: dropped a malformed batch from 127.0.0.1"
               in (b.log.parent / "node.out").read_text(), 5, "the log line")


def test_the_listener_goes_with_its_process(nodes: Nodes) -> None:
    """A worker with a listener (and the ZeroMQ threads it brought) exits: it is gone in
    time (its context ended: nothing held its exit) and nothing listens on the port."""
    t = nodes.pid("b", "t")
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        switch(conn, t)
        (port,) = listening_ports(t.ospid)
        threads = {open(f"/proc/{t.ospid}/task/{task}/comm").read().strip()
                   for task in os.listdir(f"/proc/{t.ospid}/task")}
        assert "ZMQbg/IO/0" in threads
        with pytest.raises(p.ProcessDown):
            conn.call(t, ["stop"], timeout=5)
    wait_until(lambda: not os.path.exists(f"/proc/{t.ospid}"), 5, "the worker to exit")
    assert port not in {port for port, _ in listeners()}
    nodes.restarted("b", "t", t)


def test_an_async_callee_answers_on_its_route(nodes: Nodes) -> None:
    """A worker on uvloop reads its listener too; its replies, made after the read that
    brought their calls, leave on their own."""
    target = nodes.pid("b", "async")
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        for i in range(SWITCH_AFTER + 4):
            assert conn.call(target, i) == ["async", i]
        wait_until(lambda: conn.call(target, 0) == ["async", 0] and state(conn, target)
                   is PairState.DIRECT, 5, "the pair to switch to its route")
        reqs = [conn.send_request(target, i) for i in range(50)]
        assert [conn.receive_response(r, timeout=5) for r in reqs] == \
            [["async", i] for i in range(50)]


@pytest.mark.parametrize(("path", "loaded", "logged"), [
    ("a", True, "cannot open one"),  # its sockets cannot be made
    ("b", False, "cannot load it"),  # its module cannot even be read
])
def test_a_process_that_cannot_open_a_listener_answers_on_the_node_path(
        nodes: Nodes, path: str, loaded: bool, logged: str) -> None:
    """No descriptor left for a listener: the process says so (logged, counted on its
    node), the caller counts the pair as not offered, and the pair carries on as before.
    Its node does not keep the caller as one to tell of the process's exit on a route
    (there is none: the node path tells it)."""
    a, b = nodes.nodes["a"], nodes.nodes["b"]
    alpha = nodes.pid("b", path)
    if loaded:
        b.conn.call(alpha, ["import", "prismatic._direct_listener"])
    watchers = "prismatic_cluster_direct_route_watchers"
    watchers0 = metric(b, watchers)
    failures0 = metric(b, "prismatic_cluster_direct_listener_failures")
    offered0 = metric(a, "prismatic_cluster_direct_not_offered")
    with p.connect(a.data_dir) as conn:
        for i in range(SWITCH_AFTER - 2):  # the node's connection to alpha is made now
            assert conn.call(alpha, ["echo", i]) == i
        b.conn.call(alpha, ["echo", 0])  # and b's client's, which restores the limit
        old = b.conn.call(alpha, ["fdlimit", None])
        try:
            for i in range(SWITCH_AFTER + 4):  # the hello, answered with no port
                assert conn.call(alpha, ["echo", i]) == i
            wait_until(lambda: conn.call(alpha, ["echo", 0]) == 0 and state(conn, alpha)
                       is PairState.OFF, 5, "the pair to stay on the node path")
        finally:
            b.conn.call(alpha, ["fdlimit", old])
        wait_until(lambda: metric(b, watchers) <= watchers0, 5,  # the caller is still there
                   "b to forget the caller answered with no port")
        assert conn.call(alpha, ["echo", "still"]) == "still"
    assert listening_ports(alpha.ospid) == set()
    wait_until(lambda: metric(b, "prismatic_cluster_direct_listener_failures") > failures0
               and metric(a, "prismatic_cluster_direct_not_offered") > offered0, 5,
               "both sides to count it")
    assert f"direct listener of {alpha}: {logged}" in (b.log.parent / "node.out").read_text()
