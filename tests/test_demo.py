"""The built-in demo tree (prismatic/_demo.py) shows what its docstring says."""

from __future__ import annotations

import os
import signal

from tests.conftest import wait_until


def test_a_transform_restart_turns_the_source_casts_into_dead_letters(node_factory):
    n = node_factory("prismatic._demo:demo_tree")
    conn = n.conn
    transform = wait_until(lambda: conn.whereis("transform"), 10, "transform to warm up")
    pids = {c.id: c.pid for c in conn.which_children("pipeline")}
    with conn.subscribe("deadletter.#") as sub:
        os.kill(transform.ospid, signal.SIGKILL)

        def dead_letter_to_transform():
            ev = sub.next(timeout=0.5)
            return ev if ev is not None and ev.payload["dest"] == "transform" else None

        ev = wait_until(dead_letter_to_transform, 10, "a cast to transform to be dead")
    assert ev.topic == "deadletter.not_registered"
    assert ev.payload["kind"] == "cast"
    # rest_for_one restarted transform alone: the same source and sink kept running
    now = {c.id: c.pid for c in conn.which_children("pipeline")}
    assert (now["source"], now["sink"]) == (pids["source"], pids["sink"])
    assert now["transform"] not in (None, pids["transform"])
    # once warm again, the pipeline delivers: the sink's count grows
    seen = conn.call("sink", "total")["messages"]
    wait_until(lambda: conn.call("sink", "total")["messages"] > seen, 10,
               "the sink to get messages through the new transform")
