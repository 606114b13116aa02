"""Direct links (``prismatic._direct_link`` and ``prismatic.mesh._direct``) between two real
nodes: many messages per ZeroMQ message and many answers per wake-up keep each sender's
order and every answer's pairing; what a process sent just before exiting still arrives; a
malformed direct batch is dropped, counted and logged, and the node goes on serving.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

import prismatic as p
from prismatic.mesh._secret import init_secret
from prismatic.transports._framing import FrameBuffer, encode_frame
from prismatic.transports._messages import CallFrame, CallRefused, CallReply, CastFrame
from prismatic.transports._remote_frames import (
    DIRECT_PREFIX, Deliver, Forward, RelayAnswer, decode_answers, decode_deliveries,
    encode_answers, encode_deliveries, relay_address,
)
from tests.conftest import REPO, RunningNode, start_node, wait_until
from tests.test_mesh import member_socket, members, metric, states
from tests.test_mesh_netns import Net, netns_unavailable
from tests.test_remote import APP, L, Nodes, open_cluster


BACKLOG_LIMIT = 16 << 20  # what b holds for one of its mailboxes (default: 64 MiB)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    backlog = {"PRISMATIC_REMOTE_BACKLOG_BYTES": str(BACKLOG_LIMIT)}
    with open_cluster(tmp_path_factory.mktemp("direct"), "ab", backlog) as c:
        yield c


def test_pipelined_calls_and_casts_keep_order_and_pairing(nodes: Nodes) -> None:
    a = nodes.nodes["a"].conn
    c = nodes.pid("b", "c")
    with p.connect(nodes.nodes["a"].data_dir) as other:  # its calls shift b's refs to c
        for i in range(3):
            assert other.call(c, ["echo", -i]) == -i
    before = len(a.call(c, ["casts"]))
    # Casts and calls interleaved, 1,500 in flight at once: the node reads many per wake-up
    # and answers many per message; each answer goes to its own request.
    reqs = []
    for i in range(1500):
        a.cast(c, i)
        reqs.append((i, a.send_request(c, ["echo", [i, "y" * (i % 50)]])))
    big = "z" * (2 << 20)  # one message over a socket buffer, between small ones
    a.cast(c, big)
    a.cast(c, "after")
    for i, req in reversed(reqs):  # collected in the other order: kept until asked for
        assert a.receive_response(req, timeout=10) == [i, "y" * (i % 50)]
    got = a.call(c, ["casts"], timeout=10)[before:]
    assert got == [*range(1500), big, "after"]


def test_a_worker_call_on_a_direct_link_names_its_caller(nodes: Nodes) -> None:
    a = nodes.nodes["a"].conn
    b_alpha = nodes.pid("b", "a")
    assert a.call("alpha", ["call", L(b_alpha), ["whoami"], 5]) == \
        ["ok", [nodes.name("b"), b_alpha.ospid, True]]
    assert a.call("alpha", ["call", ["beta", nodes.name("b")], ["echo", 2], 5]) == ["ok", 2]
    assert a.call("alpha", ["call", [nodes.name("b"), 4_000_000], ["echo", 3], 5]) == \
        ["error", "NoProcError", "noproc"]


def test_what_a_process_sent_before_exiting_arrives(nodes: Nodes) -> None:
    a = nodes.nodes["a"].conn
    c = nodes.pid("b", "c")
    sender = nodes.pid("a", "u")
    before = len(a.call(c, ["casts"]))
    with pytest.raises(p.ProcessDown):
        a.call(sender, ["cast_then_stop", L(c), 200])  # 13 MB of casts, then exit at once

    def arrived() -> list[Any] | None:
        got = [x for x in a.call(c, ["casts"])[before:] if x[0] == "last"]
        return got if len(got) >= 200 else None

    got = wait_until(arrived, 10, "every cast sent before the exit")
    assert [x[1] for x in got] == list(range(200))
    nodes.restarted("a", "u", sender)


def test_a_malformed_direct_batch_is_dropped_counted_and_logged(nodes: Nodes) -> None:
    node = nodes.nodes["b"]
    before = metric(node, "prismatic_cluster_direct_bad_frames")
    ctx = zmq.Context()
    s = member_socket(ctx, nodes.secret, members(node)[nodes.name("b")].address, 0)
    try:
        c = nodes.pid("b", "c")
        s.send(DIRECT_PREFIX + b"\xc1")  # not msgpack
        s.send(DIRECT_PREFIX + msgspec.msgpack.encode([["no", "delivery"]]))
        s.send(DIRECT_PREFIX + msgspec.msgpack.encode({"x": 1}))
        wait_until(lambda: metric(node, "prismatic_cluster_direct_bad_frames") >= before + 3,
                   5, "the bad batches to be counted")
        # the link still works, and so does the node
        s.send(encode_deliveries([Deliver(c, CallFrame(7, ["echo", "still"]))]))
        assert s.poll(5000), "no answer on the same link"
        assert decode_answers(s.recv())[0] == [CallReply(7, "still")]
    finally:
        s.close(0)
        ctx.term()
    assert nodes.nodes["a"].conn.call(nodes.pid("b", "c"), ["echo", 1]) == 1
    wait_until(lambda: "dropped a malformed direct batch from 127.0.0.1" in
               (node.log.parent / "node.out").read_text(), 5, "the log line")


def test_a_mailbox_that_stops_reading_bounds_what_its_node_holds_for_it(nodes: Nodes) -> None:
    """A process busy in a long call takes nothing from its mailbox: what its node holds for
    it from other nodes stops at BACKLOG_LIMIT. Past it, a cast is a dead letter and a call
    fails at once with MailboxFull (not at its timeout), each counted; what got through
    arrives in order, and every cast either arrives or is a counted dead letter."""
    a = nodes.nodes["a"].conn
    node_b = nodes.nodes["b"]
    t = nodes.pid("b", "t")
    full = "prismatic_cluster_direct_mailbox_full"
    dead = '{kind="cast",reason="mailbox_full"}'
    full0 = metric(node_b, full)
    dead0 = metric(node_b, "prismatic_dead_letters", dead)
    busy = a.send_request(t, ["sleep", 3])
    n = (BACKLOG_LIMIT >> 16) + 64  # 64 KiB each: the bound, the kernel's buffers, and more
    big = "x" * 65536
    for i in range(n):
        assert a.cast(t, ["flood", i, big])
    wait_until(lambda: metric(node_b, full) > full0, 5, "casts past the bound to be dropped")
    for i in range(n, n + 8):  # still full: dropped too (not let in as the kernel takes some)
        assert a.cast(t, ["flood", i, big])
    n += 8
    started = time.monotonic()
    with pytest.raises(p.MailboxFull):
        a.call(t, ["echo", 1], timeout=10)
    assert time.monotonic() - started < 2, "the call waited behind the backlog"
    assert a.receive_response(busy, timeout=10) == "slept"
    dropped = int(metric(node_b, full) - full0) - 1  # less the refused call

    def casts() -> list[Any] | None:  # once it has read half its backlog, b lets calls in
        try:
            return a.call(t, ["casts"])
        except p.MailboxFull:
            return None

    seen = [x[1] for x in wait_until(casts, 10, "t to read its backlog") if x[:1] == ["flood"]]
    assert 0 < dropped < n and seen == list(range(n - dropped))
    assert wait_until(lambda: metric(node_b, "prismatic_dead_letters", dead) - dead0, 5,
                      "the dead letters") == dropped


def test_the_relay_path_bounds_what_its_node_holds_for_a_mailbox_too(nodes: Nodes) -> None:
    """The same bound on the relay path (a process's relay forwards over the mesh: the way
    to a node its process could not locate): past it a cast is a counted dead letter and a
    call is refused with mailbox_full."""
    a = nodes.nodes["a"].conn
    node_b = nodes.nodes["b"]
    t = nodes.pid("b", "t")
    full = "prismatic_cluster_relay_mailbox_full"
    full0 = metric(node_b, full)
    busy = a.send_request(t, ["sleep", 3])
    n = (BACKLOG_LIMIT >> 16) + 64
    big = "x" * 65536
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(relay_address(nodes.name("a")))
        s.settimeout(10)
        for i in range(n):
            s.sendall(encode_frame(Forward(nodes.name("b"), t, CastFrame(["flood", i, big]))))
        wait_until(lambda: metric(node_b, full) > full0, 10, "casts past the bound dropped")
        s.sendall(encode_frame(Forward(nodes.name("b"), t, CallFrame(7, ["echo", 1]))))
        frames = FrameBuffer(msgspec.msgpack.Decoder(RelayAnswer), "relay")
        got: list[Any] = []
        while not got:
            got = frames.feed(s.recv(1 << 16))
        assert got == [CallRefused(7, "mailbox_full")]
    assert a.receive_response(busy, timeout=10) == "slept"
    dropped = int(metric(node_b, full) - full0) - 1  # less the refused call
    assert 0 < dropped < n


def test_a_node_restarted_under_its_name_fails_the_call_in_flight(nodes: Nodes) -> None:
    """A node SIGKILLed and started again under its name (a new incarnation at a new
    address): the call in flight to the old one fails NoConnection, and the new one is
    reached on a new link (located again)."""
    a = nodes.nodes["a"].conn
    old = nodes.nodes["b"]
    req = a.send_request(nodes.pid("b", "b"), ["sleep", 20])
    old.proc.send_signal(signal.SIGKILL)
    old.proc.wait()
    old.conn.close()  # left to the collector, its context's term hung the test run's exit
    sub = nodes.tmp / "b-again"
    sub.mkdir()
    nodes.nodes["b"] = start_node(
        sub, APP, name=nodes.name("b"), data_dir=nodes.tmp / "data-b-again",
        args=("--cluster-secret", str(nodes.secret), "--join",
              members(nodes.nodes["a"])[nodes.name("a")].address))
    with pytest.raises(p.ProcessDown) as failed:
        a.receive_response(req, timeout=15)
    assert isinstance(failed.value.reason, p.NoConnection)
    wait_until(lambda: not old.pids(), 10, "the killed node's tree to die with it")
    fresh = nodes.pid("b", "a")
    assert wait_until(lambda: states(nodes.nodes["a"]).get(nodes.name("b")) == "alive", 10,
                      "the new incarnation to be alive")
    assert a.call(fresh, ["echo", "new"], timeout=5) == "new"


def test_direct_batches_decode_what_they_encode_and_refuse_the_rest() -> None:
    batch = [Deliver(p.Pid("n", 5), CallFrame(1, {"k": [1]}, p.Pid("m", 2), None)),
             Deliver("name", CallFrame(2, None))]
    assert decode_deliveries(encode_deliveries(batch)) == (batch, "")
    answers = [CallReply(1, "x")]
    assert decode_answers(encode_answers(answers)) == (answers, "")  # type: ignore[arg-type]
    for bad in (b"", b"PM\x01\x90", b"PD\x02\x90", DIRECT_PREFIX + b"\x91\xc1",
                DIRECT_PREFIX + msgspec.msgpack.encode([[1, 2, 3]])):
        assert decode_deliveries(bad)[0] is None
        assert decode_answers(bad)[0] is None


# ---- across a real partition (network namespaces; you are root) -------------------------

NET_RUN = uuid.uuid4().hex[:5]
NET_SUBNET = f"10.{150 + int(NET_RUN[:2], 16) % 50}.{int(NET_RUN[2:4], 16)}"

_CALLER = """
import sys
import prismatic as p
c = p.connect(sys.argv[1])
pid = p.Pid(sys.argv[2], int(sys.argv[3]))
req = c.send_request(pid, ["sleep", 6])
print("sent", flush=True)
try:
    print("answer", c.receive_response(req, timeout=20), flush=True)
