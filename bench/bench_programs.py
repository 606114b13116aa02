"""Program children: SIGKILL -> replacement ready, beside a bare ``subprocess.Popen`` loop.

Run: ``python bench/bench_programs.py [--kills N] [--pool N]``. Starts real nodes, prints one
table; every baseline is measured in this same run.

* SIGKILL -> replacement ready, readiness at exec (``sleep 3600``): from
  ``kill(pid, SIGKILL)`` to the supervisor's ``child_started`` report for the replacement
  (both clocks CLOCK_MONOTONIC). The supervisor learns of the death by pidfd, forks, the
  child execs, and the exec is seen as the EOF of the child's close-on-exec channel.
  Baseline: a loop in this process that SIGKILLs a ``subprocess.Popen(["sleep", ...])``
  child, reaps it and starts the next (``Popen`` returns once exec succeeded).
* The same with a TCP-port readiness check: the program is a minimal Python listener on a
  fixed port (``python -S``), ready once a connection is accepted (the supervisor's probe
  process). Baseline: ``Popen`` of the same listener, then connecting until accepted, from
  this process.
* Supervising memory per program child: the unique set size (private memory) of the
  supervisor of a ``simple_one_for_one`` pool with N ``sleep`` children, minus the same
  supervisor's with none, divided by N (its pidfd, channel, pipes, log file and table rows).

Peers, as stated in issue 14 (not measured here): supervisord ~1 s, circus ~100 ms with
its default check delay.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import prismatic as p  # noqa: E402
from bench._harness import pct, print_table, start_node, stop_node  # noqa: E402
from prismatic._process import uss_bytes  # noqa: E402

LISTENER = ("import socket, sys\n"
            "s = socket.socket()\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
            "s.listen(16)\n"
            "while True:\n"
            "    s.accept()[0].close()\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def bench_program(kills: int, program: p.Program) -> list[float]:
    """kill -> replacement ready (seconds) for each of ``kills`` SIGKILLs of the program."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "d"
        node = start_node("bench.apps:empty", data)
        try:
            with p.connect(data) as conn, \
                    p.open_event_stream(data, "supervisor.root.victim.") as ev:
                pid = conn.start_child("", p.ChildSpec(id="victim", start=program))
                lat = []
                for _ in range(kills):
                    t0 = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
                    e = ev.wait_for(lambda e, old=pid: e.kind == "child_started"
                                    and e.pid != old, 10)
                    lat.append(e.mono - t0)
                    pid = e.pid
                    time.sleep(0.002)  # paced: a crash rate far below hundreds a second
                return lat
        finally:
            stop_node(node)


def bench_popen(kills: int, argv: list[str], port: int | None) -> list[float]:
    proc = subprocess.Popen(argv)
    if port is not None:
        while not accepts(port):
            time.sleep(0.0005)
    lat = []
    for _ in range(kills):
        fd = os.pidfd_open(proc.pid)
        t0 = time.monotonic()
        proc.kill()
        select.select([fd], [], [])
        os.close(fd)
        proc.wait()
        proc = subprocess.Popen(argv)
        if port is not None:
            while not accepts(port):
                time.sleep(0.0005)
        lat.append(time.monotonic() - t0)
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    return lat


def program_pool() -> p.SupervisorSpec:
    """A simple_one_for_one pool of ``sleep`` programs (started by the node, by name)."""
    return p.SupervisorSpec(flags=p.SupFlags(strategy="simple_one_for_one"),
                            children=[p.ChildSpec(id="t", start=p.Program(
                                argv=["sleep", "3600"]))])


def bench_memory(n: int) -> float:
    """Bytes of the supervisor's private memory per program child."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "d"
        node = start_node("bench.apps:empty", data)
        try:
            with p.connect(data, timeout=120) as conn:
                sup = conn.start_child("", p.ChildSpec(
                    id="pool", start="bench.bench_programs:program_pool", type="supervisor"))
                time.sleep(0.5)  # its zygote and spare settle
                before = uss_bytes(sup)
                for _ in range(n):
                    conn.start_child("pool", (), timeout=60)
                time.sleep(0.5)
                after = uss_bytes(sup)
                return (after - before) / n
        finally:
            stop_node(node)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--pool", type=int, default=200)
    args = ap.parse_args()
    py = [sys.executable, "-S", "-c", LISTENER]
    rows = []

    def row(name: str, xs: list[float], base: list[float]) -> None:
        rows.append((name, f"{pct(xs, 0.5) * 1e3:.2f}", f"{pct(xs, 0.99) * 1e3:.2f}",
                     f"{pct(base, 0.5) * 1e3:.2f}", f"{pct(base, 0.99) * 1e3:.2f}",
                     f"n={len(xs)}"))

    row("kill -> ready, sleep (ready at exec)",
        bench_program(args.kills, p.Program(argv=["sleep", "3600"])),
        bench_popen(args.kills, ["sleep", "3600"], None))
    port = free_port()
    row("kill -> ready, TCP listener (port check)",
        bench_program(args.kills // 2, p.Program(argv=[*py, str(port)],
                                                 ready=p.PortCheck(port=port))),
        bench_popen(args.kills // 2, [*py, str(port)], port))
    print_table(("figure", "p50 ms", "p99 ms", "Popen p50", "Popen p99", "note"), rows)
    per = bench_memory(args.pool)
    print(f"supervisor private memory per program child ({args.pool} children): "
          f"{per / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
