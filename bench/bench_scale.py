"""Scale benchmarks (issue: cost and scale): thousands of processes under one node.

Run: ``python bench/bench_scale.py [--workers N] [--supervisors N] [--calls N]``. Starts real
nodes one after another and prints one table: figure, value, target, and a baseline measured
in this same run.

* A node of ``--workers`` (default 5,000) workers under its root supervisor, each of which
  registers a name and monitors one ``anchor`` worker (so the hub holds that many names and
  monitors): ``status``, ``tree`` and ``count_children`` of the root, p50/p99 over
  ``--calls`` calls each. Baseline: the same calls to a node of 100 such workers.
* The hub's registry and monitors as they grow: a register + unregister pair, a monitor +
  demonitor pair and a ``whereis``, each a round trip from this process to the node's hub
  (p50 over 400), at 100 names/monitors and at ``--workers``. And the same operations on the
  hub's pure state machines (``_registry.decide``, ``_links.decide``) in this process,
  including the exit of a process that holds nothing, which every exit in the tree costs.
  O(1) per operation means the time at N is about the time at 100 (target: <= 1.5x).
* The node's memory outside the workers: the node process's USS and RSS, and the USS of
  every non-worker process of its tree (supervisors, zygotes, spares).
* ``--supervisors`` (default 1,000) supervisors with one idle worker each, beside the same
  number of workers under one supervisor (issue item 1, measured only): processes and total
  USS of each tree, and ``status``/``tree``/``count_children`` of the node with supervisors.

Memory: an idle worker is ~2 MiB private, a supervisor with its zygote and spare ~4.5 MiB
more, so 5,000 workers need ~10 GiB. The bench checks ``MemAvailable`` first and scales a
node down (saying so in the output) if it would leave under 4 GiB free.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import prismatic as p  # noqa: E402
from bench._harness import pct, print_table, start_node  # noqa: E402
from prismatic import _links, _registry  # noqa: E402
from prismatic._address import Pid  # noqa: E402
from prismatic._exit import Normal  # noqa: E402
from prismatic._hubclient import HubClient  # noqa: E402
from prismatic._process import child_pids, process_name, rss_bytes, uss_bytes  # noqa: E402
from prismatic.transports._messages import (  # noqa: E402
    DemonitorReq, MonitorReq, RegisterReq, UnregisterReq, WhereisReq,
)

MiB = 1024 * 1024
WORKER_MIB = 2.5  # per idle worker, with a margin
SUPERVISED_MIB = 7.0  # per supervisor + zygote + spare + worker, with a margin
RESERVE_MIB = 4096


def available_mib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fitting(n: int, each_mib: float, notes: list[str], what: str) -> int:
    room = int((available_mib() - RESERVE_MIB) / each_mib)
    if room < n:
        notes.append(f"{what}: {n:,} asked, {max(room, 100):,} run ({available_mib():,.0f} MiB "
                     f"available, ~{each_mib} MiB each, {RESERVE_MIB} MiB kept free)")
        return max(room, 100)
    return n


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        try:
            kids = child_pids(todo.pop())
        except OSError:
            continue
        out += kids
        todo += kids
    return out


def tree_memory(node_pid: int) -> dict[str, float]:
    """Processes and USS of the node's tree, split into workers and everything else."""
    procs = descendants(node_pid)
    workers = other = 0.0
    n_workers = 0
    for pid in procs:
        name = process_name(pid)
        try:
            uss = uss_bytes(pid)
        except OSError:
            continue
        if name.startswith("prism:") and name not in ("prism:spare", "prism:zygote"):
            workers += uss
            n_workers += 1
        else:
            other += uss
    return {"processes": len(procs) + 1, "workers": n_workers, "worker_uss": workers / MiB,
            "other_uss": other / MiB, "node_uss": uss_bytes(node_pid) / MiB,
            "node_rss": rss_bytes(node_pid) / MiB}


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    fn()
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        lat.append(time.perf_counter() - t)
    return lat


def control_calls(conn: p.NodeConnection, n: int) -> dict[str, list[float]]:
    return {"status": timed(conn.status, n), "tree": timed(conn.tree, n),
            "count_children": timed(lambda: conn.count_children(""), n)}


