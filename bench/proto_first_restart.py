"""Prototype (issue: cost and scale, item 1): who should fork the first restart under a dormant
supervisor? Bare processes only (no Prismatic runtime), so each figure is the kernel's share
and the hand-offs', measured beside the baselines of ``bench_supervisors`` in one run.

Run: ``python bench/proto_first_restart.py [--supervisors N] [--kills K]``.

A tree of the shape the bench node has, made of bare processes of a supervisor's image (this
process imports what the tree's processes import): a root forks ``N`` supervisors, each
forks one worker that says ready on a pipe and sleeps; every supervisor waits in an epoll
loop on its worker's pidfd, idle from the start until its one kill. A kill under supervisor
``i`` is restarted by one of three mechanisms (``i`` mod 3), and timed from the kill until
the supervisor has read its replacement's ready byte:

* ``self``: the supervisor forks the replacement itself (what a dormant supervisor does
  today: a fork from deep in a fork chain whose pages ~2N processes share);
* ``forker``: it asks a node-level forker, a process exec'd afresh (its pages shared with
  nobody but its own children), which forks the replacement and answers its pid (the
  supervisor would watch it by pidfd, the forker reap it and pass its exit status on);
* ``shared spare``: it asks the same forker for a spare made ahead of time (one spare for
  the whole node), which is handed the supervisor's ready pipe and says ready on it.

Each request carries the supervisor's end of the ready pipe (``SCM_RIGHTS``) over a Unix
stream connection each supervisor opened at its start.

Measured (1,000 supervisors, 40 kills a row, 2 CPUs busy with other work: load 4.5-28),
p50 in ms, self / forker / shared spare; hot bare loop, bare loop with 50 ms between
kills, long-idle watcher: 9.79 / 15.78 / 6.33; 5.26, 4.50, 13.18 - 7.28 / 8.83 / 5.89;
4.15, 10.34, 8.96 - 18.46 / 17.64 / 10.05; 2.69, 5.70, 17.73. The shared spare is 35-45%
quicker than the supervisor's own fork in every run; the fresh forker's shallower fork does
not pay for its hand-off; none reaches the hot loop. A shared spare is a change of owner
(the replacement is the forker's child: it reaps it and passes the exit status on, kills a
dead supervisor's children), which this prototype does not attempt.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._harness import pct, print_table  # noqa: E402
from bench.bench_restart import bare_fork, bench_bare_restarts  # noqa: E402
from bench.bench_supervisors import IdleWatchers  # noqa: E402
import prismatic.node  # noqa: E402, F401 - a supervisor's image, as bench_supervisors
import prismatic.supervisors._runtime  # noqa: E402, F401

MECHANISMS = ("self", "forker", "shared spare")
_PID = struct.Struct("<i")
_STAMP = struct.Struct("<id")  # supervisor index, CLOCK_MONOTONIC when it read ready

FORKER = r'''
import os, selectors, signal, socket, struct, sys
sys.path.insert(0, sys.argv[2])
import prismatic.node, prismatic.supervisors._runtime  # the same image, in a fresh mm
import ctypes
libc = ctypes.CDLL(None)
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the prototype does not keep exit statuses
lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
lsock.bind("\0" + sys.argv[1]); lsock.listen(4096); lsock.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(lsock, selectors.EVENT_READ, None)
def spare():
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG: SIGKILL with the forker
            a.close()
            _, fds, _, _ = socket.recv_fds(b, 1, 1)
            os.write(fds[0], b"r"); signal.pause()
        finally:
            os._exit(0)
    b.close()
    return pid, a
def child(fd):
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(1, 9, 0, 0, 0)
            os.write(fd, b"r"); signal.pause()
        finally:
            os._exit(0)
    return pid
ready = spare()
os.write(1, b"k")
while True:
    for key, _ in sel.select():
        if key.data is None:
            conn, _ = lsock.accept(); sel.register(conn, selectors.EVENT_READ, "c"); continue
        msg, fds, _, _ = socket.recv_fds(key.fileobj, 1, 1)
        if not msg:  # a supervisor gone
            sel.unregister(key.fileobj); key.fileobj.close(); continue
        if msg == b"s":
            pid, a = ready
            socket.send_fds(a, [b"b"], fds); a.close()
            key.fileobj.sendall(struct.pack("<i", pid))
            ready = spare()
        else:
            key.fileobj.sendall(struct.pack("<i", child(fds[0])))
        os.close(fds[0])
'''


def supervisor(i: int, mechanism: str, address: str, report: int) -> None:
    """Runs in a bare supervisor: one worker, restarted once by ``mechanism``."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect("\0" + address)
    ready_r, ready_w = os.pipe()
    worker = bare_fork(ready_w)
    os.read(ready_r, 1)
    pidfd = os.pidfd_open(worker)
    sel = selectors.DefaultSelector()
    sel.register(pidfd, selectors.EVENT_READ)
    sel.select()  # idle until the kill
    os.waitpid(worker, 0)
    if mechanism == "self":
        new = bare_fork(ready_w)
    else:
        socket.send_fds(conn, [b"s" if mechanism == "shared spare" else b"f"], [ready_w])
        new = _PID.unpack(conn.recv(_PID.size))[0]
    os.read(ready_r, 1)
    os.write(report, _STAMP.pack(i, time.monotonic()))
    new_fd = os.pidfd_open(new)  # what a supervisor would watch
    os.close(new_fd)
    with contextlib.suppress(ProcessLookupError):
        os.kill(new, signal.SIGKILL)
    if mechanism == "self":
        os.waitpid(new, 0)


