"""emit(): user events into the node's durable event log, acknowledged once synced."""

from __future__ import annotations

import os
import signal
import threading

import pytest

import prismatic as p
from prismatic._replay import open_log_reader
from tests.conftest import start_node, wait_until


def records(data_dir, **filters):
    with open_log_reader(data_dir) as log:
        return list(log.query(**filters))


def test_worker_emit_is_logged_with_its_fields(node_factory):
    n = node_factory("tests.messaging_apps:agents")
    first = n.conn.call("alpha", ["emit", "orders.created", [{"id": 1}, {"id": 2}], "corr-9"])
    got = records(n.data_dir, start_seq=first)
    assert [(r.seq, r.topic, r.payload, r.correlation_id) for r in got[:2]] == [
        (first, "orders.created", {"id": 1}, "corr-9"),
        (first + 1, "orders.created", {"id": 2}, "corr-9")]
    assert got[0].source == str(n.conn.whereis("alpha"))
    # by topic pattern, as the CLI queries it
    assert [r.seq for r in records(n.data_dir, pattern="orders.#")] == [first, first + 1]


def test_client_emit_and_bad_topic(node_factory):
    n = node_factory("tests.messaging_apps:agents")
    seq = n.conn.emit("ops.deploy", {"v": "1.2"}, correlation_id="c1")
    assert records(n.data_dir, start_seq=seq)[0].payload == {"v": "1.2"}
    with pytest.raises(p.TopicError):
        n.conn.emit("bad topic", 1)


def test_acknowledged_emits_survive_sigkill_of_the_node(tmp_path):
    """Kill the whole node mid-stream, again and again: every acked seq is in the log."""
    acked: list[int] = []
    for round_ in range(3):
        sub = tmp_path / f"r{round_}"
        sub.mkdir()
        # the same node and data directory each round, as after a host crash
        n = start_node(sub, "tests.messaging_apps:agents", name=f"emit{os.getpid()}",
                       data_dir=tmp_path / "data")
        stop = threading.Event()

        def emitter(n=n, stop=stop, round_=round_) -> None:
            while not stop.is_set():
                try:
                    acked.append(n.conn.emit("stress.tick", {"round": round_}))
                except p.PrismaticError:
                    return  # the node died under us: this one was never acknowledged

        t = threading.Thread(target=emitter)
        t.start()
        wait_until(lambda round_=round_: len(acked) > 50 * (round_ + 1), 20,
                   "some acknowledged emits")
        with p.connect(n.data_dir) as own:  # n.conn belongs to the emitter thread
            root = own.status().root_pid
        os.killpg(os.getpgid(root), signal.SIGKILL)
        n.proc.send_signal(signal.SIGKILL)
        stop.set()
        t.join(20)
        n.proc.wait(20)
        n.conn.close()
        wait_until(lambda n=n: not n.pids(), 10, "the killed node's processes to exit")
    seqs = [r.seq for r in records(tmp_path / "data", pattern="stress.#")]
    assert len(seqs) == len(set(seqs)) and seqs == sorted(seqs)
    assert set(acked) <= set(seqs)


def test_replay_to_a_worker_and_republish(node_factory):
    n = node_factory("tests.messaging_apps:agents")
    n.conn.emit_many("orders.eu", [{"id": 1}, {"id": 2}])
    n.conn.emit("orders.us", {"id": 3})
    # a worker rebuilding its state reads the log itself
    assert n.conn.call("alpha", ["replay", "orders.#"]) == [{"id": 1}, {"id": 2}, {"id": 3}]
    seen = []
    assert n.conn.replay(seen.append, pattern="orders.eu") == 2
    assert [r.payload for r in seen] == [{"id": 1}, {"id": 2}]
    # republished history comes under replay.<topic>, in log order
    with n.conn.subscribe("replay.orders.#") as sub:
        assert n.conn.republish(pattern="orders.#") == 3
        got = [sub.next(10) for _ in range(3)]
    assert [(e.topic, e.payload["id"]) for e in got] == [
        ("replay.orders.eu", 1), ("replay.orders.eu", 2), ("replay.orders.us", 3)]
