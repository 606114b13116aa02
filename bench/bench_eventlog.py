"""Event log throughput: durable acknowledged appends/s and replay records/s, with raw
py-lmdb baselines measured in the same run. Usage: python bench/bench_eventlog.py [--quick]
"""

from __future__ import annotations

import argparse
import collections
import gc
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lmdb  # noqa: E402
import msgspec  # noqa: E402

import prismatic as p  # noqa: E402
from bench._harness import print_table, start_node, stop_node  # noqa: E402
from prismatic.eventlog import EventDraft, open_event_log  # noqa: E402

PAYLOAD = {"child": "worker1", "reason": "normal", "restarts": 3, "pid": 12345}
TOPICS = [f"supervisor.root.worker{i}.restarted" for i in range(8)]


def emit(log, count: int, batch: int, window: int, ident: int) -> None:
    """Keep ``window`` submit_many calls of ``batch`` events in flight; wait for every ack."""
    in_flight: collections.deque = collections.deque()
    source = f"node@host/{ident}"
    for start in range(0, count, batch):
        drafts = [EventDraft(TOPICS[i & 7], PAYLOAD, source) for i in range(start, start + batch)]
        in_flight.append(log.submit_many(drafts))
        if len(in_flight) >= window:
            in_flight.popleft().result()
    for future in in_flight:
        future.result()


def timed_threads(jobs: list[tuple[Any, tuple]]) -> float:
    """Run each ``(target, args)`` in a thread of its own; seconds until all are done."""
    threads = [threading.Thread(target=target, args=args) for target, args in jobs]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def bench_appends(root: Path, emitters: int, total: int, batch: int) -> float:
    path = root / f"appends-{emitters}-{batch}"
    with open_event_log(str(path), node="node@host") as log:
        per = total // emitters
        elapsed = timed_threads([(emit, (log, per, batch, 8, i)) for i in range(emitters)])
        assert log.last_seq == per * emitters
    return per * emitters / elapsed


def bench_single_submits(root: Path, total: int) -> float:
    """One emitter, one future per event (submit), 2000 in flight."""
    with open_event_log(str(root / "single"), node="node@host") as log:
        in_flight: collections.deque = collections.deque()
        start = time.perf_counter()
        for i in range(total):
            in_flight.append(log.submit(TOPICS[i & 7], PAYLOAD, source="node@host/1"))
            if len(in_flight) >= 2000:
                in_flight.popleft().result()
        for future in in_flight:
            future.result()
        return total / (time.perf_counter() - start)


