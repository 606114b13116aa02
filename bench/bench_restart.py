"""Restart and start-up benchmarks for the supervision core (issue: supervised OS-process trees).

Run: ``python bench/bench_restart.py [--kills N] [--workers N]``. Starts real nodes, prints one
table: figure, value, target, and a bare-Python baseline measured in this same run.

* SIGKILL -> replacement ready: the time from ``kill(pid, SIGKILL)`` to the supervisor's
  ``child_started`` report for the replacement (its ``init`` has returned and the supervisor
  knows). Both clocks are CLOCK_MONOTONIC, which is system-wide on Linux. Kills are paced:
  the next kill waits until the supervisor has its spare again (a real crash rate is far
  below hundreds per second); a second row measures back-to-back kills, where the spare is
  often not ready. Baseline: a bare loop in this process that forks a child, waits for it to
  say ready on a pipe, SIGKILLs it, reaps it through a pidfd, and forks the replacement.
* 1,000 workers under one supervisor started and ready: ``start_child`` of a supervisor
  with 1,000 worker children, timed until it returns (every child's ``init`` returned, in
  order). Baseline: fork 1,000 children one after another, each signalling ready on a pipe.
  The two are timed in alternating rounds (``--rounds``, bare first in odd rounds, the
  supervisor first in even ones), so a load that comes and goes on the machine falls on
  both alike; the table gives the median of the rounds and each round's ratio.
* USS per idle worker: the unique set size (memory private to the process) averaged over
  those 1,000 workers. Baseline: one bare forked idle child of this process.

Floors are printed beside the targets they bound, measured in this same run, because on a
VM the cost of a page fault (and so of every fork) drifts by 2x within minutes:

* kill -> reaped: from ``kill(pid, SIGKILL)`` until the killed process's pidfd is readable,
  i.e. the kernel has torn it down (its memory unmapped and freed); no supervisor can learn
  of a death sooner. Measured on the killed workers themselves (the bench waits on a pidfd
  of its own, beside the supervisor's; alternating watched and unwatched kills moved the
  restart p50 by under 0.1 ms) and on the bare child, which has less memory of its own to
  free and is killed while its pages are still hot in the cache. A restart is this plus the
  supervisor's share.
* bare forks on every CPU: one forking process per CPU, each forking its share of the 1,000
  children one after another (each says ready on a pipe). What 1,000 processes that run no
  code of their own cost on this machine's cores, at best.
* CPU per worker: the whole machine's busy CPU time (``/proc/stat``, all processes and the
  kernel) while the 1,000 workers start, divided by 1,000; beside the same for the bare
  sequential forks (parent's fork plus the child's first run). With 2 CPUs, 1,000 workers in
  2 s leave 4 ms of CPU per worker for everything. The machine's figure counts whatever
  else runs on it; the second row counts only the processes at work (``schedstat``: exact
  nanoseconds, user and kernel, every thread): the node and every process of its tree,
  against this process and its bare children.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import prismatic as p  # noqa: E402
from bench._harness import pct, print_table, start_node, stop_node  # noqa: E402
from prismatic._process import child_pids, process_name, uss_bytes  # noqa: E402


def has_spare(sup: int) -> bool:
    return any(process_name(c) == "prism:spare" for c in child_pids(sup))


def wait_for(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit("benchmark condition not reached in time")
        time.sleep(0.0002)


def bench_restarts(kills: int, paced: bool) -> tuple[list[float], list[float]]:
    """(kill -> replacement ready, kill -> killed worker reaped) for each kill."""
    with tempfile.TemporaryDirectory() as tmp:
        node = start_node("bench.apps:one_worker", Path(tmp) / "d")
        try:
            with p.connect(Path(tmp) / "d") as conn, \
                    p.open_event_stream(Path(tmp) / "d", "supervisor.root.victim.") as ev:
                root = conn.status().root_pid
                pid = conn.pid_of("victim")
                lat, reaped = [], []
                for _ in range(kills):
                    if paced:
                        wait_for(lambda: has_spare(root))
                    fd = os.pidfd_open(pid)
                    t0 = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
                    select.select([fd], [], [])  # readable once the kernel has torn it down
                    reaped.append(time.monotonic() - t0)
                    os.close(fd)
                    e = ev.wait_for(lambda e: e.kind == "child_started", 10)
                    lat.append(e.mono - t0)
                    pid = e.pid
                return lat, reaped
        finally:
            stop_node(node)


def _bare_child(w: int) -> None:
    os.write(w, b"r")
    signal.pause()
    os._exit(0)


def bare_fork(w: int) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            _bare_child(w)
        finally:
            os._exit(0)
    return pid


def bench_bare_restarts(kills: int, gap: float = 0.0) -> tuple[list[float], list[float]]:
    """(kill -> replacement ready, kill -> reaped) for each kill of a bare forked child;
    with ``gap``, each kill comes that many seconds after the previous replacement said
    ready (to a forker and CPUs idle a moment, as a real crash finds them)."""
    r, w = os.pipe()
    pid = bare_fork(w)
    os.read(r, 1)
    lat, reaped = [], []
    for _ in range(kills):
        if gap:
            time.sleep(gap)
        fd = os.pidfd_open(pid)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        select.select([fd], [], [])
        reaped.append(time.monotonic() - t0)
        os.waitpid(pid, 0)
        os.close(fd)
        pid = bare_fork(w)
        os.read(r, 1)
        lat.append(time.monotonic() - t0)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    return lat, reaped


def busy_cpu_seconds() -> float:
    """The whole machine's non-idle CPU time so far (every process and the kernel)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def cpu_seconds(pid: int) -> float:
    """CPU time of process ``pid`` so far, every thread, user and kernel (0 if gone)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError):
        pass
    return total / 1e9


def tree_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """pid -> (process name, CPU seconds so far) of ``pid`` and every live descendant."""
    got, todo = {}, [pid]
    while todo:
        one = todo.pop()
        got[one] = (process_name(one), cpu_seconds(one))
        try:
            todo += child_pids(one)
        except OSError:
            pass
    return got


def cpu_by_role(before: dict[int, tuple[str, float]],
                after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by the role the process's name says."""
    roles: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        if name in ("prism:zygote", "prism:spare"):
            role = name.split(":")[1]
        elif name.startswith("prism-sup:"):
            role = "supervisors"
        elif name.startswith("prism:"):
            role = "workers"
        else:
            role = "node"
        roles[role] = roles.get(role, 0.0) + cpu - before.get(pid, ("", 0.0))[1]
    return roles