def tree(n: int, address: str, report: int, pids: int) -> None:
    """Runs in the bare root: fork the supervisors, send each one's worker pid up, wait."""
    sups = []
    for i in range(n):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                os.write(w, b"x")
                supervisor(i, MECHANISMS[i % 3], address, report)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(0)
        os.read(r, 1)
        os.close(r)
        os.close(w)
        sups.append(pid)
    time.sleep(0.2 + n / 2000)  # each has forked its worker (read back below, by /proc)
    for pid in sups:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        os.write(pids, _STAMP.pack(int(kids[0]) if kids else 0, float(pid)))
    signal.pause()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--supervisors", type=int, default=1000)
    ap.add_argument("--kills", type=int, default=40, help="per mechanism")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds the tree idles first")
    args = ap.parse_args()
    n, ms = max(args.supervisors, 3 * args.kills), 1e3
    bare, _ = bench_bare_restarts(args.kills * 5)
    paced, _ = bench_bare_restarts(args.kills, 0.05)
    address = f"prism-proto-{os.getpid()}"
    forker = subprocess.Popen([sys.executable, "-c", FORKER, address, str(REPO)],
                              stdout=subprocess.PIPE)
    assert forker.stdout is not None and forker.stdout.read(1) == b"k"
    idle_bare = IdleWatchers(args.kills)
    report_r, report_w = os.pipe()
    pids_r, pids_w = os.pipe()
    root = os.fork()
    if root == 0:
        try:
            tree(n, address, report_w, pids_w)
        finally:
            os._exit(0)
    workers = {}
    for _ in range(n):
        worker, sup = _STAMP.unpack(os.read(pids_r, _STAMP.size))
        workers[int(sup)] = worker
    order = list(workers)  # fork order: supervisor i is order[i]
    time.sleep(args.idle)
    got: dict[str, list[float]] = {m: [] for m in MECHANISMS}
    idle = []
    try:
        for k in range(args.kills):
            idle.append(idle_bare.restart(k))
            for j in range(3):
                i = 3 * k + j
                t0 = time.monotonic()
                os.kill(workers[order[i]], signal.SIGKILL)
                who, stamp = _STAMP.unpack(os.read(report_r, _STAMP.size))
                assert who == i, (who, i)
                got[MECHANISMS[i % 3]].append(stamp - t0)
                time.sleep(0.02)
    finally:  # the bare tree has no PDEATHSIG: each process is killed here
        for pid in [root, *workers, *workers.values()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os.waitpid(root, 0)
        forker.kill()
        forker.wait()
        idle_bare.close()  # its control pipes reach EOF once the tree is gone

    def row(xs: list[float]) -> str:
        return f"{pct(xs, .5) * ms:.2f} / {pct(xs, .99) * ms:.2f}"

    print(f"first restart, bare processes: {n:,} idle supervisors + 1 worker each; "
          f"{args.kills} kills per row; load {os.getloadavg()[0]:.1f}")
    print_table(("kill -> replacement ready, p50 / p99 (ms)", "value", "note"), [
        ("supervisor forks it (today's dormant path)", row(got["self"]), "deep fork chain"),
        ("node-level forker, exec'd afresh, forks it", row(got["forker"]), "+1 hand-off"),
        ("node-level shared spare handed over", row(got["shared spare"]), "+2 hand-offs"),
        ("baseline: bare fork after death (hot loop)", row(bare), "bench_supervisors"),
        ("baseline: bare loop, 50 ms between kills", row(paced), "bench_supervisors"),
        ("baseline: long-idle watcher", row(idle), "bench_supervisors"),
    ])


if __name__ == "__main__":
    main()