def bench_node_emits(root: Path, emitters: int, total: int, batch: int) -> float:
    """Through a real node: ``emitters`` clients, each its own connection to the node's hub,
    each ``emit_many`` acknowledged only once synced (what a worker's emit does)."""
    data = root / f"node-{emitters}-{batch}"
    proc = start_node("bench.apps:empty", data)
    try:
        conns = [p.connect(data) for _ in range(emitters)]
        per = total // emitters
        payloads = [PAYLOAD] * batch

        def run(conn: p.NodeConnection) -> None:
            for _ in range(per // batch):
                conn.emit_many("bench.emit", payloads)

        for conn in conns:
            conn.emit("bench.warmup", PAYLOAD)
        elapsed = timed_threads([(run, (c,)) for c in conns])
        for conn in conns:
            conn.close()
        return emitters * (per // batch) * batch / elapsed
    finally:
        stop_node(proc)


def bench_replay(root: Path, total: int, raw_payloads: bool = False) -> float:
    path = root / "replay"
    if not path.exists():
        with open_event_log(str(path), node="node@host") as log:
            emit(log, total, 5000, 4, 0)
    gc.collect()  # what earlier rows left behind is not replay's to collect
    with open_event_log(str(path), node="node@host", readonly=True) as log:
        start = time.perf_counter()
        count = log.replay(lambda record: None, raw_payloads=raw_payloads)
        elapsed = time.perf_counter() - start
        assert count == total
    return total / elapsed


def raw_scan(root: Path, decode: bool) -> float:
    """Baseline for replay: py-lmdb's cursor over the same log's records, decoding each with
    msgspec into the same record type (or not at all)."""
    from prismatic.eventlog import EventRecord

    decoder = msgspec.msgpack.Decoder(EventRecord).decode
    env = lmdb.open(str(root / "replay"), readonly=True, lock=False, max_dbs=8)
    try:
        events = env.open_db(b"events", create=False)
        gc.collect()
        start = time.perf_counter()
        with env.begin(db=events) as txn:
            values = txn.cursor().iternext(keys=False)
            count = sum(1 for _ in map(decoder, values)) if decode else sum(1 for _ in values)
        return count / (time.perf_counter() - start)
    finally:
        env.close()


def raw_lmdb(root: Path, total: int, per_txn: int, sync: bool) -> float:
    """Baseline: encode each record with msgspec, put(append=True), commit every per_txn."""
    path = root / f"raw-{per_txn}-{sync}"
    env = lmdb.open(str(path), map_size=4 << 30, sync=sync, metasync=sync)
    encode = msgspec.msgpack.Encoder().encode
    start = time.perf_counter()
    seq = 0
    while seq < total:
        with env.begin(write=True) as txn:
            for _ in range(per_txn):
                seq += 1
                record = (1, seq, time.time_ns(), 0, "node@host", "node@host/1",
                          TOPICS[seq & 7], None, PAYLOAD)  # fmt: skip
                txn.put(seq.to_bytes(8, "big"), encode(record), append=True)
    elapsed = time.perf_counter() - start
    env.close()
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs (noisier)")
    args = parser.parse_args()
    n = 100_000 if args.quick else 400_000
    root = Path(tempfile.mkdtemp(prefix="bench-eventlog-"))
    try:
        # Replay first: what the write rows leave behind in this process is not its cost.
        replay_full = bench_replay(root, n)
        replay_raw = bench_replay(root, n, raw_payloads=True)
        scan_decode, scan_only = raw_scan(root, True), raw_scan(root, False)
        raw_one = raw_lmdb(root, 1_000 if args.quick else 3_000, 1, True)
        raw_batched_sync = raw_lmdb(root, n, 1000, True)
        raw_nosync = raw_lmdb(root, n, 1000, False)
        rows = [
            ("acked appends/s, 1 emitter, submit_many x1000", bench_appends(root, 1, n, 1000),
             200_000, f"raw lmdb 1 put/txn synced: {raw_one:,.0f}"),
            ("acked appends/s, 8 emitters, submit_many x500", bench_appends(root, 8, n, 500),
             200_000, f"raw lmdb 1000/txn synced: {raw_batched_sync:,.0f}"),
            ("acked appends/s, 1 emitter, submit() per event", bench_single_submits(root, n // 4),
             None, f"raw lmdb 1000/txn sync off: {raw_nosync:,.0f}"),
            ("acked emits/s via a node, 1 client, emit_many x1000",
             bench_node_emits(root, 1, n // 2, 1000), None, "(the rows above, in-process)"),
            ("acked emits/s via a node, 8 clients, emit_many x500",
             bench_node_emits(root, 8, n // 2, 500), None, "(the rows above, in-process)"),
            ("replay records/s (scan + decode)", replay_full, None,
             f"raw lmdb cursor + msgspec decode: {scan_decode:,.0f}"),
            ("replay records/s (scan + decode, payloads raw)", replay_raw, 1_000_000,
             f"raw lmdb cursor scan, no decode: {scan_only:,.0f}"),
        ]  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(("figure", "value", "target", "baseline (same run)"),
                [(figure, f"{value:,.0f}", f">= {target:,}" if target else "-", baseline)
                 for figure, value, target, baseline in rows])


if __name__ == "__main__":
    main()
