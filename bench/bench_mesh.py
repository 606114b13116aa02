"""Node mesh benchmarks (issue: node mesh). Loopback only: every node on this host.

Run: ``python bench/bench_mesh.py [--kills N] [--losses N] [--soak SECONDS] [--pings N]``
(each 0 skips that part). Starts real nodes (empty trees) in a 5-node cluster and prints one
table: figure, value, target, and a baseline measured in this same run.

* SIGKILL -> declared down by every other member: the bench subscribes to
  ``cluster.node.#`` on the four survivors, SIGKILLs the fifth node's process and takes, per
  kill, the time until the last survivor's ``cluster.node.<name>.down`` event reached the
  bench (so it includes pub/sub delivery; the first survivor's is shown too). The killed
  node is then restarted under its name and the next kill waits until every member lists
  it alive again. Baselines: the killed node process's own teardown (from the kill until its
  pidfd is readable: the kernel closes its sockets only after unmapping its memory, so no
  peer can hear of the death sooner), and Erlang's 4 ms p50 (OTP 25, same machine kind;
  from the issue, not measured).
* Formation: five nodes launched at once (one listening on a fixed port, four joining it),
  until every node lists all five alive (the latest moment any node saw any member become
  alive, from the nodes' own tables): from launch, and from the moment the last node's mesh
  started. The nodes read the project's modules as bytecode compiled before the launch, as
  an installed package's are (:func:`compile_bytecode`): the start of a node is CPU-bound
  and five of them share the CPUs, so with ``PYTHONDONTWRITEBYTECODE`` set and no bytecode
  written, each would also compile every module it imports (~150 ms of CPU per node on a
  2-CPU VM, about 40% of its start: ~0.4 s more on the figure).
* Soak: every CPU saturated by busy loops, one node (in turn) SIGSTOPped for 200 ms every
  10 s; counts the ``down`` events all nodes published (each is a false declaration) and
  the suspicions of themselves the paused nodes refuted. The issue asks for 10 minutes
  (``--soak 600``); the default is one.
* Background traffic per node in a quiet 5-node cluster (frames and bytes sent per second,
  from each node's counters over 5 s); computed for 100 and 1,000 nodes from the protocol's
  parameters and the frame sizes measured here: probes and acks do not grow with N, the
  one-a-second full table exchange does (one update per member).
* Ping RTT: the bench joins as a peer with the cluster's keys and times ``ping`` -> ``ack``
  against one node (decode, decide, encode, CURVE both ways, through the node's uvloop).
  Baseline: a bare pyzmq DEALER -> ROUTER echo over TCP loopback with CURVE in a subprocess.

* Silent loss (root only, ``--losses N``): five nodes, each in a network namespace of its
  own with a veth on one bridge; ``N`` times one node's link is taken down (nothing resets,
  packets vanish): until every other node's ``down`` event; then the link comes back: until
  every node lists all five alive again (the partition healed, no restart). The next cut
  waits until every node's local health multiplier is back to 0. Baselines from
  the issue: Akka ~10 s, memberlist 5*log(N+1) probe periods, Erlang 64-69 s by default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import REPO, pct, print_table  # noqa: E402
from prismatic._client import NodeConnection  # noqa: E402
from prismatic._control import ClusterMembersCall  # noqa: E402
from prismatic.mesh._events import DetectorConfig  # noqa: E402
from prismatic.mesh._loop import MemberRow  # noqa: E402
from prismatic.mesh._secret import derive_keys, init_secret, read_secret  # noqa: E402
from prismatic.transports._mesh_frames import (  # noqa: E402
    Ack, Ping, Update, MemberState, decode_mesh_frame, encode_mesh_frame,
)

APP = "bench.apps:empty"
TAG = f"mb{os.getpid()}"


class Node:
    def __init__(self, tmp: Path, short: str, secret: Path, args: list[str],
                 prefix: tuple[str, ...] = ()) -> None:
        self.name = f"{short}{TAG}"
        self.data = tmp / self.name
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "prismatic.node", "--app", APP, "--name", self.name,
             "--data-dir", str(self.data), "--cluster-secret", str(secret), *args],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        self.ready = threading.Event()
        threading.Thread(target=self.read, daemon=True).start()
        self.conn: NodeConnection | None = None

    def read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if "tree started" in line:
                self.ready.set()

    def connect(self) -> NodeConnection:
        if self.conn is None:
            self.ready.wait(60)
            self.conn = NodeConnection(self.data, timeout=10)
        return self.conn

    def members(self) -> dict[str, MemberRow]:
        rows = msgspec.convert(self.connect()._call(
            lambda ref, cookie: ClusterMembersCall(ref, cookie)), list[MemberRow])
        return {r.name: r for r in rows}

    def counters(self) -> dict[str, float]:
        out = {}
        for line in self.connect().metrics().splitlines():
            if line.startswith("prismatic_cluster_") and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(60)


def all_alive(nodes: list[Node], n: int) -> bool:
    try:
        return all(sum(1 for r in x.members().values() if r.state is MemberState.ALIVE) == n
                   for x in nodes)
    except Exception:  # noqa: BLE001 - a node still starting
        return False


def wait(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.005)


def compile_bytecode() -> None:
    """The project's modules compiled to bytecode next to their sources (``__pycache__``,
    as any import writes it unless ``PYTHONDONTWRITEBYTECODE`` is set, and as pip writes it
    for an installed package), so no node compiles them again at its start (see the module
    doc). Python checks each file against its source's mtime and size: an edited module is
    compiled again, here or, if it changes later, by the node."""
    import compileall  # noqa: PLC0415 - only this step needs it

    for part in ("prismatic", "supervisors", "transports", "bench"):
        if not compileall.compile_dir(REPO / part, quiet=1):
            raise SystemExit(f"bench: cannot compile {REPO / part} to bytecode")


def formation(tmp: Path, secret: Path, port: int) -> tuple[list[Node], float, float]:
    """Times from the nodes' own tables: each row's ``since`` is the wall-clock moment that
    node saw that member become alive (its own row: its mesh starting), so the bench's
    polling does not count."""
    launch = time.time()
    nodes = [Node(tmp, "n0", secret, ["--listen", f"127.0.0.1:{port}", "--quiet"])]
    nodes += [Node(tmp, f"n{i}", secret, ["--join", f"127.0.0.1:{port}", "--quiet"])
              for i in range(1, 5)]
    for x in nodes:
        x.ready.wait(60)
    wait(lambda: all_alive(nodes, 5), 30, "five nodes to form a cluster")
    tables = [x.members() for x in nodes]
    formed = max(r.since for t in tables for r in t.values())
    last_up = max(r.since for t in tables for r in t.values() if r.this_node)
    return nodes, formed - launch, formed - last_up


def kills(tmp: Path, secret: Path, nodes: list[Node], port: int,
          n: int) -> tuple[list[float], list[float], list[float]]:
    """Per kill: until the last survivor's ``down`` event, until the killed node's process
    was torn down (its pidfd readable: no peer can hear of the death sooner), and until the
    first survivor's event."""
    out, gone, first = [], [], []
    for i in range(n):
        victim_i = 1 + i % 4
        victim = nodes[victim_i]
        survivors = [x for x in nodes if x is not victim]
        subs = []
        for x in survivors:
            s = x.connect().subscribe(f"cluster.node.{victim.name}.down")
            subs.append(s)
        if victim.conn is not None:
            victim.conn.close()
            victim.conn = None
        pidfd = os.pidfd_open(victim.proc.pid)
        t0 = time.monotonic()
        victim.proc.send_signal(signal.SIGKILL)
        select.select([pidfd], [], [], 5)
        gone.append(time.monotonic() - t0)
        os.close(pidfd)
        poller = zmq.Poller()
        for s in subs:
            poller.register(s._sock, zmq.POLLIN)  # each arrival timed as it comes
        waiting = {s._sock: s for s in subs}
        arrivals = []
        while waiting:
            ready = poller.poll(5000)
            if not ready:
                raise SystemExit("bench: a survivor never declared the killed node down")
            for sock, _ in ready:
                if sock in waiting and waiting[sock].next(0) is not None:
                    arrivals.append(time.monotonic())
                    poller.unregister(sock)
                    del waiting[sock]
        for s in subs:
            s.close()
        out.append(max(arrivals) - t0)
        first.append(min(arrivals) - t0)
        victim.proc.wait()
        nodes[victim_i] = Node(tmp, victim.name[:2], secret,
                               ["--join", f"127.0.0.1:{port}", "--quiet"])
        wait(lambda: all_alive(nodes, 5), 30, "the restarted node to rejoin")
    return out, gone, first


