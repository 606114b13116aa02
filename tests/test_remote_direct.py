"""Direct links (``prismatic._direct_link`` and ``prismatic.mesh._direct``) between two real
nodes: many messages per ZeroMQ message and many answers per wake-up keep each sender's
order and every answer's pairing; what a process sent just before exiting still arrives; a
malformed direct batch is dropped, counted and logged, and the node goes on serving.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq

import prismatic as p
from prismatic.mesh._secret import derive_keys, read_secret
from prismatic.transports._messages import CallFrame, CallReply
from prismatic.transports._remote_frames import (
    DIRECT_PREFIX, Deliver, decode_answers, decode_deliveries, encode_answers,
    encode_deliveries,
)
from tests.conftest import wait_until
from tests.test_mesh import members, metric, states
from tests.test_remote import L, Nodes


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    c = Nodes(tmp_path_factory.mktemp("direct"))
    c.start("a", "--listen", "127.0.0.1:0")
    c.start("b", "--join", members(c.nodes["a"])[c.name("a")].address)
    names = {c.name(s) for s in "ab"}
    wait_until(lambda: all(set(k for k, v in states(n).items() if v == "alive") == names
                           for n in c.nodes.values()), 10, "the two nodes to form a cluster")
    yield c
    for n in c.nodes.values():
        n.stop()
        wait_until(lambda n=n: not n.pids(), 10, "the node's processes to exit")


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
    keys = derive_keys(read_secret(nodes.secret))
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.curve_serverkey = keys.public
    s.curve_publickey = keys.public
    s.curve_secretkey = keys.secret
    s.connect("tcp://" + members(node)[nodes.name("b")].address)
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
