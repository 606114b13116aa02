"""Distribution benchmarks (issue: distributed processes). Loopback only: two nodes here.

Run: ``python bench/bench_remote.py [--calls N]``. Starts two real nodes in one cluster,
each running ``bench.apps:messaging`` (an ``echo`` worker and a ``driver`` that calls in a
loop), and prints, from one run:

* remote call round trip, worker to worker: node a's driver calls node b's echo on its
  direct route (the driver's DEALER, CURVE over TCP loopback, straight to the echo
  process's own listener, read by the echo's loop, and back). The warm-up's 500 calls
  switch the pair off the node path (it switches after 16 messages,
  ``prismatic._pair_switch.SWITCH_AFTER``); the bench checks node a counted the switch
  (``prismatic_cluster_direct_switched``) and stops if not;
* beside it, interleaved with it in five rounds (the same machine load for all three), a
  local call (a's driver calls a's echo, the direct AF_UNIX path), and a bare pyzmq
  DEALER -> ROUTER echo over TCP loopback with CURVE (the mesh bench's baseline);
* beside those, the same bare echo with one ``AF_UNIX`` hop added: its server hands each
  message to a second process and sends back what that process answers (no Python of
  ours on the way: the floor of a path with a hop between the ROUTER and the callee);
* remote calls per second with 64 in flight, from a client of node a to node b's echo
  (``send_request`` / ``receive_response``; its first 16 calls switch it to its route),
  beside the bare pyzmq echo's messages per second with 64 in flight, interleaved in three
  rounds (the median of each is printed, and the range): on a shared machine both move
  with its load, the bare figure saying how much of the target the machine allows then;
* cluster pub/sub: events per second published on a and received by a subscriber on b,
  one event per publish and 100 per ``publish_many``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sys

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prismatic as p  # noqa: E402
from bench._harness import pct, print_table  # noqa: E402
from bench.bench_mesh import Node, all_alive, bare_curve_rtt, open_curve_echo, wait  # noqa: E402
from prismatic.mesh._secret import init_secret  # noqa: E402
import bench.bench_mesh as bench_mesh  # noqa: E402

bench_mesh.APP = "bench.apps:messaging"


_HOP_ECHO = """
import os, socket, sys, time, zmq
pub, sec = sys.argv[1].encode(), sys.argv[2].encode()
ctx = zmq.Context(); r = ctx.socket(zmq.ROUTER)
r.curve_server = True; r.curve_publickey = pub; r.curve_secretkey = sec
port = r.bind_to_random_port("tcp://127.0.0.1")
a, b = socket.socketpair()
if os.fork() == 0:
    a.close()
    while True:
        data = b.recv(65536)
        if not data:
            os._exit(0)
        b.send(data)
b.close()
print(port, flush=True)
while True:
    ident, msg = r.recv_multipart()
    a.send(msg)
    end = time.perf_counter() + 50e-6  # as the receiving thread, poll before sleeping
    a.setblocking(False)
    while True:
        try:
            msg = a.recv(65536)
            break
        except BlockingIOError:
            if time.perf_counter() > end:
                a.setblocking(True)
                msg = a.recv(65536)
                break
    a.setblocking(True)
    r.send_multipart([ident, msg])