def soak(nodes: list[Node], seconds: float) -> tuple[int, int, int]:
    """Both CPUs saturated by busy loops, one node SIGSTOPped for 200 ms every 10 s (a
    different one each time): (false down declarations, pauses, refutations)."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
               for _ in range(os.cpu_count() or 2)]
    subs = [x.connect().subscribe("cluster.node.*.down") for x in nodes]
    before = sum(x.counters().get("prismatic_cluster_refutations_total", 0) for x in nodes)
    pauses = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            victim = nodes[pauses % len(nodes)]
            victim.proc.send_signal(signal.SIGSTOP)
            time.sleep(0.2)
            victim.proc.send_signal(signal.SIGCONT)
            pauses += 1
            time.sleep(min(9.8, max(0.0, end - time.monotonic())))
        time.sleep(2)  # a declaration in flight at the end still counts
    finally:
        for b in burners:
            b.kill()
            b.wait()
    false_downs = 0
    for sub in subs:
        while sub.next(0.05) is not None:
            false_downs += 1
        sub.close()
    after = sum(x.counters().get("prismatic_cluster_refutations_total", 0) for x in nodes)
    return false_downs, pauses, int(after - before)


class Net:
    """Network namespaces ``<tag>h<i>`` (address ``10.<a>.<b>.<i>``), veths on a bridge in
    ``<tag>br``: a link taken down on the bridge's side is a silent loss."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"pmb{os.getpid() % 100000}"
        self.subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
        self.br = f"{self.tag}br"
        self.hosts = [f"{self.tag}h{i}" for i in range(1, hosts + 1)]
        run = lambda *c: subprocess.run(c, check=True, capture_output=True)  # noqa: E731
        run("ip", "netns", "add", self.br)
        run("ip", "-n", self.br, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.br, "link", "set", "br0", "up")
        for i, ns in enumerate(self.hosts, 1):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name",
                f"v{i}", "netns", self.br)
            run("ip", "-n", ns, "addr", "add", f"{self.subnet}.{i}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", self.br, "link", "set", f"v{i}", "master", "br0")
            run("ip", "-n", self.br, "link", "set", f"v{i}", "up")

    def link(self, i: int, up: bool) -> None:
        subprocess.run(["ip", "-n", self.br, "link", "set", f"v{i}", "up" if up else "down"],
                       check=True, capture_output=True)

    def close(self) -> None:
        for ns in (*self.hosts, self.br):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def silent_losses(tmp: Path, secret: Path, n: int) -> tuple[list[float], list[float]]:
    """Five nodes in namespaces; ``n`` times a node's link goes down: until every other
    node's ``down`` event, then (link up) until all five list all five alive again."""
    net = Net(5)
    nodes: list[Node] = []
    detect, heal = [], []
    try:
        for i in range(1, 6):
            args = ["--listen", f"{net.subnet}.{i}:4370", "--quiet"]
            if i > 1:
                args += ["--join", f"{net.subnet}.1:4370"]
            nodes.append(Node(tmp / "netns", f"s{i}", secret, args,
                              prefix=("ip", "netns", "exec", net.hosts[i - 1])))
        wait(lambda: all_alive(nodes, 5), 30, "five namespaced nodes to form a cluster")
        for k in range(n):
            lost = 1 + k % 5
            victim = nodes[lost - 1]
            others = [x for x in nodes if x is not victim]
            subs = [x.connect().subscribe(f"cluster.node.{victim.name}.down") for x in others]
            t0 = time.monotonic()
            net.link(lost, up=False)
            for sub in subs:
                if sub.next(10) is None:
                    raise SystemExit("bench: a silently lost node was never declared dead")
                sub.close()
            detect.append(time.monotonic() - t0)
            net.link(lost, up=True)
            t1 = time.monotonic()
            wait(lambda: all_alive(nodes, 5), 60, "the partition to heal")
            heal.append(time.monotonic() - t1)
            # The next cut hits a healthy cluster: the partition raised Lifeguard's local
            # health multiplier (missed nacks), which stretches probe periods until enough
            # probes succeed again.
            wait(lambda: all(x.counters().get("prismatic_cluster_local_health", 0) == 0
                             for x in nodes), 30, "local health to recover")
    finally:
        for x in nodes:
            x.stop()
        net.close()
    return detect, heal


