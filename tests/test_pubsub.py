"""Pub/sub end to end: real nodes, real worker processes, external clients (tests/apps.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import msgspec
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

import prismatic as p
from prismatic._pubsub_wire import (
    PAYLOAD_MAX_BYTES, STAMP, WIRE_VERSION, GapCounter, events_address, publish_address, read_stamp,
)
from prismatic._subscription import await_hello
from tests.conftest import REPO, start_node, wait_until

APP = "tests.apps:pubsub"


def next_event(sub: p.Subscription, timeout: float = 10.0) -> p.Event:
    event = sub.next(timeout)
    assert event is not None, f"no event on {sub.pattern.pattern!r} within {timeout}s"
    return event


def metric(conn: p.NodeConnection, name: str) -> float:
    m = re.search(rf"^prismatic_{name}_total (\S+)$", conn.metrics(), re.M)
    assert m, f"no metric {name}"
    return float(m[1])


def test_worker_publishes_and_external_subscriber_receives(node_factory) -> None:
    node = node_factory(APP)
    with node.conn.subscribe("relay.#") as sub:
        node.conn.publish("in.hello", {"n": 1, "text": "hi"})
        event = next_event(sub)
    assert event == p.Event("relay.in.hello", {"n": 1, "text": "hi"})


def test_external_publisher_reaches_worker_subscriber_plain_and_async_init(node_factory) -> None:
    node = node_factory(APP)
    with node.conn.subscribe("*.*.x") as sub:  # relay.in.x and arelay.ain.x, not in.x
        node.conn.publish("in.x", [1, 2, 3])
        node.conn.publish("ain.x", "async")
        got = {next_event(sub).topic: None, next_event(sub).topic: None}
    assert set(got) == {"relay.in.x", "arelay.ain.x"}


def test_wildcards_on_user_events(node_factory) -> None:
    node = node_factory(APP)
    c = node.conn
    with c.subscribe("metrics.*.cpu") as star, c.subscribe("metrics.#") as hash_, \
            c.subscribe("#.cpu") as tail:
        for topic in ("metrics.a.cpu", "metrics.a.b.cpu", "metrics", "metrics.mem", "other.cpu"):
            c.publish(topic, topic)
        c.publish("metrics.end", None)
        c.publish("end.cpu", None)
        seen: dict[str, list[str]] = {"star": [], "hash": [], "tail": []}
        for name, sub, last in (("star", star, None), ("hash", hash_, "metrics.end"),
                                ("tail", tail, "end.cpu")):
            while True:
                event = sub.next(2.0 if last is None else 10.0)
                if event is None or event.topic == last:
                    break
                seen[name].append(event.topic)
    assert seen["star"] == ["metrics.a.cpu"]
    assert seen["hash"] == ["metrics.a.cpu", "metrics.a.b.cpu", "metrics", "metrics.mem"]
    assert seen["tail"] == ["metrics.a.cpu", "metrics.a.b.cpu", "other.cpu"]


def test_lifecycle_events_match_wildcard_patterns(node_factory) -> None:
    node = node_factory(APP)
    with node.conn.subscribe("supervisor.#") as every, \
            node.conn.subscribe("supervisor.*.w1.*") as w1, \
            node.conn.subscribe("supervisor.root.*.child_started") as started:
        node.conn.terminate_child("", "w1")
        node.conn.restart_child("", "w1")
        kinds = []
        while "child_started" not in kinds:
            event = next_event(w1)
            assert event.topic.startswith("supervisor.root.w1.")
            kinds.append(event.topic.rsplit(".", 1)[1])
        assert event.payload["key"] == "w1" and event.payload["pid"] > 0
        assert next_event(started).topic == "supervisor.root.w1.child_started"
        assert next_event(every).topic.startswith("supervisor.root.w1.")


def test_subscribe_then_publish_is_never_missed(node_factory) -> None:
    node = node_factory(APP)
    for i in range(150):  # external subscriber, external publisher
        with node.conn.subscribe(f"joiner.{i}.#") as sub:
            node.conn.publish(f"joiner.{i}", i)
            assert next_event(sub, 5) == p.Event(f"joiner.{i}", i)
    # A worker subscribes inside a handler and publishes on that topic at once.
    with node.conn.subscribe("selftest.done") as done:
        for i in range(100):
            node.conn.publish("selftest.go", i)
        assert sorted(next_event(done).payload for _ in range(100)) == list(range(100))


def test_per_publisher_order_across_mixed_topics(node_factory) -> None:
    node = node_factory(APP)
    n = 5000
    with node.conn.subscribe("burst.#") as sub, node.conn.subscribe("order.#") as order:
        node.conn.publish("burst.go", n)  # the worker publishes 0..n-1 over three topics
        for i in range(n):  # and so does this client, mixing topics and batches
            if i % 100 == 0:
                node.conn.publish_many(f"order.t{i % 3}", [i])
            else:
                node.conn.publish(f"order.t{(i // 5) % 3}", i)
        from_worker: list[object] = []
        while (event := next_event(sub)).topic != "burst.end":
            if event.topic != "burst.go":
                assert event.topic in ("burst.a", "burst.b.x", "burst.c")
                from_worker.append(event.payload)
        from_client = [next_event(order).payload for _ in range(n)]
    assert from_worker == list(range(n))
    assert from_client == list(range(n))


def test_malformed_messages_are_dropped_counted_and_the_node_survives(node_factory) -> None:
    node = node_factory(APP)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(publish_address(node.data_dir))
    try:
        with node.conn.subscribe("#") as sub:
            push.send(b"one frame only")
            push.send_multipart([b"raw.ok", msgspec.msgpack.encode([1]), b"third frame"])
            push.send_multipart([b"raw.ok", b"not an array"])
            push.send_multipart([b"bad topic!", msgspec.msgpack.encode([1])])
            push.send_multipart([b"_hello.spoof", msgspec.msgpack.encode([1])])
            push.send_multipart([b"raw.ok", msgspec.msgpack.encode(["fine", 2])])
            assert next_event(sub) == p.Event("raw.ok", "fine")
            assert next_event(sub) == p.Event("raw.ok", 2)
            assert sub.next(0.2) is None
        wait_until(lambda: metric(node.conn, "pubsub_dropped_bad_frames") == 3, 5,
                   "three bad frames counted")
        assert metric(node.conn, "pubsub_dropped_bad_topic") == 2
        assert metric(node.conn, "pubsub_events_forwarded") >= 2
        assert node.conn.status().ready
        assert node.proc.poll() is None
    finally:
        push.close()
        ctx.term()


def test_hello_echoes_of_other_subscribers_never_surface(node_factory) -> None:
    node = node_factory(APP)
    with node.conn.subscribe("#") as everything:
        for _ in range(20):  # each handshake's echo also reaches `everything` on the wire
            node.conn.subscribe("other.#").close()
        node.conn.publish("marker", 1)
        while (event := next_event(everything)).topic != "marker":
            assert not event.topic.startswith("_hello")


def test_bad_publishes_raise_at_the_call(node_factory) -> None:
    node = node_factory(APP)
    with pytest.raises(p.PubSubError, match="'bad.payload'"):
        node.conn.publish("bad.payload", object())
    with pytest.raises(p.TopicError):
        node.conn.publish("bad..topic", 1)
    with pytest.raises(p.TopicError):
        node.conn.publish("_hello.x", 1)
    with pytest.raises(p.TopicError):
        node.conn.subscribe("_hello.#")
    with pytest.raises(p.TopicError):
        node.conn.subscribe("a*b")
    # the node's publish.sock drops a connection that sends more (ZMQ_MAXMSGSIZE): refused here
    with pytest.raises(p.PubSubError, match="'big'.*over the limit"):
        node.conn.publish("big", b"x" * PAYLOAD_MAX_BYTES)
    with pytest.raises(p.PubSubError, match="'big'.*over the limit"):
        node.conn.publish_many("big", [b"x" * (PAYLOAD_MAX_BYTES // 2)] * 2)
    with node.conn.subscribe("still.works") as sub:  # the failed calls left nothing behind
        node.conn.publish("still.works", 1)
        assert next_event(sub).payload == 1
    assert node.conn.flush(5)


def test_open_subscription_and_events_published_before_close_are_delivered(
        node_factory) -> None:
    node = node_factory(APP)
    with p.open_subscription(node.data_dir, "late.#") as sub:
        with p.connect(node.data_dir) as client:
            client.publish_many("late.batch", range(1000))
        payloads = [next_event(sub).payload for _ in range(1000)]
    assert payloads == list(range(1000))


def test_next_batch_gives_everything_received_in_order(node_factory) -> None:
    node = node_factory(APP)
    with node.conn.subscribe("batch.#") as sub:
        node.conn.publish_many("batch.a", list(range(300)))
        node.conn.publish("batch.b", "end")
        node.conn.flush()
        got: list = []
        while not got or got[-1].topic != "batch.b":
            batch = sub.next_batch(10)
            assert batch, "timed out"
            got += batch
        assert sub.next_batch(0.05) == []
    assert [e.payload for e in got] == [*range(300), "end"]


def test_next_batch_is_bounded_when_a_backlog_waits(node_factory) -> None:
    # A consumer that fell behind gets its backlog a bounded batch at a time (at most one
    # message past BATCH_MAX_EVENTS; one publish() per event makes runs of <= RUN_MAX_EVENTS),
    # in order and complete.
    from prismatic._pubsub_wire import RUN_MAX_EVENTS
    from prismatic._subscription import BATCH_MAX_EVENTS

    node = node_factory(APP)
    n = 20_000
    with node.conn.subscribe("backlog.#") as sub:
        for i in range(n):
            node.conn.publish("backlog.a", i)
        node.conn.flush()
        got: list = []
        while len(got) < n:
            batch = sub.next_batch(10)
            assert batch, f"timed out after {len(got)} events"
            assert len(batch) < BATCH_MAX_EVENTS + RUN_MAX_EVENTS
            got += [e.payload for e in batch]
        assert sub.next_batch(0.05) == []
    assert got == list(range(n))


def test_run_buffer_keeps_runs_within_the_limit_and_in_order() -> None:
    # Runs stay <= RUN_MAX_EVENTS (a subscriber decodes a run at once: the GC reason in
    # _pubsub_wire), except a publish_many batch bigger than that on its own, which is
    # never split; every event comes out once, in order, under its topic.
    from prismatic._pubsub_wire import RUN_MAX_EVENTS, RunBuffer, encode_batch, encode_payload

    buffer = RunBuffer()
    seq = 0
    for size in (100, 100, 300, 1, RUN_MAX_EVENTS + 7, 50, 100):
        _, body = encode_batch("t", list(range(seq, seq + size)))
        buffer.add_batch(b"t.a", body, size)
        seq += size
    for _ in range(RUN_MAX_EVENTS + 3):
        buffer.add(b"t.a", encode_payload("t", seq))
        seq += 1
    buffer.add(b"t.b", encode_payload("t", seq))
    seq += 1
    messages = buffer.take()
    decode = msgspec.msgpack.Decoder(list[int]).decode
    runs = [(topic, decode(body)) for topic, body in messages]
    assert [p for _, run in runs for p in run] == list(range(seq))
    # 100+100+300+1 | the big batch alone | 50+100 and 362 singles | the other 153 | t.b
    assert [len(run) for _, run in runs] == [501, RUN_MAX_EVENTS + 7, RUN_MAX_EVENTS,
                                             RUN_MAX_EVENTS + 3 - (RUN_MAX_EVENTS - 150), 1]
    assert [topic for topic, _ in runs] == [b"t.a"] * 4 + [b"t.b"]


# ---- flow control: a bounded node, drops counted exactly ----------------------------------

FLOOD_HWM = 200  # messages per subscriber (the node's --subscriber-hwm)
# 80 MiB in batches of 64 events of ~1 KiB (63.6 KiB): two batches make a run (a run closes
# once it holds 64 KiB), so 640 messages of 127 KiB, three times what the HWM holds.
FLOOD_BATCHES = 1280
FLOOD_RUN = 64
FLOOD_RATE = 320.0  # messages a second: 20 MiB/s, a pace the node forwards as it comes
FLOOD_NODE_BOUND = 36 << 20  # 25 MiB queued (measured: +25 MiB); unbounded: +80 MiB
_PAD = "x" * 1010


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _subscriber(data_dir: object, topic: str, total: int,
                slow_ms: int = 0) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.pubsub_apps", str(data_dir), topic,
                             str(total), str(slow_ms)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_stopped_subscriber_holds_the_node_bounded_and_counts_exactly_what_it_lost(
        tmp_path) -> None:
    """A publisher floods 80 MiB at a node whose subscribers' queues hold 200 messages: a
    SIGSTOPped subscriber costs the node at most its queue (a node that kept its backlog
    grows by all of it), a healthy and a slow-but-live subscriber get every event, and the
    stopped one, resumed, reports exactly how many events it lost; so does a worker of the
    tree stopped alongside (chaos's Listener: its ``pubsub.lost``)."""
    node = start_node(tmp_path, APP, args=("--subscriber-hwm", str(FLOOD_HWM)))
    total = FLOOD_BATCHES * FLOOD_RUN
    subs: list[subprocess.Popen[str]] = []
    try:
        subs.append(_subscriber(node.data_dir, "flood", total))  # healthy
        subs.append(_subscriber(node.data_dir, "flood", total, slow_ms=7))  # ~18k events/s
        subs.append(_subscriber(node.data_dir, "flood", total))
        conn = node.conn
        worker = conn.start_child("", p.ChildSpec(
            id="wsub", start="prismatic.chaos._apps:Listener", args=("wsub", "flood"),
            restart="temporary"))
        assert worker is not None and conn.call("wsub", "count") == [0, 0, 0, 0, 0, 0]
        os.kill(subs[2].pid, signal.SIGSTOP)
        os.kill(worker, signal.SIGSTOP)  # its queue holds the same runs (shared, not copied)
        base = peak = _rss(node.proc.pid)
        t0 = time.monotonic()
        for k, i in enumerate(range(0, total, FLOOD_RUN)):
            conn.publish_many("flood", [[j, _PAD] for j in range(i, i + FLOOD_RUN)])
            if k % 8 == 0:
                peak = max(peak, _rss(node.proc.pid))
                if (ahead := t0 + k / FLOOD_RATE - time.monotonic()) > 0:
                    time.sleep(ahead)
        conn.flush(30.0)
        for _ in range(20):  # what the node still holds
            peak = max(peak, _rss(node.proc.pid))
            time.sleep(0.02)
        os.kill(subs[2].pid, signal.SIGCONT)
        os.kill(worker, signal.SIGCONT)
        results = []
        marker = total
        for proc in subs:
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                conn.publish("flood", [marker, "end"])  # until it has one: its queue may be full
                marker += 1
                conn.flush(5.0)
                time.sleep(0.2)
            out, _ = proc.communicate(timeout=10)
            results.append(json.loads(out.strip().splitlines()[-1]))
        deadline = time.monotonic() + 30
        while conn.call("wsub", "count")[5] <= total and time.monotonic() < deadline:
            conn.publish("flood", [marker, "end"])
            marker += 1
            conn.flush(5.0)
            time.sleep(0.2)
        wait_until(lambda: (c := conn.call("wsub", "count"))[5] == marker
                   and c[0] + c[3] == marker, 30, "the worker to take or count every event")
        received, out_of_order, undecodable, lost, gaps, _ = conn.call("wsub", "count")
    finally:
        for proc in subs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait()
        node.stop()
    grown = peak - base
    assert grown < FLOOD_NODE_BOUND, f"the node grew by {grown >> 20} MiB (stopped subscriber)"
    for result in results[:2]:  # healthy and slow-but-live: everything, nothing lost
        assert result["received"] == total and result["lost"] == result["gaps"] == 0, result
        assert result["disorder"] == result["dropped"] == 0, result
    stopped = results[2]
    assert stopped["lost"] > 0 and stopped["disorder"] == stopped["dropped"] == 0, stopped
    # every event before its end marker either received or counted lost, exactly where
    assert stopped["received"] + stopped["lost"] == stopped["last"], stopped
    assert stopped["gaps"] == stopped["lost"], stopped
    assert lost > 0 and out_of_order == undecodable == 0 and gaps == lost, (received, lost)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "a.b"]), st.integers(1, 600),
                          st.booleans()), max_size=60),
       st.integers(1, 3))