def hub_ops(node: str, anchor: Pid, n: int) -> dict[str, list[float]]:
    """Round trips to the hub, acting as this process (a process acts only as itself)."""
    hub = HubClient(node)
    me = Pid(node, os.getpid())

    def register_pair() -> None:
        assert not hub.request(lambda ref: RegisterReq(ref, "bench-scale", me)).error
        assert not hub.request(lambda ref: UnregisterReq(ref, "bench-scale", me)).error

    def monitor_pair() -> None:
        mref = hub.request(lambda ref: MonitorReq(ref, me, anchor)).value
        hub.request(lambda ref: DemonitorReq(ref, me, mref))

    try:
        return {"register+unregister": timed(register_pair, n),
                "monitor+demonitor": timed(monitor_pair, n),
                "whereis": timed(lambda: hub.request(lambda ref: WhereisReq(ref, "w0")), n)}
    finally:
        hub.close()


def pure_ops(size: int, n: int) -> dict[str, list[float]]:
    """The hub's state machines holding ``size`` names and monitors, in this process."""
    pids = [Pid("bench", 10_000 + i) for i in range(size)]
    anchor, other, nobody = Pid("bench", 2), Pid("bench", 3), Pid("bench", 4)
    reg = _registry.Registry()
    links = _links.Links()
    for i, pid in enumerate(pids):
        reg, _ = _registry.decide(reg, _registry.Register(f"w{i}", pid))
        links, _ = _links.decide(links, _links.Monitor(pid, anchor, None))

    box = {"registry": reg, "links": links}

    def register() -> None:  # decide updates the state in place: keep the one it returns
        box["registry"], _ = _registry.decide(box["registry"], _registry.Register("new", other))
        box["registry"], _ = _registry.decide(box["registry"], _registry.Exited(other))

    def monitor() -> None:
        box["links"], actions = _links.decide(box["links"], _links.Monitor(other, anchor, None))
        mref = actions[0].mref  # type: ignore[union-attr]
        box["links"], _ = _links.decide(box["links"], _links.Demonitor(other, mref))

    def exit_of_nobody() -> None:
        box["links"], _ = _links.decide(box["links"], _links.ProcessExited(nobody, Normal()))

    return {"registry: register + exit": timed(register, n),
            "links: monitor + demonitor": timed(monitor, n),
            "links: exit of a process with none": timed(exit_of_nobody, n)}


STOP_WAIT_S = 180.0
STOPS: dict[str, str] = {}  # what each node took to stop (SIGTERM -> exited)


@contextlib.contextmanager
def open_node(app: str, workers: int) -> Iterator[tuple[p.NodeConnection, float]]:
    """A node running ``app`` with ``workers`` children, and how long it took to start. Its
    stop is timed into ``STOPS``; one that takes over ``STOP_WAIT_S`` is killed (SIGKILL:
    its tree dies with it) and recorded as such."""
    os.environ["PRISMATIC_BENCH_WORKERS"] = str(workers)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.monotonic()
        proc = start_node(app, Path(tmp) / "d")
        started = time.monotonic() - t
        try:
            with p.connect(Path(tmp) / "d") as conn:
                yield conn, started
        finally:
            t = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_WAIT_S)
                took = f"{time.monotonic() - t:.1f}"
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                took = f"> {STOP_WAIT_S:.0f} (killed)"
            STOPS[f"{app.rsplit(':', 1)[-1]} {workers:,}"] = took


def alternate(sides: dict[str, Callable[[int], dict[str, list[float]]]], rounds: int,
              block: int) -> dict[str, dict[str, list[float]]]:
    """Each side's figures, timed in alternating blocks (the order rotated every round)."""
    names = list(sides)
    got: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for what, xs in sides[name](block).items():
                got[name].setdefault(what, []).extend(xs)
    return got