def traffic(nodes: list[Node], seconds: float) -> tuple[float, float]:
    def totals() -> tuple[float, float]:
        frames = byts = 0.0
        for x in nodes:
            c = x.counters()
            frames += c.get("prismatic_cluster_frames_sent_total", 0.0)
            byts += sum(v for k, v in c.items() if k.startswith("prismatic_cluster_bytes_sent"))
        return frames, byts

    f0, b0 = totals()
    time.sleep(seconds)
    f1, b1 = totals()
    return (f1 - f0) / seconds / len(nodes), (b1 - b0) / seconds / len(nodes)


def mesh_ping(node: Node, secret: Path, n: int) -> list[float]:
    keys = derive_keys(read_secret(secret))
    ctx = zmq.Context()
    inbox = ctx.socket(zmq.ROUTER)
    inbox.curve_server = True
    inbox.curve_publickey = keys.public
    inbox.curve_secretkey = keys.secret
    inbox.bind("tcp://127.0.0.1:0")
    me = inbox.get_string(zmq.LAST_ENDPOINT)
    out_sock = ctx.socket(zmq.DEALER)
    out_sock.curve_serverkey = keys.public
    out_sock.curve_publickey = keys.public
    out_sock.curve_secretkey = keys.secret
    addr = "tcp://" + node.members()[node.name].address
    out_sock.connect(addr)
    back: dict[str, zmq.Socket] = {}
    inc = time.time_ns() // 1_000_000
    rtts = []
    for seq in range(n + 200):
        t0 = time.perf_counter()
        out_sock.send(encode_mesh_frame(Ping("bench", me, inc, seq, node.name)))
        while True:
            _, data = inbox.recv_multipart()
            frame, _ = decode_mesh_frame(data)
            if isinstance(frame, Ack) and frame.seq == seq and frame.src == node.name:
                break
            if isinstance(frame, Ping):  # the node probes us too: answer, stay alive
                if frame.addr not in back:
                    s = ctx.socket(zmq.DEALER)
                    s.curve_serverkey = keys.public
                    s.curve_publickey = keys.public
                    s.curve_secretkey = keys.secret
                    s.connect(frame.addr)
                    back[frame.addr] = s
                back[frame.addr].send(encode_mesh_frame(Ack("bench", me, inc, frame.seq)))
        if seq >= 200:  # warm-up: connections, the node's table
            rtts.append(time.perf_counter() - t0)
    for s in (inbox, out_sock, *back.values()):
        s.close(0)
    ctx.term()
    return rtts


