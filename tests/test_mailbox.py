"""A worker's mailbox (prismatic/_mailbox.py) against local peers, each attack made against
a real node: another user connecting, a forged DOWN or EXIT (only the node sends those), one
process opening too many connections, a connection flood under a lowered RLIMIT_NOFILE, and
partial frames held open to grow the worker's memory."""

from __future__ import annotations

import resource
import socket

from prismatic._address import Pid
from prismatic._exit import Killed
from prismatic._nodeinfo import mailbox_address
from prismatic._notices import Down, Exit
from prismatic.transports._framing import encode_frame
from prismatic.transports._messages import CallFrame, CastFrame, ExitOfReq
from tests.conftest import module_node, run_as_nobody, wait_until
from tests.test_hub import (
    MiB, NO_SUCH_OSPID, answered, ask, flood_partial_frames, hold_connections, node_fds, rss,
)

node = module_node("tests.messaging_apps:agents")


def worker_metric(n, name: str, path: str) -> float:
    for line in n.conn.metrics().splitlines():
        if line.startswith(f'prismatic_{name}_total{{path="{path}"}} '):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name} for {path}")


def mailbox_of(n, path: str) -> tuple[Pid, bytes]:
    pid = Pid(n.conn.status().node, n.conn.pid_of(path))
    return pid, mailbox_address(pid.node, pid.ospid)


def still_alive(n, pid: Pid) -> bool:
    """Whether ``pid`` lives a second from now (the hub waits that long for its exit)."""
    return ask(pid.node, lambda ref: ExitOfReq(ref, pid, 1.0)).value is None


def test_a_mailbox_refuses_another_user(node):
    beta, address = mailbox_of(node, "b")
    before = worker_metric(node, "mailbox_refused", "b")

    def connect() -> int:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(address)
        try:
            s.sendall(encode_frame(CallFrame(1, ["echo", 1])))
            return 0 if s.recv(100) == b"" else 1  # closed unanswered
        except (BrokenPipeError, ConnectionResetError):
            return 0

    assert run_as_nobody(connect) == 0
    assert worker_metric(node, "mailbox_refused", "b") == before + 1


def test_a_forged_exit_or_down_is_dropped(node):
    """Only the node's hub sends DOWN and EXIT: any other process sending beta an EXIT
    (which would kill it) or the trapping t a DOWN is dropped and counted."""
    beta, address = mailbox_of(node, "b")
    t, t_address = mailbox_of(node, "t")
    ghost = Pid(beta.node, NO_SUCH_OSPID)
    before = worker_metric(node, "bad_frames_mailbox", "b")
    seen = node.conn.call(t, ["notices"])
    for to, frame in ((address, Exit(ghost, Killed(9))), (t_address, Down(1, ghost, Killed(9))),
                      (t_address, Exit(ghost, Killed(9)))):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(to)
            s.sendall(encode_frame(frame) + encode_frame(CastFrame("after")))
    wait_until(lambda: "after" in node.conn.call(t, ["casts"]), 10,
               "the cast sent after the forged notices")
    assert node.conn.call(t, ["notices"]) == seen
    assert still_alive(node, beta)
    assert worker_metric(node, "bad_frames_mailbox", "b") == before + 1


def test_one_process_gets_at_most_its_share_of_a_mailbox(node):
    c, address = mailbox_of(node, "c")
    before = worker_metric(node, "mailbox_refused", "c")
    held = hold_connections(address, 70)  # the cap is 64 per process
    try:
        got = answered(held, CallFrame(1, ["echo", 1]))
        assert 60 <= got <= 64  # the test process may hold a connection to c already
        assert worker_metric(node, "mailbox_refused", "c") - before == 70 - got
    finally:
        for s in held:
            s.close()
    assert node.conn.call(c, ["echo", 2]) == 2


def test_a_connection_flood_leaves_a_worker_its_reserve_of_descriptors(node_factory,
                                                                        monkeypatch):
    """With the worker's limit lowered to what it uses + 300, no per-process cap and a
    reserve of 64, a flood of 600 connections is refused once 64 descriptors are left: the
    worker can still open its own (it calls another worker on a new connection)."""
    monkeypatch.setenv("PRISMATIC_MAX_CONNECTIONS_PER_PID", "100000")
    monkeypatch.setenv("PRISMATIC_FD_RESERVE", "64")
    n = node_factory("tests.messaging_apps:agents")
    alpha, address = mailbox_of(n, "a")
    assert n.conn.call(alpha, ["echo", 0]) == 0  # the test's own connection, before the flood
    limit = node_fds(alpha.ospid) + 300
    resource.prlimit(alpha.ospid, resource.RLIMIT_NOFILE, (limit, limit))
    held = hold_connections(address, 600)
    try:
        got = answered(held, CallFrame(1, ["echo", 1]))
        assert 0 < got < 300
        assert limit - node_fds(alpha.ospid) >= 60
        assert n.conn.call(alpha, ["call", "beta", ["echo", 3], 5]) == ["ok", 3]
    finally:
        for s in held:
            s.close()


def test_partial_frames_cannot_grow_a_workers_memory_without_bound(node_factory,
                                                                    monkeypatch):
    """As for the hub (tests/test_hub.py): 16 connections sending 8 MiB each of unfinished
    frames grow a worker by little more than the 16 MiB cap."""
    monkeypatch.setenv("PRISMATIC_MAX_BUFFERED_BYTES", str(16 * MiB))
    n = node_factory("tests.messaging_apps:agents")
    c, address = mailbox_of(n, "c")
    before = rss(c.ospid)
    held = flood_partial_frames(address, 16, 8 * MiB)
    try:
        assert n.conn.call(c, ["echo", 1]) == 1  # read after every flood connection
        assert rss(c.ospid) - before < 48 * MiB
        assert worker_metric(n, "bad_frames_mailbox", "c") >= 12
    finally:
        for s in held:
            s.close()