"""


def hop_rtt(n: int) -> list[float]:
    """bare_curve_rtt's client against an echo that passes each message through a second
    process over AF_UNIX."""
    return bare_curve_rtt(n, _HOP_ECHO)


def us(x: float) -> str:
    return f"{x * 1e6:.0f} µs"


def driver_rtts(conn: p.NodeConnection, dest: Any, n: int) -> list[float]:
    out: list[float] = []
    while len(out) < n:
        out += conn.call("driver", ["run", dest, min(2000, n - len(out)), "x" * 64],
                         timeout=120)
    return out


def in_flight(conn: p.NodeConnection, dest: p.Pid, total: int, window: int = 64) -> float:
    t0 = time.perf_counter()
    pending = [conn.send_request(dest, "x" * 64) for _ in range(window)]
    done = 0
    while done < total:
        req = pending.pop(0)
        conn.receive_response(req, timeout=30)
        done += 1
        if done + len(pending) < total:
            pending.append(conn.send_request(dest, "x" * 64))
    return total / (time.perf_counter() - t0)


def bare_in_flight(total: int, window: int = 64) -> float:
    """The bare pyzmq echo (bench_mesh's, CURVE over TCP loopback) with ``window`` messages
    in flight from one DEALER: messages per second."""
    msg = b"x" * 100  # about a remote call's batch on the wire
    with open_curve_echo() as d:
        for _ in range(200):  # the handshake, warm-up
            d.send(msg)
            d.recv()
        t0 = time.perf_counter()
        for _ in range(window):
            d.send(msg)
        sent, done = window, 0
        while done < total:
            d.recv()
            done += 1
            if sent < total:
                d.send(msg)
                sent += 1
        return total / (time.perf_counter() - t0)


def pubsub_rate(pub: p.NodeConnection, sub_conn: p.NodeConnection, total: int,
                batch: int) -> float:
    with sub_conn.subscribe("bench.#") as sub:
        t0 = time.perf_counter()
        for i in range(0, total, batch):
            if batch == 1:
                pub.publish("bench.x", i)
            else:
                pub.publish_many("bench.x", list(range(i, i + batch)))
        pub.flush()
        got = 0
        while got < total:
            events = sub.next_batch(10)
            if not events:
                raise SystemExit(f"bench: pub/sub stalled at {got} of {total}")
            got += len(events)
        return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--events", type=int, default=50_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        secret = init_secret(tmp / "cluster.secret")
        a = Node(tmp, "a", secret, ["--listen", "127.0.0.1:0"])
        seed = next(iter(a.members().values())).address
        b = Node(tmp, "b", secret, ["--join", seed])
        nodes = [a, b]
        try:
            wait(lambda: all_alive(nodes, 2), 30, "the two nodes to form a cluster")
            ca, cb = a.connect(), b.connect()
            echo_a = [a.name, ca.whereis("echo").ospid]  # type: ignore[union-attr]
            echo_b = [b.name, cb.whereis("echo").ospid]  # type: ignore[union-attr]
            driver_rtts(ca, echo_b, 500)  # warm up both paths (the remote pair switches)
            driver_rtts(ca, echo_a, 500)
            switched = a.counters().get("prismatic_cluster_direct_switched_total", 0)
            if switched < 1:
                raise SystemExit("bench: the driver's pair did not switch to its direct route")
            remote, local, bare, hop = [], [], [], []
            for _ in range(5):  # interleaved: the same machine load for all four
                remote += driver_rtts(ca, echo_b, args.calls // 5)
                local += driver_rtts(ca, echo_a, args.calls // 5)
                bare += bare_curve_rtt(args.calls // 5)
                hop += hop_rtt(args.calls // 5)
            rates, bare_rates = [], []
            for _ in range(3):  # interleaved, as the round trips
                rates.append(in_flight(ca, p.Pid(*echo_b), 20_000))
                bare_rates.append(bare_in_flight(20_000))
            ev1 = pubsub_rate(ca, cb, args.events // 5, 1)
            ev100 = pubsub_rate(ca, cb, args.events, 100)
        finally:
            for n in nodes:
                n.stop()
    print_table(["figure", "p50", "p99", "note"], [
        ("remote call, worker a -> worker b", us(pct(remote, 0.5)), us(pct(remote, 0.99)),
         f"{len(remote)} calls, 64-byte payload"),
        ("local call, worker a -> worker a", us(pct(local, 0.5)), us(pct(local, 0.99)),
         "same run, interleaved"),
        ("bare pyzmq DEALER->ROUTER, TCP+CURVE", us(pct(bare, 0.5)), us(pct(bare, 0.99)),
         "baseline (subprocess echo), interleaved"),
        ("bare, plus one AF_UNIX hop to a process", us(pct(hop, 0.5)), us(pct(hop, 0.99)),
         f"{pct(hop, 0.5) / pct(bare, 0.5):.2f}x bare: the floor of a hop, interleaved"),
        ("remote / bare (p50)", f"{pct(remote, 0.5) / pct(bare, 0.5):.2f}x", "",
         "target <= 1.5x"),
    ])
    print()
    print_table(["throughput", "value", "note"], [
        ("remote calls/s, 64 in flight (client a -> echo b)",
         f"{statistics.median(rates):,.0f}/s",
         f"target >= 50,000/s; median of 3, {min(rates):,.0f}-{max(rates):,.0f}"),
        ("bare pyzmq DEALER->ROUTER, 64 in flight", f"{statistics.median(bare_rates):,.0f}/s",
         f"median of 3, {min(bare_rates):,.0f}-{max(bare_rates):,.0f}, interleaved"),
        ("cluster pub/sub a -> subscriber on b, 1 per publish", f"{ev1:,.0f} events/s", ""),
        ("cluster pub/sub a -> subscriber on b, 100 per publish", f"{ev100:,.0f} events/s", ""),
    ])


if __name__ == "__main__":
    main()
