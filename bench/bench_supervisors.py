"""What a supervisor costs (issue: cost and scale, item 1): many small supervisors beside one
flat supervisor of the same number of workers, measured in the same run.

Run: ``python bench/bench_supervisors.py [--supervisors N] [--idle S] [--kills K]``.

* Memory and processes: a node of ``N`` supervisors with one idle worker each (dormant: each
  supervisor has let its spare and zygote go after ``--idle`` seconds without a start,
  ``PRISMATIC_SPARE_IDLE``; the default in production is 60 s) beside a node of ``N``
  workers under one supervisor, and, unless ``--no-before``, the same ``N`` supervisors with
  dormancy turned off (``PRISMATIC_SPARE_IDLE=never``: what every supervisor cost before).
  Processes and total USS of each tree (node process included).
* Restarts under a dormant supervisor: SIGKILL its worker; the time until the supervisor
  reports the replacement started (``child_started``; both clocks CLOCK_MONOTONIC). The
  first restart takes the node's shared spare (``supervisors/_lender.py``: the supervisor
  has none of its own; the bench's kills come far enough apart for the lender to have made
  its next, as a real crash under some other supervisor would); baseline: the bare
  fork-after-death loop of ``bench_restart`` (a process forks a child, waits for it to say
  ready on a pipe, SIGKILLs it, reaps it through a pidfd, forks the replacement), same run.
  A second baseline, beside it, for what "long-idle" costs the kernel: ``--kills`` bare
  *watchers*, forked by this process (which imports what the tree's processes import, so
  each watcher has a supervisor's image), each forks a bare child and waits in an epoll loop
  on its pidfd and its ready pipe, as a supervisor does; each sits idle from before the node
  starts until its one kill, which alternates with the dormant supervisors' kills: SIGKILL
  its child -> the watcher reaps it, forks the replacement, reads its ready byte and stamps
  the time. The bare loop above forks from a process whose pages the loop keeps hot; an
  idle process's page tables, page structs and code are cold, and its fork and its child's
  teardown cost several times more (first restart parts, measured: kill -> the supervisor
  sees the exit, the fork, the child to ready).
  A third baseline: the bare loop again, but each kill comes 50 ms after the last
  replacement said ready (its forker and the CPUs idle a moment, as before a real crash);
  on this VM that alone takes its p50 from ~2.5 to ~4 ms. And one part of every restart:
  kill -> the killed process's pidfd readable in this process (the kernel has torn it down;
  no supervisor learns of the death sooner), for the first and next restarts, the flat one
  and both bare loops; seen from this process, so its own wake-up is in it (under load
  it can read longer than the whole restart the supervisor reports).
  The second kill waits until the supervisor has its spare again (it restarted something a
  moment ago): baseline, restarts of the one worker of a node whose supervisor never goes
  dormant (``bench_restart``'s paced kills), and, beside it, restarts under supervisors of
  the never-dormant node of the same shape (what the figure was before dormancy).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import prismatic as p  # noqa: E402
from bench._harness import pct, print_table, start_node  # noqa: E402
from bench.bench_restart import bare_fork, bench_bare_restarts  # noqa: E402
from bench.bench_scale import available_mib, descendants  # noqa: E402
from prismatic._process import child_pids, process_name, uss_bytes  # noqa: E402
# What a supervisor's image holds (the node's imports before it forks the tree, and the
# supervisor's own), so the idle watchers fork and tear down an image of the same size.
import prismatic.node  # noqa: E402, F401
import prismatic.supervisors._runtime  # noqa: E402, F401

MiB = 1024 * 1024


@contextlib.contextmanager
def open_node(app: str, n: int, idle: str) -> Iterator[tuple[p.NodeConnection, Path]]:
    os.environ["PRISMATIC_BENCH_WORKERS"] = str(n)
    os.environ["PRISMATIC_SPARE_IDLE"] = idle
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_node(app, Path(tmp) / "d")
        try:
            with p.connect(Path(tmp) / "d") as conn:
                yield conn, Path(tmp) / "d"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def helpers(node_pid: int) -> list[int]:
    return [q for q in descendants(node_pid)
            if process_name(q) in ("prism:spare", "prism:zygote")]


def memory(node_pid: int) -> tuple[int, float]:
    """(processes, total USS in MiB) of the node and its tree."""
    procs = [node_pid, *descendants(node_pid)]
    total = 0
    for q in procs:
        with contextlib.suppress(OSError):
            total += uss_bytes(q)
    return len(procs), total / MiB


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} not reached within {timeout:.0f} s")
        time.sleep(0.05)


_STAMP = struct.Struct("<id")  # a watcher's report: its child's pid, when it said ready


def _watcher(out: int, control: int) -> None:
    """Runs in a bare watcher: keep one bare child, fork another when it dies, and report
    each child's ready (pid, CLOCK_MONOTONIC) on ``out``; exit at EOF on ``control``."""
    ready_r, ready_w = os.pipe()
    sel = selectors.DefaultSelector()
    sel.register(ready_r, selectors.EVENT_READ, "ready")
    sel.register(control, selectors.EVENT_READ, "control")
    pid = bare_fork(ready_w)
    pidfd = os.pidfd_open(pid)
    sel.register(pidfd, selectors.EVENT_READ, "exit")
    while True:
        for key, _ in sel.select():
            if key.data == "exit":
                os.waitpid(pid, 0)
                sel.unregister(pidfd)
                os.close(pidfd)
                pid = bare_fork(ready_w)
                pidfd = os.pidfd_open(pid)
                sel.register(pidfd, selectors.EVENT_READ, "exit")
            elif key.data == "ready":
                os.read(ready_r, 1)
                os.write(out, _STAMP.pack(pid, time.monotonic()))
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return