except p.ProcessDown as exc:
    print("down", type(exc.reason).__name__, flush=True)
sys.stdin.readline()  # healed
print("again", c.call(pid, ["echo", "again"], timeout=10), flush=True)
print("after", c.call(pid, ["echo", "after"], timeout=10), flush=True)
"""


@pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))
def test_a_partition_fails_the_call_in_flight_and_a_heal_gives_a_new_link(
        tmp_path: Path) -> None:
    net = Net(2, prefix="pd", subnet=NET_SUBNET)
    secret = init_secret(tmp_path / "cluster.secret")
    names = [f"dh{i}{NET_RUN}" for i in (1, 2)]
    nodes: list[RunningNode] = []
    caller: subprocess.Popen[str] | None = None
    try:
        for i in (1, 2):
            sub = tmp_path / f"h{i}"
            sub.mkdir()
            join = ("--join", f"{NET_SUBNET}.1:4370") if i > 1 else ()
            nodes.append(start_node(sub, APP, name=names[i - 1], data_dir=sub / "data",
                                    prefix=("ip", "netns", "exec", net.hosts[i - 1]),
                                    args=("--cluster-secret", str(secret), "--listen",
                                          f"{NET_SUBNET}.{i}:4370", *join)))
        h1, h2 = nodes
        everyone = {n: "alive" for n in names}
        wait_until(lambda: states(h1) == everyone and states(h2) == everyone, 10, "formation")
        ospid = wait_until(lambda: h2.conn.pid_of("a"), 10, "h2's worker")
        caller = subprocess.Popen(
            ["ip", "netns", "exec", net.hosts[0], sys.executable, "-c", _CALLER,
             str(h1.data_dir), names[1], str(ospid)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        assert caller.stdout is not None and caller.stdin is not None
        assert caller.stdout.readline().strip() == "sent"
        net.link(2, up=False)
        # the call in flight fails once h1 declares h2 dead, not when its 20 s run out
        assert caller.stdout.readline().strip() == "down NoConnection"
        net.link(2, up=True)
        wait_until(lambda: states(h1) == everyone and states(h2) == everyone, 15, "the heal")
        caller.stdin.write("healed\n")
        caller.stdin.flush()
        # a new link; the first call's late answer (its sleep ends meanwhile) is dropped
        assert caller.stdout.readline().strip() == "again again"
        assert caller.stdout.readline().strip() == "after after"
        assert caller.wait(10) == 0
    finally:
        if caller is not None and caller.poll() is None:
            caller.kill()
            caller.wait()
        net.link(2, up=True)
        for n in nodes:
            n.stop()
        net.close()