_ECHO = """
import sys, zmq
pub, sec = sys.argv[1].encode(), sys.argv[2].encode()
ctx = zmq.Context(); r = ctx.socket(zmq.ROUTER)
r.curve_server = True; r.curve_publickey = pub; r.curve_secretkey = sec
port = r.bind_to_random_port("tcp://127.0.0.1"); print(port, flush=True)
while True:
    r.send_multipart(r.recv_multipart())
"""


@contextlib.contextmanager
def open_curve_echo(script: str = _ECHO) -> Iterator[zmq.Socket[bytes]]:
    """A DEALER, CURVE client over TCP loopback, connected to ``script`` (the bare echo by
    default) run in a subprocess with fresh keys; both gone on the way out."""
    keys = derive_keys(os.urandom(32))
    echo = subprocess.Popen([sys.executable, "-c", script, keys.public.decode(),
                             keys.secret.decode()], stdout=subprocess.PIPE, text=True)
    try:
        port = int(echo.stdout.readline())  # type: ignore[union-attr]
        ctx = zmq.Context()
        d = ctx.socket(zmq.DEALER)
        d.curve_serverkey = keys.public
        d.curve_publickey = keys.public
        d.curve_secretkey = keys.secret
        d.connect(f"tcp://127.0.0.1:{port}")
        try:
            yield d
        finally:
            d.close(0)
            ctx.term()
    finally:
        echo.kill()
        echo.wait()


def bare_curve_rtt(n: int, script: str = _ECHO) -> list[float]:
    msg = msgspec.msgpack.encode(Ping("bench", "tcp://127.0.0.1:1", 1, 1, "x",
                                      (Update("a", "tcp://h:1", 1, MemberState.ALIVE),)))
    rtts = []
    with open_curve_echo(script) as d:
        for i in range(n + 200):
            t0 = time.perf_counter()
            d.send(msg)
            msgspec.msgpack.decode(d.recv())
            if i >= 200:
                rtts.append(time.perf_counter() - t0)
    return rtts


