"""An emit's source is bound to its caller (prismatic/_emit_source.py, checked by the hub):
the rule itself, and a real node refusing a raw hub client that emits as a worker, as the
node or as a supervisor, while workers and clients emit as before."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from prismatic._address import Pid
from prismatic._emit_source import CLIENT_SOURCE, emit_source_permitted
from prismatic._hubclient import HubClient
from prismatic._replay import open_log_reader
from prismatic.transports._messages import EmitReq, HubReply
from tests.conftest import module_node

ME = Pid("n", 100, 7, 9)
WORKER = Pid("n", 200, 7, 11)


def test_a_caller_emits_as_itself_or_as_a_client():
    assert emit_source_permitted(str(ME), ME)
    assert emit_source_permitted(CLIENT_SOURCE, ME)
    assert emit_source_permitted(str(WORKER), WORKER)
    assert emit_source_permitted(CLIENT_SOURCE, WORKER)  # a worker may use a client too
    for forged in (str(WORKER), "node", "mesh", "root", "sup/worker", "", "<n.100 >"):
        assert not emit_source_permitted(forged, ME)


@given(st.text(max_size=30), st.integers(1, 2 ** 22), st.integers(1, 2 ** 40))
def test_only_the_node_emits_under_any_other_source(source, ospid, start):
    caller = Pid("n", ospid, 7, start)
    assert emit_source_permitted(source, None)
    assert emit_source_permitted(source, caller) == (source in (str(caller), CLIENT_SOURCE))


# ---- against a real node ----------------------------------------------------------------------

node = module_node("tests.messaging_apps:agents")


def metric(n, name: str) -> float:
    for line in n.conn.metrics().splitlines():
        if line.startswith(f"prismatic_{name}_total "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def emit_as(node_name: str, topic: str, source: str) -> HubReply:
    hub = HubClient(node_name)  # a raw hub connection of this (test) process
    try:
        return hub.request(lambda ref: EmitReq(ref, topic, [{"forged": True}], source), 5.0)
    finally:
        hub.close()


def test_a_process_cannot_emit_as_another(node):
    name = node.conn.status().node
    alpha = node.conn.whereis("alpha")
    before = metric(node, "hub_not_permitted")
    forged = [str(alpha), "node", "mesh", "root", "root/alpha", f"<{name}.1>"]
    for source in forged:
        reply = emit_as(name, "forged.event", source)
        assert reply.error == "not_permitted", source
    assert metric(node, "hub_not_permitted") == before + len(forged)
    # still served, as itself and as a client; and a worker emits as itself
    me = f"<{name}.{os.getpid()}>"
    mine = emit_as(name, "mine.event", me)
    assert mine.error is None
    client = emit_as(name, "mine.event", CLIENT_SOURCE)
    assert client.error is None
    by_worker = node.conn.call("alpha", ["emit", "mine.event", [{"w": 1}], None])
    with open_log_reader(node.data_dir) as log:
        assert not list(log.query(pattern="forged.#"))
        got = {r.seq: r.source for r in log.query(pattern="mine.#")}
    assert got[mine.value] == me
    assert got[client.value] == CLIENT_SOURCE
    assert got[by_worker] == str(alpha)