def test_gap_counter_counts_exactly_the_events_dropped_before_a_later_message(
        messages: list[tuple[str, int, bool]], max_topics: int) -> None:
    """Each message (topic, events, delivered?) stamped as the forwarder does; a subscriber
    that gets the delivered ones counts as lost exactly the events of the dropped messages
    that a later delivered message of their topic reveals (a tail loss shows with the
    topic's next message), unless its topic was evicted from its table (a new baseline)."""
    gaps = GapCounter(max_topics)
    sent: dict[str, int] = {}
    hidden: dict[str, int] = {}  # dropped events since the topic's last delivered message
    tracked: list[str] = []  # the counter's table, oldest first
    expected = 0
    for topic, n, delivered in messages:
        seq = sent.get(topic, 0)
        sent[topic] = seq + n
        if not delivered:
            hidden[topic] = hidden.get(topic, 0) + n
            continue
        if topic in tracked:
            expected += hidden.get(topic, 0)
        else:
            if len(tracked) >= max_topics:
                tracked.pop(0)
            tracked.append(topic)
        hidden[topic] = 0
        gaps.seen(topic, 7, seq, n)
    assert gaps.lost == expected and gaps.resets == 0


def test_gap_counter_takes_a_backward_sequence_or_a_new_epoch_as_a_reset() -> None:
    gaps = GapCounter()
    assert gaps.seen("t", 1, 0, 5) == 0  # baseline
    assert gaps.seen("t", 1, 8, 2) == 3  # 5, 6, 7 lost
    assert gaps.seen("t", 1, 0, 1) == 0 and gaps.resets == 1  # the node evicted the topic
    assert gaps.seen("t", 2, 40, 1) == 0 and gaps.resets == 2  # the node restarted
    assert gaps.seen("t", 2, 43, 1) == 2
    gaps.forget("t")  # unsubscribed: the next message is a new baseline
    assert gaps.seen("t", 2, 90, 1) == 0 and gaps.lost == 5


