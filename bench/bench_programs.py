"""Program children: SIGKILL -> replacement ready, under Prismatic, supervisord and circus,
beside a bare ``subprocess.Popen`` loop, all measured the same way in one run.

Run: ``python bench/bench_programs.py [--kills N] [--peer-kills N] [--pool N]``. supervisord
and circus are measured if importable here (``pip install supervisor circus``); a missing
one gets a row saying ``not installed``.

Two measures, the same for every supervisor:

* ``exec``: from ``kill(pid, SIGKILL)`` to the replacement's exec of the program
  (``sleep`` with an argument unique to the run), timed by the kernel: the bench listens to
  the proc connector (netlink ``PROC_EVENT_EXEC``, whose timestamp is CLOCK_MONOTONIC), so
  its own polling adds nothing. Needs root (or CAP_NET_ADMIN); else the rows say so.
* ``port``: from the kill to the replacement listener (``python -S``, binding a fixed port)
  accepting a connection, seen by this process connecting every 0.2 ms.

Prismatic also reports its own figure, kill -> the supervisor's ``child_started`` event (the
readiness the tree acts on): at exec for ``sleep``, the port check for the listener. The
Popen loop's own figure is ``Popen`` returning (it returns once exec succeeded) and, for the
listener, connecting until accepted.

Settings: each peer's defaults, except supervisord's ``startsecs=0`` (by default a program
that dies within 1 s of its start is a failed start, restarted after a growing back-off,
then given up: the kills here come sooner) and, for both, control endpoints in a temporary
directory. Kills are paced (the next one once the replacement is ready, plus 20 ms).

Supervising memory per program child: the unique set size (private memory) of the
supervisor of a ``simple_one_for_one`` pool with N ``sleep`` children, minus the same
supervisor's with none, divided by N.
"""

from __future__ import annotations

import argparse
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
PACE_S = 0.02
_random = random.Random(14)
VENV_BIN = Path(sys.executable).parent


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


def wait_port(port: int, timeout: float = 30.0) -> int:
    """CLOCK_MONOTONIC ns when ``port`` first accepts (tried every 0.2 ms)."""
    deadline = time.monotonic() + timeout
    while not accepts(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"port {port} did not accept within {timeout} s")
        time.sleep(0.0002)
    return time.monotonic_ns()


# ---- the kernel's exec events --------------------------------------------------------------

