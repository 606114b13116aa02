"""Messaging benchmarks (issue: messaging between supervised processes).

Run: ``python bench/bench_messaging.py [--calls N]``. Starts one real node running an ``Echo``
worker and a ``Driver`` worker, prints one table: figure, value, target, and the
``multiprocessing.Pipe`` baseline moving the same messages in this same run.

* call round trip, 1 in flight: a client outside the tree (``NodeConnection.call``) and a
  worker calling another worker (``Worker.call``), both to ``Echo`` by registered name, p50
  and p99. Baseline: a Pipe round trip to a child process that echoes (send/recv, pickled).
* call throughput, 64 in flight: ``send_request`` keeps 64 calls outstanding,
  ``receive_response`` collects them in order. Baseline: a Pipe with 64 messages in flight.
* cast throughput: N casts, then one call that returns Echo's cast count (all were handled).
  Baseline: N one-way Pipe sends, then one acknowledged message.

The message is the same small dict everywhere: ``{"op": "get", "key": "user:42", "n": 7}``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prismatic as p  # noqa: E402
from bench._harness import pct, print_table, start_node, stop_node  # noqa: E402

MSG = {"op": "get", "key": "user:42", "n": 7}
WINDOW = 64


# ---- the multiprocessing.Pipe baseline -----------------------------------------------------------

def _pipe_echo(conn) -> None:
    while True:
        msg = conn.recv()
        if msg is None:
            return
        if msg == "count":
            conn.send(_pipe_echo.count)  # type: ignore[attr-defined]
        elif isinstance(msg, tuple):  # one-way: count only
            _pipe_echo.count += 1  # type: ignore[attr-defined]
        else:
            conn.send(msg)


def pipe_baseline(n: int) -> dict[str, float]:
    parent, child = mp.Pipe()
    _pipe_echo.count = 0  # type: ignore[attr-defined]
    proc = mp.get_context("fork").Process(target=_pipe_echo, args=(child,))
    proc.start()
    for _ in range(1000):
        parent.send(MSG)
        parent.recv()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        parent.send(MSG)
        parent.recv()
        lat.append(time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(WINDOW):
        parent.send(MSG)
    for _ in range(n - WINDOW):
        parent.recv()
        parent.send(MSG)
    for _ in range(WINDOW):
        parent.recv()
    window_rate = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(n):
        parent.send(("one-way", MSG))
    parent.send("count")
    assert parent.recv() == n
    oneway_rate = n / (time.perf_counter() - t)
    parent.send(None)
    proc.join()
    return {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "window": window_rate,
            "oneway": oneway_rate}


# ---- Prismatic ----------------------------------------------------------------------------------

def prismatic_figures(conn: p.NodeConnection, n: int) -> dict[str, float]:
    for _ in range(1000):
        conn.call("echo", MSG)
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        conn.call("echo", MSG)
        lat.append(time.perf_counter() - t)
    w2w = conn.call("driver", ["calls", "echo", n, MSG], timeout=120)
    t = time.perf_counter()
    inflight = [conn.send_request("echo", MSG) for _ in range(WINDOW)]
    for _ in range(n - WINDOW):
        conn.receive_response(inflight.pop(0))
        inflight.append(conn.send_request("echo", MSG))
    for req in inflight:
        conn.receive_response(req)
    window_rate = n / (time.perf_counter() - t)
    before = conn.call("echo", "casts")
    t = time.perf_counter()
    for _ in range(n):
        conn.cast("echo", MSG)
    done = conn.call("echo", "casts", timeout=60)
    cast_rate = n / (time.perf_counter() - t)
    assert done - before == n, (done, before, n)
    return {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "w2w_p50": pct(w2w, 0.5),
            "w2w_p99": pct(w2w, 0.99), "window": window_rate, "cast": cast_rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    args = ap.parse_args()
    n = args.calls
    base = pipe_baseline(n)
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_node("bench.apps:messaging", Path(tmp) / "d")
        try:
            with p.connect(Path(tmp) / "d") as conn:
                got = prismatic_figures(conn, n)
        finally:
            stop_node(proc)
    us = 1e6
    rows = [
        ("call round trip p50, client -> worker (us)", f"{got['p50'] * us:.1f}", "<= 40",
         f"Pipe p50 {base['p50'] * us:.1f}"),
        ("call round trip p99, client -> worker (us)", f"{got['p99'] * us:.1f}", "-",
         f"Pipe p99 {base['p99'] * us:.1f}"),
        ("call round trip p50, worker -> worker (us)", f"{got['w2w_p50'] * us:.1f}", "<= 40",
         f"Pipe p50 {base['p50'] * us:.1f}"),
        ("call round trip p99, worker -> worker (us)", f"{got['w2w_p99'] * us:.1f}", "-",
         f"Pipe p99 {base['p99'] * us:.1f}"),
        (f"calls/s, {WINDOW} in flight", f"{got['window']:,.0f}", ">= 100,000",
         f"Pipe {base['window']:,.0f}"),
        ("casts/s (all handled)", f"{got['cast']:,.0f}", "-",
         f"Pipe one-way {base['oneway']:,.0f}"),
    ]
    print(f"messaging bench: {n:,} messages per figure, message {MSG}")
    print_table(("figure", "value", "target", "baseline (same run)"), rows)


if __name__ == "__main__":
    main()
