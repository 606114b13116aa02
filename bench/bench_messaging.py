"""Messaging benchmarks (issue: messaging between supervised processes).

Run: ``python bench/bench_messaging.py [--calls N] [--block N]``. Starts one real node running
an ``Echo`` worker and a ``Driver`` worker, prints one table: figure, value, target, and the
``multiprocessing.Pipe`` baseline moving the same messages in this same run.

On a VM a round trip of a few tens of microseconds is mostly the wake-up of an idle vCPU, and
how idle the vCPUs are depends on what else runs: a Pipe timed alone before the node starts
and a Prismatic call timed after it are not timed under the same conditions. So every side
of a comparison is timed in **alternating blocks** (``--block`` messages each, the order
rotated every round) while the node runs, and the figures are over all blocks of a side:

* call round trip, 1 in flight: a Pipe echo (send/recv, pickled) to a forked child of this
  process; a client outside the tree (``NodeConnection.call``) to ``Echo`` by registered
  name; a worker calling another worker (``Worker.call``, timed inside ``Driver``). p50, p99
  and the ratio of the p50s to the Pipe's.
* call throughput, 64 in flight: ``send_request`` keeps 64 calls outstanding,
  ``receive_response`` collects them in order; the Pipe keeps 64 messages in flight.
* cast throughput (one block, after the others): N casts, then one call that returns Echo's
  cast count (all were handled). Baseline: N one-way Pipe sends, then one acknowledged message.

The old way is printed too for comparison: the Pipe round trip timed alone, before the node
started ("Pipe alone, before the node").

The message is the same small dict everywhere: ``{"op": "get", "key": "user:42", "n": 7}``.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prismatic as p  # noqa: E402
from bench._harness import pct, print_table, start_node, stop_node  # noqa: E402

MSG = {"op": "get", "key": "user:42", "n": 7}
WINDOW = 64


# ---- the multiprocessing.Pipe baseline -----------------------------------------------------------

def _pipe_echo(conn) -> None:
    count = 0
    while True:
        msg = conn.recv()
        if msg is None:
            return
        if msg == "count":
            conn.send(count)
        elif isinstance(msg, tuple):  # one-way: count only
            count += 1
        else:
            conn.send(msg)


class PipeEcho:
    """A forked child that echoes what this process sends it on a ``multiprocessing.Pipe``."""

    def __init__(self) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("fork").Process(target=_pipe_echo, args=(child,))
        self.proc.start()

    def round_trips(self, n: int) -> list[float]:
        conn, lat = self.conn, []
        for _ in range(n):
            t = time.perf_counter()
            conn.send(MSG)
            conn.recv()
            lat.append(time.perf_counter() - t)
        return lat

    def window(self, n: int) -> float:
        conn = self.conn
        t = time.perf_counter()
        for _ in range(WINDOW):
            conn.send(MSG)
        for _ in range(n - WINDOW):
            conn.recv()
            conn.send(MSG)
        for _ in range(WINDOW):
            conn.recv()
        return time.perf_counter() - t

    def oneway(self, n: int) -> float:
        conn = self.conn
        t = time.perf_counter()
        for _ in range(n):
            conn.send(("one-way", MSG))
        conn.send("count")
        conn.recv()
        return time.perf_counter() - t

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join()


# ---- Prismatic ----------------------------------------------------------------------------------

def client_round_trips(conn: p.NodeConnection, n: int) -> list[float]:
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        conn.call("echo", MSG)
        lat.append(time.perf_counter() - t)
    return lat


def worker_round_trips(conn: p.NodeConnection, n: int) -> list[float]:
    return conn.call("driver", ["calls", "echo", n, MSG], timeout=120)


def client_window(conn: p.NodeConnection, n: int) -> float:
    t = time.perf_counter()
    inflight = collections.deque(conn.send_request("echo", MSG) for _ in range(WINDOW))
    for _ in range(n - WINDOW):
        conn.receive_response(inflight.popleft())
        inflight.append(conn.send_request("echo", MSG))
    for req in inflight:
        conn.receive_response(req)
    return time.perf_counter() - t


def client_casts(conn: p.NodeConnection, n: int) -> float:
    before = conn.call("echo", "casts")
    t = time.perf_counter()
    for _ in range(n):
        conn.cast("echo", MSG)
    done = conn.call("echo", "casts", timeout=60)
    elapsed = time.perf_counter() - t
    assert done - before == n, (done, before, n)
    return elapsed


def alternate(sides: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """Run each side once per round, the order rotated every round; each side's results."""
    names = list(sides)
    got: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            got[name].append(sides[name]())
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000, help="messages per side and figure")
    ap.add_argument("--block", type=int, default=600, help="round trips per alternating block")
    args = ap.parse_args()
    n, block = args.calls, args.block
    rounds = max(1, n // block)
    pipe = PipeEcho()
    try:
        pipe.round_trips(1000)
        alone = pipe.round_trips(n)  # the old way: before the node starts
        with tempfile.TemporaryDirectory() as tmp:
            proc = start_node("bench.apps:messaging", Path(tmp) / "d")
            try:
                with p.connect(Path(tmp) / "d") as conn:
                    client_round_trips(conn, 1000)
                    worker_round_trips(conn, 1000)
                    rt = alternate({"pipe": lambda: pipe.round_trips(block),
                                    "client": lambda: client_round_trips(conn, block),
                                    "worker": lambda: worker_round_trips(conn, block)}, rounds)
                    wblock = max(WINDOW * 4, n // 10)
                    win = alternate({"pipe": lambda: pipe.window(wblock),
                                     "client": lambda: client_window(conn, wblock)}, 10)
                    cast = client_casts(conn, n)
                    oneway = pipe.oneway(n)
            finally:
                stop_node(proc)
    finally:
        pipe.close()
    lat = {side: [x for b in blocks for x in b] for side, blocks in rt.items()}
    us = 1e6
    p50 = {side: pct(xs, 0.5) for side, xs in lat.items()}
    p99 = {side: pct(xs, 0.99) for side, xs in lat.items()}
    rate = {side: 10 * wblock / sum(ts) for side, ts in win.items()}
    rows = [
        ("call round trip p50, client -> worker (us)", f"{p50['client'] * us:.1f}", "<= 40",
         f"Pipe p50 {p50['pipe'] * us:.1f} ({p50['client'] / p50['pipe']:.2f}x Pipe)"),
        ("call round trip p99, client -> worker (us)", f"{p99['client'] * us:.1f}", "-",
         f"Pipe p99 {p99['pipe'] * us:.1f}"),
        ("call round trip p50, worker -> worker (us)", f"{p50['worker'] * us:.1f}", "<= 40",
         f"Pipe p50 {p50['pipe'] * us:.1f} ({p50['worker'] / p50['pipe']:.2f}x Pipe)"),
        ("call round trip p99, worker -> worker (us)", f"{p99['worker'] * us:.1f}", "-",
         f"Pipe p99 {p99['pipe'] * us:.1f}"),
        ("Pipe round trip p50 / p99, alone before the node (us)",
         f"{pct(alone, 0.5) * us:.1f}", "-", f"p99 {pct(alone, 0.99) * us:.1f} (the old way)"),
        (f"calls/s, {WINDOW} in flight", f"{rate['client']:,.0f}", ">= 100,000",
         f"Pipe {rate['pipe']:,.0f} ({rate['client'] / rate['pipe']:.2f}x Pipe)"),
        ("casts/s (all handled)", f"{n / cast:,.0f}", "-", f"Pipe one-way {n / oneway:,.0f}"),
    ]
    print(f"messaging bench: {n:,} messages per figure, message {MSG}; round trips in "
          f"{rounds} alternating blocks of {block} per side, calls in flight in 10 blocks of "
          f"{wblock:,} per side")
    print_table(("figure", "value", "target", "baseline (same run)"), rows)


if __name__ == "__main__":
    main()