def named_side(conn: p.NodeConnection, hub_block: int) -> Callable[[int], dict[str, list[float]]]:
    st = conn.status()
    anchor = conn.whereis("anchor")
    assert anchor is not None

    def side(n: int) -> dict[str, list[float]]:
        return {**control_calls(conn, n), **hub_ops(st.node, anchor, hub_block)}
    return side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=5000)
    ap.add_argument("--supervisors", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args()
    notes: list[str] = []
    ms, us = 1e3, 1e6
    hub_n = 400

    with open_node("bench.apps:named_pool", 100) as (sconn, s_started):
        n = fitting(args.workers, WORKER_MIB, notes, "workers")
        with open_node("bench.apps:named_pool", n) as (bconn, b_started):
            # both nodes run meanwhile: their figures are timed in alternating blocks
            calls = alternate({"small": named_side(sconn, hub_n // 10),
                               "big": named_side(bconn, hub_n // 10)}, 10, args.calls // 10)
            big_mem = tree_memory(bconn.status().pid)
        small_mem = tree_memory(sconn.status().pid)
    small = {"calls": calls["small"], "hub": calls["small"], "memory_after": small_mem,
             "started": s_started}
    big = {"calls": calls["big"], "hub": calls["big"], "memory_after": big_mem,
           "started": b_started}
    pure_small, pure_big = pure_ops(100, 2000), pure_ops(n, 2000)
    s = fitting(args.supervisors, SUPERVISED_MIB, notes, "supervisors")
    with open_node("bench.apps:pool", s) as (conn, _):
        flat = {"calls": control_calls(conn, args.calls),
                "memory_after": tree_memory(conn.status().pid)}
    with open_node("bench.apps:supervised_pool", s) as (conn, _):
        sups = {"calls": control_calls(conn, args.calls),
                "memory_after": tree_memory(conn.status().pid)}

    rows: list[tuple[object, ...]] = []
    for what, target in (("status", "p99 <= 50"), ("tree", "p99 <= 50"),
                         ("count_children", "p99 <= 20")):
        b, a = big["calls"][what], small["calls"][what]
        rows.append((f"{what}, {n:,} workers: p50 / p99 (ms)",
                     f"{pct(b, .5) * ms:.2f} / {pct(b, .99) * ms:.2f}", target,
                     f"100 workers: {pct(a, .5) * ms:.2f} / {pct(a, .99) * ms:.2f}"))
    for what, target in (("status", "p99 <= 50"), ("tree", "p99 <= 50"),
                         ("count_children", "-")):
        b, a = sups["calls"][what], flat["calls"][what]
        rows.append((f"{what}, {s:,} supervisors + 1 worker each: p50 / p99 (ms)",
                     f"{pct(b, .5) * ms:.2f} / {pct(b, .99) * ms:.2f}", target,
                     f"{s:,} workers, 1 supervisor: {pct(a, .5) * ms:.2f} / "
                     f"{pct(a, .99) * ms:.2f}"))
    for what in ("register+unregister", "monitor+demonitor", "whereis"):
        b, a = pct(big["hub"][what], .5), pct(small["hub"][what], .5)
        rows.append((f"hub round trip, {what}, {n:,} names+monitors: p50 (us)",
                     f"{b * us:.1f} ({b / a:.2f}x)", "<= 1.5x", f"100: {a * us:.1f}"))
    for what in pure_big:
        b, a = pct(pure_big[what], .5), pct(pure_small[what], .5)
        rows.append((f"hub state machine, {what}, {n:,} held: p50 (us)",
                     f"{b * us:.1f} ({b / a:.2f}x)", "<= 1.5x", f"100: {a * us:.1f}"))
    for label, got, base in ((f"{n:,} workers", big, small),
                             (f"{s:,} supervisors", sups, flat)):
        m, mb = got["memory_after"], base["memory_after"]
        rows.append((f"node process USS / RSS, {label} (MiB)",
                     f"{m['node_uss']:.0f} / {m['node_rss']:.0f}", "< 100",
                     f"{'100 workers' if base is small else f'{s:,} workers'}: "
                     f"{mb['node_uss']:.0f} / {mb['node_rss']:.0f}"))
        rows.append((f"non-worker processes' USS (node, supervisors, zygotes, spares), {label} "
                     f"(MiB)", f"{m['other_uss'] + m['node_uss']:.0f}", "-",
                     f"{mb['other_uss'] + mb['node_uss']:.0f}"))
    fm, sm = flat["memory_after"], sups["memory_after"]
    rows.append((f"processes, {s:,} supervisors + 1 worker each", f"{sm['processes']:,} "
                 f"({sm['processes'] / fm['processes']:.2f}x)", "<= 2.2x",
                 f"{s:,} workers under 1 supervisor: {fm['processes']:,}"))
    tot_s, tot_f = sm["worker_uss"] + sm["other_uss"] + sm["node_uss"], \
        fm["worker_uss"] + fm["other_uss"] + fm["node_uss"]
    rows.append((f"total USS, {s:,} supervisors + 1 worker each (MiB)",
                 f"{tot_s:,.0f} ({tot_s / tot_f:.2f}x)", "<= 2.2x",
                 f"{s:,} workers under 1 supervisor: {tot_f:,.0f}"))
    rows.append((f"node started, {n:,} named workers (s)", f"{big['started']:.1f}", "-",
                 f"100: {small['started']:.1f}"))

    print(f"scale bench: {n:,} workers (each registered, each monitoring one anchor), "
          f"{s:,} supervisors; {args.calls} control calls, {hub_n} hub round trips per figure")
    for note in notes:
        print(f"note: {note}")
    print_table(("figure", "value", "target", "baseline (same run)"), rows)
    print("node stop, SIGTERM -> exited (s): " + "; ".join(f"{k}: {v}" for k, v in STOPS.items()))


if __name__ == "__main__":
    main()