class IdleWatchers:
    """``n`` bare watchers (see the module doc), idle until :meth:`restart` kills a child."""

    def __init__(self, n: int) -> None:
        self.watchers: list[tuple[int, int, int]] = []  # (watcher pid, its out, control)
        self.children: list[int] = []
        for _ in range(n):
            out_r, out_w = os.pipe()
            control_r, control_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:  # only its own two ends: the others' control pipes must reach EOF
                    for fd in os.listdir("/proc/self/fd"):
                        if int(fd) > 2 and int(fd) not in (out_w, control_r):
                            with contextlib.suppress(OSError):
                                os.close(int(fd))
                    _watcher(out_w, control_r)
                finally:
                    os._exit(0)
            os.close(out_w)
            os.close(control_r)
            self.watchers.append((pid, out_r, control_w))
            self.children.append(_STAMP.unpack(os.read(out_r, _STAMP.size))[0])

    def restart(self, i: int) -> float:
        """Kill watcher ``i``'s child; kill -> the watcher knows its replacement is ready."""
        _, out, _ = self.watchers[i]
        t0 = time.monotonic()
        os.kill(self.children[i], signal.SIGKILL)
        self.children[i], ready = _STAMP.unpack(os.read(out, _STAMP.size))
        return ready - t0

    def close(self) -> None:
        for pid, out, control in self.watchers:
            os.close(control)
            os.waitpid(pid, 0)
            os.close(out)