class ExecWatch:
    """Exec events from the proc connector (netlink, CN_IDX_PROC): ``wait(marker)`` is the
    pid and kernel timestamp (CLOCK_MONOTONIC ns) of the next exec whose command line is
    ``marker``."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 11)  # CONNECTOR
        self.sock.bind((0, 1))  # CN_IDX_PROC's group
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        op = struct.pack("I", 1)  # PROC_CN_MCAST_LISTEN
        cn = struct.pack("IIIIHH", 1, 1, 0, 0, len(op), 0) + op  # CN_IDX_PROC, CN_VAL_PROC
        self.sock.send(struct.pack("IHHII", 16 + len(cn), 3, 0, 0, 0) + cn)  # NLMSG_DONE

    def wait(self, marker: bytes, timeout: float = 30.0) -> tuple[int, int]:
        """A process that execs twice (``setpriv`` then the program) may show the marker
        already when its first exec event is read: every exec event of the pid that comes
        within 50 ms is read too, and the last one counts."""
        found: tuple[int, int] | None = None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if found is not None:
                left = min(left, 0.05)
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                if found is not None:
                    return found
                raise TimeoutError(f"no exec of {marker!r} within {timeout} s")
            for pid, ts in self._execs(self.sock.recv(65536)):
                if found is not None and pid == found[0]:
                    found = (pid, ts)
                elif found is None:
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        cmdline = b""
                    if cmdline == marker:
                        found = (pid, ts)

    @staticmethod
    def _execs(data: bytes) -> Iterator[tuple[int, int]]:
        off = 0
        while off + 16 <= len(data):
            length = struct.unpack_from("I", data, off)[0]
            if length < 16:
                return
            event = off + 16 + 20  # nlmsghdr, cn_msg
            what, _cpu, ts = struct.unpack_from("IIQ", data, event)
            if what == 2:  # PROC_EVENT_EXEC
                yield struct.unpack_from("I", data, event + 16)[0], ts
            off += (length + 3) & ~3

    def close(self) -> None:
        self.sock.close()


def open_exec_watch() -> ExecWatch | None:
    try:
        return ExecWatch()
    except OSError:
        return None


# ---- the supervisors -------------------------------------------------------------------------

class Supervised:
    """A supervisor running one program; ``start`` returns the program's first pid."""

    name = "?"
    tick = 0.0  # the period of its loop's checks: kills are spread over it

    def start(self, argv: list[str], tmp: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Prismatic(Supervised):
    name = "prismatic"

    def start(self, argv: list[str], tmp: Path, ready: Any = None) -> None:
        self.node = start_node("bench.apps:empty", tmp / "d")
        self.conn = p.connect(tmp / "d")
        self.events = p.open_event_stream(tmp / "d", "supervisor.root.victim.")
        self.stream = self.events.__enter__()
        self.conn.start_child("", p.ChildSpec(id="victim", start=p.Program(
            argv=argv, ready=ready, start_timeout=30)), timeout=60)

    def started_after(self, old: int) -> int:
        """CLOCK_MONOTONIC ns of the replacement's child_started."""
        e = self.stream.wait_for(lambda e: e.kind == "child_started" and e.pid != old, 30)
        return int(e.mono * 1e9)

    def stop(self) -> None:
        self.events.__exit__(None, None, None)
        self.conn.close()
        stop_node(self.node)


class Supervisord(Supervised):
    name = "supervisord"
    tick = 1.0  # its poll loop's timeout: a SIGCHLD does not cut it short

    def start(self, argv: list[str], tmp: Path) -> None:
        conf = tmp / "supervisord.conf"
        conf.write_text(
            "[supervisord]\nnodaemon=true\n"
            f"logfile={tmp}/supervisord.log\npidfile={tmp}/supervisord.pid\n"
            f"childlogdir={tmp}\n"
            f"[unix_http_server]\nfile={tmp}/supervisor.sock\n"
            "[program:victim]\n"
            f"command={' '.join(argv)}\n"
            "autorestart=true\nstartsecs=0\n")
        self.proc = subprocess.Popen([str(VENV_BIN / "supervisord"), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class Circus(Supervised):
    name = "circus"
    tick = 5.0  # check_delay: the arbiter looks for dead processes that often

    def start(self, argv: list[str], tmp: Path) -> None:
        conf = tmp / "circus.ini"
        conf.write_text(
            "[circus]\n"
            f"endpoint = ipc://{tmp}/circus.sock\n"
            f"pubsub_endpoint = ipc://{tmp}/circus-pub.sock\n"
            f"stats_endpoint = ipc://{tmp}/circus-stats.sock\n"
            "statsd = False\n"
            "[watcher:victim]\n"
            f"cmd = {argv[0]}\nargs = {' '.join(argv[1:])}\n"
            "numprocesses = 1\n"
            f"working_dir = {tmp}\n")
        self.proc = subprocess.Popen([str(VENV_BIN / "circusd"), str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def installed(name: str) -> bool:
    exe = {"supervisord": "supervisord", "circus": "circusd"}.get(name)
    return exe is None or (VENV_BIN / exe).exists() or shutil.which(exe) is not None


@contextmanager
def running(sup: Supervised, argv: list[str], **kw: object) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        sup.start(argv, Path(tmp), **kw)  # type: ignore[call-arg]
        try:
            yield Path(tmp)
        finally:
            sup.stop()


# ---- the measures ----------------------------------------------------------------------------

def kill_dead(pid: int) -> int:
    """SIGKILL ``pid`` and return once it is dead (a listener's socket accepts until then):
    the CLOCK_MONOTONIC ns of the kill."""
    fd = os.pidfd_open(pid)
    try:
        t0 = time.monotonic_ns()
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        select.select([fd], [], [])
        return t0
    finally:
        os.close(fd)


def kill_loop(kills: int, first: int, replaced: Callable[[int], tuple[int, int]],
              tick: float = 0.0) -> list[float]:
    """SIGKILL the program ``kills`` times; ``replaced(old)`` waits for the replacement and
    returns (its pid, CLOCK_MONOTONIC ns it was ready). Latencies in seconds. Each kill
    comes PACE_S plus a random part of ``tick`` after the last replacement: a supervisor
    that checks on a timer is killed at every phase of it, as a crash would be."""
    pid, lat = first, []
    for _ in range(kills):
        t0 = kill_dead(pid)
        pid, ready = replaced(pid)
        lat.append((ready - t0) / 1e9)
        time.sleep(PACE_S + _random.uniform(0, tick))
    return lat


def by_exec(sup: Supervised, kills: int, watch: ExecWatch, marker: list[str]) -> list[float]:
    want = b"\0".join(a.encode() for a in marker) + b"\0"
    with running(sup, marker):
        first, _ = watch.wait(want)

        def replaced(old: int) -> tuple[int, int]:
            return watch.wait(want)

        return kill_loop(kills, first, replaced, sup.tick)


def pid_on(port: int) -> int:
    """The pid listening on ``port`` (from /proc/net/tcp and the fds of processes)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[1].endswith(f":{port:04X}") and f[3] == "0A":  # LISTEN
            inode = f[9]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return int(proc.name)
        except OSError:
            continue
    raise LookupError(f"nobody listens on {port}")


def by_port(sup: Supervised, kills: int, port: int, argv: list[str]) -> list[float]:
    with running(sup, argv):
        wait_port(port)

        def replaced(old: int) -> tuple[int, int]:
            ready = wait_port(port)
            return pid_on(port), ready

        return kill_loop(kills, pid_on(port), replaced, sup.tick)


def prismatic_rows(kills: int, watch: ExecWatch | None, marker: list[str], port: int,
                   listener: list[str]) -> tuple[list[float], list[float], list[float],
                                                 list[float]]:
    """Prismatic, each program measured both ways at once: (exec, child_started) for sleep,
    (port accepts, child_started) for the listener."""
    want = b"\0".join(a.encode() for a in marker) + b"\0"
    sup = Prismatic()
    execs: list[float] = []
    started: list[float] = []
    with running(sup, marker):
        pid = next(c.pid for c in sup.conn.which_children("") if c.id == "victim")
        if watch is not None:
            watch.wait(want)  # the first start's
        for _ in range(kills):
            t0 = kill_dead(pid)
            if watch is not None:
                new, t_exec = watch.wait(want)
                execs.append((t_exec - t0) / 1e9)
            t_started = sup.started_after(pid)
            started.append((t_started - t0) / 1e9)
            pid = next(c.pid for c in sup.conn.which_children("") if c.id == "victim")
            time.sleep(PACE_S)
    sup = Prismatic()
    accepted: list[float] = []
    checked: list[float] = []
    with running(sup, listener, ready=p.PortCheck(port=port)):
        pid = pid_on(port)
        for _ in range(kills // 2):
            t0 = kill_dead(pid)
            t_port = wait_port(port)
            t_started = sup.started_after(pid)
            accepted.append((t_port - t0) / 1e9)
            checked.append((t_started - t0) / 1e9)
            pid = pid_on(port)
            time.sleep(PACE_S)
    return execs, started, accepted, checked


def bench_popen(kills: int, argv: list[str], port: int | None) -> list[float]:
    proc = subprocess.Popen(argv)
    if port is not None:
        wait_port(port)
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
            wait_port(port)
        lat.append(time.monotonic() - t0)
        time.sleep(PACE_S)
    proc.kill()
    proc.wait()
    return lat


def popen_exec(kills: int, watch: ExecWatch, marker: list[str]) -> list[float]:
    want = b"\0".join(a.encode() for a in marker) + b"\0"
    proc = subprocess.Popen(marker)
    watch.wait(want)
    lat = []
    for _ in range(kills):
        t0 = time.monotonic_ns()
        proc.kill()
        proc.wait()
        proc = subprocess.Popen(marker)
        _, t = watch.wait(want)
        lat.append((t - t0) / 1e9)
        time.sleep(PACE_S)
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
    ap.add_argument("--peer-kills", type=int, default=30,
                    help="kills per peer (supervisord and circus) and measure")
    ap.add_argument("--pool", type=int, default=200)
    args = ap.parse_args()
    marker = ["sleep", f"3600.{os.getpid()}"]  # a command line unique to this run
    port = free_port()
    script = Path(tempfile.mkdtemp()) / "listener.py"  # a file: peers' configs take one line
    script.write_text(LISTENER)
    listener = [sys.executable, "-S", str(script), str(port)]
    watch = open_exec_watch()
    rows: list[tuple[str, ...]] = []

    def row(figure: str, who: str, xs: list[float] | None, note: str = "") -> None:
        if xs is None or not xs:
            rows.append((figure, who, "-", "-", "-", note))
            return
        rows.append((figure, who, f"{pct(xs, 0.5) * 1e3:.2f}", f"{pct(xs, 0.99) * 1e3:.2f}",
                     str(len(xs)), note))

    no_watch = "no proc connector here (needs root)"
    execs, started, accepted, checked = prismatic_rows(args.kills, watch, marker, port,
                                                        listener)
    sleep_fig, port_fig = "kill -> exec, sleep", "kill -> port accepts, listener"
    row(sleep_fig, "prismatic", execs or None, "" if watch else no_watch)
    for peer in (Supervisord(), Circus()):
        if not installed(peer.name):
            row(sleep_fig, peer.name, None, "not installed")
        elif watch is None:
            row(sleep_fig, peer.name, None, no_watch)
        else:
            row(sleep_fig, peer.name, by_exec(peer, args.peer_kills, watch, marker))
    row(sleep_fig, "Popen loop", popen_exec(args.kills, watch, marker) if watch else None,
        "" if watch else no_watch)
    row(port_fig, "prismatic", accepted)
    for peer in (Supervisord(), Circus()):
        if not installed(peer.name):
            row(port_fig, peer.name, None, "not installed")
        else:
            row(port_fig, peer.name, by_port(peer, args.peer_kills // 2, port, listener))
    row(port_fig, "Popen loop", bench_popen(args.kills // 2, listener, port))
    row("kill -> child_started, sleep (at exec)", "prismatic", started,
        "the supervisor's own report")
    row("kill -> child_started, listener (port)", "prismatic", checked,
        "the supervisor's own report")
    row("kill -> Popen returned, sleep", "Popen loop",
        bench_popen(args.kills, marker, None))
    if watch is not None:
        watch.close()
    print_table(("figure", "supervisor", "p50 ms", "p99 ms", "n", "note"), rows)
    per = bench_memory(args.pool)
    print(f"supervisor private memory per program child ({args.pool} children): "
          f"{per / 1024:.1f} KiB")
    shutil.rmtree(script.parent)


if __name__ == "__main__":
    main()
