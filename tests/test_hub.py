"""The hub (prismatic/_hub.py): its own checks on processes (probing a mailbox, watching a
pid), and its defences against local peers, each attack made against a real node: another
user squatting its name or connecting to it, a process acting for another's pid, descriptor
exhaustion (the node's RLIMIT_NOFILE lowered so it runs in seconds), and partial frames
held open to grow its memory. Real sockets and pidfds throughout."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

import prismatic as p
from prismatic import _registry
from prismatic._address import Pid, own_pid
from prismatic._errors import NodeError
from prismatic._hub import Hub
from prismatic._hubclient import HubClient
from prismatic._nodeinfo import hub_address, mailbox_address
from prismatic.transports._framing import HEADER, WIRE_VERSION, encode_frame
from prismatic.transports._messages import (
    ExitOfReq, HubReply, LinkReq, RegisterReq, UnregisterReq, WhereisReq,
)
from tests.conftest import (
    NOBODY, REPO, module_node, run_as_nobody, squatted_by_nobody, wait_until,
)

NODE = f"hubtest-{os.getpid()}"


def hub() -> Hub:
    return Hub(NODE, on_dead_letter=lambda note: None)


@contextlib.contextmanager
def no_free_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def mailbox(ospid: int, backlog: int = 16) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(mailbox_address(NODE, ospid))
    s.listen(backlog)
    try:
        yield s
    finally:
        s.close()


def test_a_probe_says_dead_only_when_the_mailbox_refuses():
    h = hub()
    with mailbox(4242):
        assert h.probe_alive(Pid(NODE, 4242))
    assert not h.probe_alive(Pid(NODE, 4242))  # closed: refused
    assert not h.probe_alive(Pid(NODE, 2 ** 22 + 7))  # never existed


def test_a_probe_asks_the_holder_of_the_address_who_it_is():
    """An exact Pid is alive only if the process listening at its address is the one it
    names: same ospid, same start time, same node incarnation (see _address)."""
    h = hub()
    h.creation = 77
    me = own_pid(NODE, 77)
    with mailbox(me.ospid):  # bound by this very process: the holder is me
        assert h.probe_alive(me)
        assert h.identify(Pid(NODE, me.ospid)) == me  # a loose Pid is completed
        assert not h.probe_alive(Pid(NODE, me.ospid, 77, me.start + 1))  # an earlier holder
        assert not h.probe_alive(Pid(NODE, me.ospid, 76, me.start))  # an earlier incarnation
    with mailbox(4244):  # bound by this process, not by pid 4244
        assert h.probe_alive(Pid(NODE, 4244))  # loose: whoever holds the address
        assert not h.probe_alive(Pid(NODE, 4244, 77, 5))


def test_an_exit_retires_the_exact_pid_even_when_its_start_was_never_reported():
    h = hub()
    pid = Pid(NODE, 4245, 0, 123)
    h.registry, _ = _registry.decide(h.registry, _registry.Register("n", pid))
    h.process_exited(4245, p.Killed(9))  # killed in init: no start report came first
    assert h.exits[pid] == p.Killed(9) and not h.registry.names
    h.process_exited(4245, p.Normal())  # a second report of the same exit: ignored
    assert h.exits[pid] == p.Killed(9) and len(h.exits) == 1
    assert h.exit_of(Pid(NODE, 4245)) == p.Killed(9)  # a loose Pid: its last holder


def test_a_mailbox_with_a_full_accept_queue_is_alive():
    h = hub()
    with mailbox(4243, backlog=0) as box:
        held = []
        try:
            for _ in range(4):  # fill the accept queue (nobody accepts)
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.setblocking(False)
                try:
                    c.connect(box.getsockname())
                except BlockingIOError:
                    c.close()
                    break
                held.append(c)
            assert h.probe_alive(Pid(NODE, 4243))
        finally:
            for c in held:
                c.close()
    assert h.counters["probe_failed"] == 0


def _probe_without_fds() -> None:
    h = hub()
    with no_free_fds():
        alive = h.probe_alive(Pid(NODE, 2 ** 22 + 9))
    assert alive  # a wrong "dead" would fire a false DOWN or give a name away
    assert h.counters["probe_failed"] == 1


def _watch_without_fds() -> None:
    async def main() -> Hub:
        h = hub()
        with no_free_fds():
            h.watch(Pid(NODE, os.getpid()))
        h.watch(Pid(NODE, 2 ** 22 + 11))  # no such process: nothing to watch, nothing said
        return h

    h = asyncio.run(main())
    assert h.counters["watch_failed"] == 1
    assert not h.watched


# ---- against a real node ----------------------------------------------------------------------

node = module_node("tests.messaging_apps:agents")
NO_SUCH_OSPID = 2 ** 22 + 13  # above the kernel's pid limit: never a process


def metric(n, name: str) -> float:
    """A counter of the node, as its metrics show it (``prismatic_<name>_total``)."""
    for line in n.conn.metrics().splitlines():
        if line.startswith(f"prismatic_{name}_total "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def ask(node_name: str, make, timeout: float = 5.0) -> HubReply:
    hub = HubClient(node_name)
    try:
        return hub.request(make, timeout)
    finally:
        hub.close()


def test_a_process_cannot_unregister_another_ones_name(node):
    name = node.conn.status().node
    alpha = node.conn.whereis("alpha")
    before = metric(node, "hub_not_permitted")
    reply = ask(name, lambda ref: UnregisterReq(ref, "alpha", alpha))
    assert reply.error == "not_permitted"
    assert node.conn.whereis("alpha") == alpha
    assert metric(node, "hub_not_permitted") == before + 1


def test_a_process_cannot_register_a_name_for_another_pid(node):
    name = node.conn.status().node
    reply = ask(name, lambda ref: RegisterReq(ref, "stolen", Pid(name, 1)))
    assert reply.error == "not_permitted"
    assert node.conn.whereis("stolen") is None


def test_a_process_cannot_link_a_live_worker_to_a_dead_pid(node):
    """Linking beta to a dead pid would send beta EXIT(noproc) and kill it."""
    name = node.conn.status().node
    beta = node.conn.whereis("beta")
    reply = ask(name, lambda ref: LinkReq(ref, beta, Pid(name, NO_SUCH_OSPID)))
    assert reply.error == "not_permitted"
    # beta's EXIT would be on its way before this reply: the hub waits a second for beta to
    # exit, and answers None only if it still lives
    assert ask(name, lambda ref: ExitOfReq(ref, beta, 1.0)).value is None
    assert node.conn.whereis("beta") == beta


def test_the_hub_refuses_another_user(node):
    name = node.conn.status().node
    before = metric(node, "hub_refused")

    def connect() -> int:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(hub_address(name))
        try:
            s.sendall(encode_frame(WhereisReq(1, "alpha")))
            return 0 if s.recv(100) == b"" else 1  # closed unanswered
        except (BrokenPipeError, ConnectionResetError):
            return 0

    assert run_as_nobody(connect) == 0
    assert metric(node, "hub_refused") == before + 1


def test_a_squatted_hub_name_is_reported_with_its_holder(tmp_path):
    """Another user binds the node's hub address first: the node says who holds it, and a
    client refuses to trust it."""
    name = f"squat{os.getpid()}"
    with squatted_by_nobody(hub_address(name)) as squatter:
        with pytest.raises(NodeError, match=f"uid {NOBODY}.*pid {squatter}.*another user"):
            ask(name, lambda ref: WhereisReq(ref, "x"))
        proc = subprocess.run([sys.executable, "-m", "prismatic.node", "--app",
                               "tests.apps:one_for_one", "--data-dir", str(tmp_path / "d"),
                               "--name", name],
                              cwd=REPO, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    assert f"uid {NOBODY} (ANOTHER USER), pid {squatter}" in errors[0]


def test_a_mailbox_address_squatted_by_another_user_is_a_dead_process(node):
    """Another user binds the address of a pid that is not a process of the node: the hub
    takes it as dead (no false "alive"), and a cast to it is a dead letter."""
    name = node.conn.status().node
    ghost = Pid(name, NO_SUCH_OSPID - 1)
    before = metric(node, "hub_untrusted_mailboxes")
    with squatted_by_nobody(mailbox_address(name, ghost.ospid)):
        reply = ask(name, lambda ref: ExitOfReq(ref, ghost, 0.05))
        assert reply.value == {"kind": "noproc"}  # not None: alive
        assert node.conn.cast(ghost, "hello") is False
    assert metric(node, "hub_untrusted_mailboxes") == before + 1


def hold_connections(address: bytes, count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address)  # blocking: waits while the accept queue is full
        s.settimeout(5)
        held.append(s)
    return held


def answered(socks: list[socket.socket], frame) -> int:
    """How many of ``socks`` answer ``frame`` (the others were closed: refused)."""
    got = 0
    for s in socks:
        try:
            s.sendall(encode_frame(frame))
            got += s.recv(1 << 16) != b""
        except (BrokenPipeError, ConnectionResetError):
            pass
    return got


def test_one_process_gets_at_most_its_share_of_hub_connections(node):
    name = node.conn.status().node
    before = metric(node, "hub_refused_capacity")
    held = hold_connections(hub_address(name), 70)  # the cap is 64 per process
    try:
        got = answered(held, WhereisReq(1, "alpha"))
        assert 58 <= got <= 64  # the test process may hold a few hub connections already
        assert metric(node, "hub_refused_capacity") - before == 70 - got
        assert node.conn.whereis("alpha") is not None  # the node answers still
    finally:
        for s in held:
            s.close()


def node_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_connection_flood_leaves_the_node_its_reserve_of_descriptors(node_factory,
                                                                        monkeypatch):
    """~25,000 connections used to exhaust the node's descriptors, and libzmq then aborted
    the node (and its tree). With the node's limit lowered to what it uses + 300 and no
    per-process cap and a reserve of 64, a flood of 600 connections (from six threads at
    once) is refused once 64 descriptors are left;
    a new control connection (ZeroMQ) still opens, and the node answers."""
    monkeypatch.setenv("PRISMATIC_MAX_CONNECTIONS_PER_PID", "100000")
    monkeypatch.setenv("PRISMATIC_FD_RESERVE", "64")
    n = node_factory("tests.apps:one_for_one")
    name = n.conn.status().node
    limit = node_fds(n.proc.pid) + 300
    resource.prlimit(n.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # in bursts, from six threads
        held = [s for part in pool.map(lambda _: hold_connections(hub_address(name), 100),
                                       range(6)) for s in part]
    try:
        got = answered(held, WhereisReq(1, "nobody"))  # the others were refused (closed)
        assert got < 300
        assert limit - node_fds(n.proc.pid) >= 60
        with p.connect(n.data_dir) as fresh:  # a new ZeroMQ connection to the node
            assert fresh.status().node == name
        assert n.proc.poll() is None
        assert metric(n, "hub_refused_capacity") == 600 - got
    finally:
        for s in held:
            s.close()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def flood_partial_frames(address: bytes, conns: int, each: int) -> list[socket.socket]:
    """``conns`` connections, each sending ``each`` bytes of a frame that claims 60 MiB and
    never finishes it."""
    held = []
    chunk = b"\x00" * (1 << 20)
    for _ in range(conns):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(address)
        held.append(s)
        try:
            s.sendall(HEADER.pack(60 << 20, WIRE_VERSION))
            for _ in range(each >> 20):
                s.sendall(chunk)
        except OSError:
            pass  # dropped: the receiver closed it
    return held


MiB = 1 << 20


def test_partial_frames_cannot_grow_the_hubs_memory_without_bound(node_factory, monkeypatch):
    """16 connections each held an unfinished 60 MiB frame: the node grew by 1 GiB. With the
    buffered-bytes cap at 16 MiB, 16 connections sending 8 MiB each (128 MiB) grow it by
    little more than the cap; the ones over it are dropped and counted."""
    monkeypatch.setenv("PRISMATIC_MAX_BUFFERED_BYTES", str(16 * MiB))
    n = node_factory("tests.apps:one_for_one")
    name = n.conn.status().node
    before = rss(n.proc.pid)
    held = flood_partial_frames(hub_address(name), 16, 8 * MiB)
    try:
        wait_until(lambda: metric(n, "hub_frames_over_budget") >= 12, 10, "drops")
        assert rss(n.proc.pid) - before < 48 * MiB
        assert n.conn.whereis("nobody") is None  # the hub still answers
    finally:
        for s in held:
            s.close()


def in_fresh_process(check: str) -> str:
    """Run ``check`` (a function of this module) in a new interpreter and return its log:
    a descriptor limit of 0 in the test process itself would hit every live thread there
    (ZeroMQ's I/O threads of other tests' contexts abort the process when a socket fails)."""
    code = ("import logging, sys; logging.basicConfig(stream=sys.stderr, level=logging.INFO)\n"
            f"import tests.test_hub as t; t.{check}()")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    return out.stderr


def test_a_probe_that_cannot_run_takes_the_process_as_alive_and_says_so():
    assert "cannot tell whether" in in_fresh_process("_probe_without_fds")


def test_a_process_the_hub_cannot_watch_is_logged_and_counted():
    assert "cannot watch" in in_fresh_process("_watch_without_fds")
