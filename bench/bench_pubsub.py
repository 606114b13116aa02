"""Pub/sub throughput: events/s from one publisher to 1 and to 10 subscribers, unbatched and
batched, each beside multiprocessing.Pipe moving the same events in the same run.

Run: ``python bench/bench_pubsub.py [--quick]``. Starts a real node (``bench.apps:empty``).

* Publisher: this process, through ``prismatic.connect(...)``. Unbatched: one
  ``publish(topic, payload)`` call per event. Batched: ``publish_many(topic, payloads)``
  with 100 events per call. Then ``publish`` of an end marker.
* Subscribers: separate processes (spawned), each ``Subscription`` on the run's pattern;
  each decodes every event (msgpack -> ``Event``) and checks its sequence number, so a
  lost or reordered event is counted. Rate = events / (last subscriber's last event - first
  publish), both on CLOCK_MONOTONIC (system-wide on Linux).
* Baseline: ``multiprocessing.Pipe`` from this process to the same number of receiver
  processes, the same events (pickled): unbatched one ``send`` per event per receiver,
  batched one ``send`` of a list of 100 events per receiver.

Payload: ``[seq, 56-char str]``, 62 bytes of msgpack. Target (issue): >= 300k events/s
unbatched and >= 1M events/s batched to one subscriber.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import prismatic as p  # noqa: E402
from bench._harness import print_table, start_node, stop_node  # noqa: E402

PAD = "x" * 56
BATCH = 100
IDLE_TIMEOUT_S = 15.0


def subscriber(data: str, pattern: str, end_topic: str, ready, results,
               batched: bool = False) -> None:
    """Count and check every event until the end marker; report (count, lost, last time).
    Batched runs take what has arrived at once (``next_batch``), as a Pipe receiver of
    batches does."""
    received = lost = 0
    expected = 0
    last = 0.0
    with p.open_subscription(data, pattern) as sub:
        ready.put(os.getpid())
        done = False
        while not done:
            events = sub.next_batch(IDLE_TIMEOUT_S) if batched else [sub.next(IDLE_TIMEOUT_S)]
            if not events or events[0] is None:
                break
            for event in events:
                if event.topic == end_topic:
                    lost += event.payload - received
                    done = True
                    break
                seq = event.payload[0]
                if seq != expected:  # a gap (or a reordering) counts as lost
                    lost += abs(seq - expected)
                expected = seq + 1
                received += 1
            last = time.monotonic()
    results.put((received, lost, last))


def pipe_receiver(conn, batched: bool, results) -> None:
    received = lost = expected = 0
    last = 0.0
    while True:
        msg = conn.recv()
        if msg is None:
            break
        for seq, _pad in (msg if batched else (msg,)):
            if seq != expected:
                lost += abs(seq - expected)
            expected = seq + 1
            received += 1
        last = time.monotonic()
    results.put((received, lost, last))


def run_pubsub(ctx: mp.context.BaseContext, conn: p.NodeConnection, data: Path, run: int,
               subscribers: int, n: int, batched: bool) -> tuple[float, int]:
    topic, end = f"bench.r{run}.data", f"bench.r{run}.end"
    ready, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=subscriber, args=(str(data), f"bench.r{run}.#", end, ready,
                                                  results, batched))
             for _ in range(subscribers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=30)  # every subscription is in effect (handshake done)
    start = time.monotonic()
    if batched:
        for base in range(0, n, BATCH):
            conn.publish_many(topic, [[i, PAD] for i in range(base, min(base + BATCH, n))])
    else:
        for i in range(n):
            conn.publish(topic, [i, PAD])
    conn.publish(end, n)
    conn.flush()
    outcome = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(10)
    lost = sum(o[1] for o in outcome) + sum(n - o[0] for o in outcome)
    return n / (max(o[2] for o in outcome) - start), lost


def run_pipe(ctx: mp.context.BaseContext, receivers: int, n: int,
             batched: bool) -> tuple[float, int]:
    results = ctx.Queue()
    pipes = [ctx.Pipe(duplex=False) for _ in range(receivers)]
    procs = [ctx.Process(target=pipe_receiver, args=(r, batched, results)) for r, _ in pipes]
    for proc in procs:
        proc.start()
    senders = [s for _, s in pipes]
    start = time.monotonic()
    if batched:
        for base in range(0, n, BATCH):
            batch = [(i, PAD) for i in range(base, min(base + BATCH, n))]
            for s in senders:
                s.send(batch)
    else:
        for i in range(n):
            event = (i, PAD)
            for s in senders:
                s.send(event)
    for s in senders:
        s.send(None)
    outcome = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(10)
    lost = sum(o[1] for o in outcome) + sum(n - o[0] for o in outcome)
    return n / (max(o[2] for o in outcome) - start), lost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (noisier)")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    ctx = mp.get_context("spawn")  # no ZeroMQ context crosses a fork
    root = Path(tempfile.mkdtemp(prefix="bench-pubsub-"))
    node = start_node("bench.apps:empty", root / "d")
    rows = []
    try:
        with p.connect(root / "d") as conn:
            cases = [  # (figure, subscribers, events, batched, target)
                ("1 publisher -> 1 subscriber, unbatched", 1, 600_000, False, 300_000),
                ("1 publisher -> 1 subscriber, batched x100", 1, 2_000_000, True, 1_000_000),
                ("1 publisher -> 10 subscribers, unbatched", 10, 200_000, False, None),
                ("1 publisher -> 10 subscribers, batched x100", 10, 400_000, True, None),
            ]
            for run, (figure, subs, n, batched, target) in enumerate(cases):
                n = int(n * scale)
                rate, lost = run_pubsub(ctx, conn, root / "d", run, subs, n, batched)
                pipe_rate, pipe_lost = run_pipe(ctx, subs, n, batched)
                rows.append((f"{figure} (events/s)", rate, lost, target,
                             f"mp.Pipe same events: {pipe_rate:,.0f} (lost {pipe_lost})"))
            forwarded = [line for line in conn.metrics().splitlines()
                         if line.startswith("prismatic_pubsub_")]
    finally:
        stop_node(node)
        shutil.rmtree(root, ignore_errors=True)
    print_table(("figure", "value", "lost", "target", "baseline (same run)"),
                [(figure, f"{value:,.0f}", lost, f">= {target:,}" if target else "-", baseline)
                 for figure, value, lost, target, baseline in rows])
    print("node counters: " + ", ".join(forwarded))


if __name__ == "__main__":
    main()