def computed_traffic(n: int, ping_bytes: float, update_bytes: float) -> tuple[float, float]:
    """Frames and bytes a node sends per second in a quiet cluster of ``n``: a ping per
    period, an ack per ping it receives (one per period on average), one sync_req a second
    to a live member and, on average, one sync reply; the table holds ``n`` updates."""
    cfg = DetectorConfig()
    per_s = 1 / cfg.probe_interval
    table = 60 + n * update_bytes
    frames = 2 * per_s + 2 / cfg.sync_interval
    return frames, 2 * per_s * ping_bytes + 2 * table / cfg.sync_interval


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=50, help="node SIGKILLs (0: skip)")
    ap.add_argument("--pings", type=int, default=5000, help="ping round trips (0: skip)")
    ap.add_argument("--losses", type=int, default=20,
                    help="silent losses in network namespaces (0: skip; needs root)")
    ap.add_argument("--soak", type=float, default=60.0,
                    help="seconds of CPU saturation with a 200 ms SIGSTOP every 10 s (0: skip)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-mesh-"))
    secret = init_secret(tmp / "cluster.secret")
    port = 20000 + os.getpid() % 20000
    compile_bytecode()
    nodes, from_launch, from_up = formation(tmp, secret, port)
    try:
        frames_s, bytes_s = traffic(nodes, 5.0)
        false_downs, pauses, refuted = soak(nodes, args.soak) if args.soak else (0, 0, 0)
        ping = mesh_ping(nodes[0], secret, args.pings) if args.pings else []
        bare = bare_curve_rtt(args.pings) if args.pings else []
        detect, gone, first = kills(tmp, secret, nodes, port, args.kills) if args.kills \
            else ([], [], [])
    finally:
        for x in nodes:
            x.stop()
    (tmp / "netns").mkdir()
    losses, heals = silent_losses(tmp, secret, args.losses) \
        if args.losses and os.geteuid() == 0 else ([], [])
    ping_bytes = len(encode_mesh_frame(Ack("n1" + TAG, "tcp://127.0.0.1:40000",
                                           1796166265013, 1234)))
    update_bytes = len(msgspec.msgpack.encode(Update("n1" + TAG, "tcp://10.0.0.1:40000",
                                                     1796166265013, MemberState.ALIVE)))
    us = 1e6
    rows = [
        *([("SIGKILL -> down at all 4 others, p50", f"{pct(detect, .5) * 1000:.1f} ms",
            "", f"node process torn down: {pct(gone, .5) * 1000:.1f} ms; Erlang: 4 ms (issue)"),
           (f"SIGKILL -> down at all 4 others, p99 ({len(detect)} kills)",
            f"{pct(detect, .99) * 1000:.1f} ms", "<= 20 ms p99",
            f"node process torn down: {pct(gone, .99) * 1000:.1f} ms; Erlang: 14 ms max"),
           ("SIGKILL -> down at the first of 4 others, p50 / p99",
            f"{pct(first, .5) * 1000:.1f} / {pct(first, .99) * 1000:.1f} ms", "", "")]
          if detect else []),
        *([(f"silent loss -> dead at all 4 others, p50 / p99 ({len(losses)} link cuts)",
            f"{pct(losses, .5) * 1000:.0f} / {pct(losses, .99) * 1000:.0f} ms",
            "<= 1 s p99", "Akka: ~10 s; memberlist: 5*log(N+1) s; Erlang: 64-69 s"),
           ("partition healed, link up -> all 5 list all 5 alive, p50 / p99",
            f"{pct(heals, .5) * 1000:.0f} / {pct(heals, .99) * 1000:.0f} ms", "<= 2 s",
            "")] if losses else []),
        ("5 nodes formed, from launch", f"{from_launch * 1000:.0f} ms", "<= 1 s",
         "Erlang: 1.55 s p50 (issue)"),
        ("5 nodes formed, from last mesh up", f"{from_up * 1000:.0f} ms", "<= 100 ms",
         "Erlang: 217 ms (issue)"),
        *([(f"false down declarations, {args.soak:.0f}s soak", f"{false_downs}", "0",
            f"CPUs saturated, {pauses} SIGSTOPs of 200 ms, {refuted} suspicions refuted")]
          if args.soak else []),
        ("background per node, 5 nodes (measured)",
         f"{frames_s:.1f} frames/s, {bytes_s:.0f} B/s", "", ""),
    ]
    for n in (100, 1000):
        f, b = computed_traffic(n, ping_bytes, update_bytes)
        rows.append((f"background per node, {n} nodes (computed)",
                     f"{f:.1f} frames/s, {b / 1024:.1f} KiB/s", "", ""))
    if ping:
        rows.append(("mesh ping -> ack RTT p50 / p99", f"{pct(ping, .5) * us:.0f} / "
                     f"{pct(ping, .99) * us:.0f} us", "",
                     f"bare pyzmq CURVE DEALER->ROUTER echo: {pct(bare, .5) * us:.0f} / "
                     f"{pct(bare, .99) * us:.0f} us"))
    print(f"mesh bench: 5 nodes on loopback, {len(detect)} SIGKILLs, {len(ping)} pings; "
          f"detector {json.dumps(msgspec.to_builtins(DetectorConfig()))}")
    print_table(("figure", "value", "target", "baseline (same run)"), rows)


if __name__ == "__main__":
    main()