def restart(conn: p.NodeConnection, ev: p.EventStream, path: str, sup: int,
            warm: bool, reaped: list[float] | None = None) -> float:
    """Kill the worker ``w`` under supervisor ``path``; kill -> replacement started. With
    ``reaped``, also kill -> the killed worker's pidfd readable (its teardown is over: no
    supervisor can learn of the death sooner), appended to it."""
    if warm:
        wait_for(lambda: any(process_name(c) == "prism:spare" for c in child_pids(sup)), 10,
                 f"a spare under {path}")
    pid = conn.pid_of(f"{path}/w" if path else "victim")
    fd = os.pidfd_open(pid)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    if reaped is not None:
        select.select([fd], [], [])
        reaped.append(time.monotonic() - t0)
    os.close(fd)
    while True:
        e = ev.next(10)
        if e is None:
            raise SystemExit(f"bench: no restart under {path or 'root'}")
        if e.kind == "child_started" and e.pid != pid and \
                e.path == (tuple(path.split("/")) if path else ()):
            return e.mono - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supervisors", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--no-before", action="store_true")
    args = ap.parse_args()
    n, ms = args.supervisors, 1e3
    before = not args.no_before and available_mib() > 4096 + n * 9
    bare, bare_reaped = bench_bare_restarts(args.kills * 5)
    paced, paced_reaped = bench_bare_restarts(args.kills, 0.05)

    with open_node("bench.apps:pool", n, "never") as (conn, data):
        flat = memory(conn.status().pid)
    with open_node("bench.apps:one_worker", 1, "never") as (conn, data):
        with p.open_event_stream(data, "supervisor.") as ev:
            root = conn.status().root_pid
            flat_reaped: list[float] = []
            flat_warm = [restart(conn, ev, "", root, True, flat_reaped)
                         for _ in range(args.kills)]
    idle_bare = IdleWatchers(args.kills)  # idle from now until each one's kill
    with open_node("bench.apps:supervised_pool", n, str(args.idle)) as (conn, data):
        node_pid = conn.status().pid
        wait_for(lambda: not helpers(node_pid), args.idle + 120, "every supervisor dormant")
        sups = memory(node_pid)
        kids = {c.id: c.pid for c in conn.which_children()}
        cold, warm, idle = [], [], []
        cold_reaped: list[float] = []
        warm_reaped: list[float] = []
        with p.open_event_stream(data, "supervisor.") as ev:
            for i in range(args.kills):
                path = f"s{i}"
                idle.append(idle_bare.restart(i))
                cold.append(restart(conn, ev, path, kids[path], False, cold_reaped))
                warm.append(restart(conn, ev, path, kids[path], True, warm_reaped))
                # settled (its forks are over) before the next first restart is timed
                sup = kids[path]
                wait_for(lambda sup=sup: any(process_name(c) == "prism:spare"
                                             for c in child_pids(sup)), 10, "a spare")
    idle_bare.close()
    old = None
    never_warm: list[float] = []
    if before:
        with open_node("bench.apps:supervised_pool", n, "never") as (conn, data):
            node_pid = conn.status().pid
            wait_for(lambda: len(helpers(node_pid)) >= 2 * (n + 1), 120, "spares made")
            old = memory(node_pid)
            # What "unchanged" compares against: a supervisor that never went dormant, in a
            # tree of the same shape and size (the flat row's node has a handful of processes;
            # a kill's teardown and a fork cost more where 2,000 processes share the pages).
            kids = {c.id: c.pid for c in conn.which_children()}
            with p.open_event_stream(data, "supervisor.") as ev:
                never_warm = [restart(conn, ev, f"s{i}", kids[f"s{i}"], True)
                              for i in range(args.kills)]

    rows: list[tuple[object, ...]] = [
        (f"processes, {n:,} dormant supervisors + 1 worker each",
         f"{sups[0]:,} ({sups[0] / flat[0]:.2f}x)", "<= 2.2x",
         f"{n:,} workers under 1 supervisor: {flat[0]:,}"),
        (f"total USS, {n:,} dormant supervisors + 1 worker each (MiB)",
         f"{sups[1]:,.0f} ({sups[1] / flat[1]:.2f}x)", "<= 2.2x",
         f"{n:,} workers under 1 supervisor: {flat[1]:,.0f}"),
    ]
    if old is not None:
        rows += [
            (f"processes, {n:,} supervisors with spare + zygote (never dormant)",
             f"{old[0]:,} ({old[0] / flat[0]:.2f}x)", "-", "before this change"),
            (f"total USS, {n:,} supervisors with spare + zygote (MiB)",
             f"{old[1]:,.0f} ({old[1] / flat[1]:.2f}x)", "-", "before this change"),
        ]
    rows += [
        ("first restart under a dormant supervisor, p50 / p99 (ms)",
         f"{pct(cold, .5) * ms:.2f} / {pct(cold, .99) * ms:.2f}", "<= bare p50",
         f"bare fork after death: {pct(bare, .5) * ms:.2f} / {pct(bare, .99) * ms:.2f} "
         f"({pct(cold, .5) / pct(bare, .5):.2f}x)"),
        ("  2nd baseline: bare fork after death, long-idle watcher, p50 / p99 (ms)",
         f"{pct(idle, .5) * ms:.2f} / {pct(idle, .99) * ms:.2f}", "-",
         f"{len(idle)} idle epoll watchers of a supervisor's image, 1 kill each "
         f"(first restart {pct(cold, .5) / pct(idle, .5):.2f}x)"),
        ("  3rd baseline: bare fork after death, 50 ms between kills, p50 / p99 (ms)",
         f"{pct(paced, .5) * ms:.2f} / {pct(paced, .99) * ms:.2f}", "-",
         "the bare loop, each kill 50 ms after the last replacement's ready"),
        ("  part: kill -> killed worker reaped, first restart, p50 / p99 (ms)",
         f"{pct(cold_reaped, .5) * ms:.2f} / {pct(cold_reaped, .99) * ms:.2f}", "-",
         f"bare: {pct(bare_reaped, .5) * ms:.2f} / {pct(bare_reaped, .99) * ms:.2f}, "
         f"50 ms between kills: {pct(paced_reaped, .5) * ms:.2f} / "
         f"{pct(paced_reaped, .99) * ms:.2f}"),
        ("next restart (spare regained), p50 / p99 (ms)",
         f"{pct(warm, .5) * ms:.2f} / {pct(warm, .99) * ms:.2f}", "= flat p50",
         f"flat supervisor with its spare: {pct(flat_warm, .5) * ms:.2f} / "
         f"{pct(flat_warm, .99) * ms:.2f}"),
    ]
    if old is not None:
        rows.append(
            ("  2nd baseline: never-dormant supervisor, same tree, p50 / p99 (ms)",
             f"{pct(never_warm, .5) * ms:.2f} / {pct(never_warm, .99) * ms:.2f}", "-",
             f"{n:,} supervisors with spare + zygote, {len(never_warm)} kills"))
    rows += [
        ("  part: kill -> killed worker reaped, next restart, p50 / p99 (ms)",
         f"{pct(warm_reaped, .5) * ms:.2f} / {pct(warm_reaped, .99) * ms:.2f}", "-",
         f"flat: {pct(flat_reaped, .5) * ms:.2f} / {pct(flat_reaped, .99) * ms:.2f}"),
    ]
    print(f"supervisor cost: {n:,} supervisors, dormant after {args.idle:g} s without a "
          f"start; {args.kills} restarts per figure ({len(bare)} bare); load "
          f"{os.getloadavg()[0]:.1f}")
    if not before and not args.no_before:
        print("note: not enough memory for the never-dormant node; its rows are left out")
    print_table(("figure", "value", "target", "baseline (same run)"), rows)


if __name__ == "__main__":
    main()