def test_the_node_stamps_each_topic_with_its_events_sent_before(node_factory) -> None:
    node = node_factory(APP)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"stamp.")
        sub.connect(events_address(node.data_dir))
        await_hello(sub, lambda frames: None)
        node.conn.publish_many("stamp.a", [1, 2, 3])
        node.conn.flush(5.0)
        node.conn.publish("stamp.b", 4)
        node.conn.flush(5.0)
        node.conn.publish("stamp.a", 5)
        got = []
        while len(got) < 3:
            assert sub.poll(10_000), "no message within 10 s"
            frames = sub.recv_multipart()
            assert len(frames) == 3 and frames[2][0] == WIRE_VERSION
            got.append((frames[0], read_stamp(frames[2])))
    finally:
        sub.close(0)
        ctx.term()
    epoch = got[0][1][0]  # type: ignore[index]
    assert got == [(b"stamp.a", (epoch, 0)), (b"stamp.b", (epoch, 0)), (b"stamp.a", (epoch, 3))]


def test_a_subscriber_drops_and_counts_messages_without_a_stamp_of_its_wire_version(
        tmp_path) -> None:
    """Validated at the edge: a message from a node of another wire version (no stamp, or
    another version's) is dropped and counted, and the next good one is delivered."""
    ctx = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)  # a stand-in node: only its events.sock
    xpub.bind(events_address(tmp_path))
    ready = threading.Event()
    good = STAMP.pack(WIRE_VERSION, 1, 0)

    def node() -> None:
        while xpub.poll(10_000):
            msg = xpub.recv()
            if msg[1:].startswith(b"_hello."):
                xpub.send_multipart([msg[1:], b""])
                break
        ready.wait(10)
        xpub.send_multipart([b"t", msgspec.msgpack.encode(["no stamp"])])
        xpub.send_multipart([b"t", msgspec.msgpack.encode(["v2"]), b"\x02" + good[1:]])
        xpub.send_multipart([b"t", msgspec.msgpack.encode(["short"]), good[:-1]])
        xpub.send_multipart([b"t", msgspec.msgpack.encode(["fine"]), good])

    thread = threading.Thread(target=node, daemon=True)
    thread.start()
    try:
        with p.Subscription(tmp_path, "t") as sub:
            ready.set()
            assert next_event(sub) == p.Event("t", "fine")
            assert (sub.dropped, sub.lost) == (3, 0)
    finally:
        thread.join(10)
        xpub.close(0)
        ctx.term()