class Start(NamedTuple):
    seconds: float  # until every child is ready
    uss: float  # mean USS per child
    machine_cpu: float  # busy CPU seconds of the whole machine, per child
    own_cpu: float  # CPU seconds of the processes at work, per child
    roles: dict[str, float]  # own_cpu by the role of the process (empty for bare forks)


def bench_pool(n: int) -> Start:
    """A supervisor of n workers started under a node: see the module doc."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "d"
        node = start_node("bench.apps:empty", data)
        try:
            with p.connect(data, timeout=120) as conn:
                own0 = tree_cpu_seconds(node.pid)
                cpu0, t0 = busy_cpu_seconds(), time.monotonic()
                conn.start_child("", p.ChildSpec(id="pool", start="bench.apps:pool",
                                                type="supervisor"))
                started = time.monotonic() - t0
                cpu = busy_cpu_seconds() - cpu0
                roles = cpu_by_role(own0, tree_cpu_seconds(node.pid))
                kids = [r.pid for r in conn.which_children("pool") if r.pid]
                assert len(kids) == n, len(kids)
                uss = statistics.mean(uss_bytes(k) for k in kids)
                return Start(started, uss, cpu / n, sum(roles.values()) / n,
                             {role: cpu / n for role, cpu in roles.items()})
        finally:
            stop_node(node)


def fork_ready(n: int) -> list[int]:
    """Fork n bare children one after another, each waited for until it says ready."""
    r, w = os.pipe()
    pids = []
    for _ in range(n):
        pids.append(bare_fork(w))
        os.read(r, 1)
    os.close(r)
    os.close(w)
    return pids


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def bench_bare_pool(n: int) -> Start:
    """n sequential bare forks (USS: of one child)."""
    own0 = cpu_seconds(os.getpid())
    cpu0, t0 = busy_cpu_seconds(), time.monotonic()
    pids = fork_ready(n)
    elapsed = time.monotonic() - t0
    cpu = busy_cpu_seconds() - cpu0
    own = cpu_seconds(os.getpid()) - own0 + sum(cpu_seconds(k) for k in pids)
    uss = uss_bytes(pids[0])
    kill_all(pids)
    return Start(elapsed, uss, cpu / n, own / n, {})


def bench_starts(n: int, rounds: int) -> tuple[list[Start], list[Start]]:
    """(supervisor's starts, bare starts), timed in alternating rounds (see the module doc)."""
    pools, bares = [], []
    for i in range(rounds):
        if i % 2:
            pools.append(bench_pool(n))
            bares.append(bench_bare_pool(n))
        else:
            bares.append(bench_bare_pool(n))
            pools.append(bench_pool(n))
    return pools, bares


def median_start(starts: list[Start]) -> Start:
    def median(field: str) -> float:
        return statistics.median(getattr(s, field) for s in starts)

    roles = {role: statistics.median(s.roles.get(role, 0.0) for s in starts)
             for role in starts[0].roles}
    return Start(median("seconds"), median("uss"), median("machine_cpu"), median("own_cpu"),
                 roles)


def _forker(n: int, done: int, go: int) -> None:
    pids = fork_ready(n)
    os.write(done, b"d")
    os.read(go, 1)  # the bench has its time: kill and reap our children, then exit
    kill_all(pids)


def bench_bare_pool_parallel(n: int, forkers: int) -> float:
    """Seconds until n bare children are ready, forked by ``forkers`` processes at once."""
    done_r, done_w = os.pipe()
    go_r, go_w = os.pipe()
    t0 = time.monotonic()
    pids = []
    for i in range(forkers):
        pid = os.fork()
        if pid == 0:
            try:
                _forker(n // forkers + (i < n % forkers), done_w, go_r)
            finally:
                os._exit(0)
        pids.append(pid)
    for _ in pids:
        os.read(done_r, 1)
    elapsed = time.monotonic() - t0
    os.write(go_w, b"g" * forkers)
    for pid in pids:
        os.waitpid(pid, 0)
    for fd in (done_r, done_w, go_r, go_w):
        os.close(fd)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=500)
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds of the supervisor's start and the bare forks")
    args = ap.parse_args()
    os.environ["PRISMATIC_BENCH_WORKERS"] = str(args.workers)

    bare, reaped = bench_bare_restarts(args.kills)
    paced, killed_reaped = bench_restarts(args.kills, paced=True)
    burst, _ = bench_restarts(min(args.kills, 200), paced=False)
    pools, bares = bench_starts(args.workers, max(1, args.rounds))
    pool, bare_pool = median_start(pools), median_start(bares)
    ratios = " ".join(f"{a.seconds / b.seconds:.2f}x" for a, b in zip(pools, bares, strict=True))
    cpus = os.cpu_count() or 1
    parallel_s = bench_bare_pool_parallel(args.workers, cpus)

    ms = 1000.0
    rows = [
        ("SIGKILL -> ready, p50 (paced)", f"{pct(paced, .5) * ms:.2f} ms", "<= 2 ms",
         f"{pct(bare, .5) * ms:.2f} ms bare fork+wait"),
        ("SIGKILL -> ready, p99 (paced)", f"{pct(paced, .99) * ms:.2f} ms", "<= 10 ms",
         f"{pct(bare, .99) * ms:.2f} ms bare fork+wait"),
        ("  of which SIGKILL -> reaped, p50", f"{pct(killed_reaped, .5) * ms:.2f} ms", "-",
         f"{pct(reaped, .5) * ms:.2f} ms bare child reaped"),
        ("SIGKILL -> ready, p50 (back-to-back)", f"{pct(burst, .5) * ms:.2f} ms", "-",
         f"{pct(bare, .5) * ms:.2f} ms bare fork+wait"),
        ("SIGKILL -> ready, p99 (back-to-back)", f"{pct(burst, .99) * ms:.2f} ms", "-",
         f"{pct(bare, .99) * ms:.2f} ms bare fork+wait"),
        (f"{args.workers} workers started and ready", f"{pool.seconds:.3f} s", "<= 2 s",
         f"{bare_pool.seconds:.3f} s bare sequential fork+ready (medians of {len(pools)} "
         f"alternating rounds)"),
        ("  started / bare, each round", f"{pool.seconds / bare_pool.seconds:.2f}x",
         "<= 1.3x", f"rounds: {ratios}"),
        (f"  floor: {args.workers} bare forks on {cpus} cpus", f"{parallel_s:.3f} s", "-",
         f"{cpus} forkers at once, children run no code"),
        ("  CPU per worker started", f"{pool.machine_cpu * ms:.2f} ms", "-",
         f"{bare_pool.machine_cpu * ms:.2f} ms per bare fork+ready (machine-wide)"),
        ("  CPU per worker, own processes", f"{pool.own_cpu * ms:.2f} ms", "-",
         f"{bare_pool.own_cpu * ms:.2f} ms per bare fork+ready (forker and child)"),
        ("    of which, by process", f"{pool.own_cpu * ms:.2f} ms", "-",
         ", ".join(f"{role} {cpu * ms:.2f}" for role, cpu in sorted(
             pool.roles.items(), key=lambda kv: -kv[1]) if cpu * ms >= 0.005) + " ms"),
        ("USS per idle worker", f"{pool.uss / 2**20:.2f} MiB", "<= 3 MiB",
         f"{bare_pool.uss / 2**20:.2f} MiB bare forked child"),
    ]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench_restart: {args.kills} kills paced, {len(burst)} back-to-back, "
          f"{args.workers} workers; python {sys.version.split()[0]}, {os.cpu_count()} cpus; "
          f"load average at the end {load}")
    print_table(("figure", "value", "target", "baseline (same run)"), rows)


if __name__ == "__main__":
    main()
