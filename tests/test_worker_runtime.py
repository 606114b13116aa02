"""The worker runtime's queue in real processes: handled one at a time in arrival order
(also when backed up), the mailbox_limit pause and resume, and its failure paths."""

from __future__ import annotations

import os
import signal

import pytest

import prismatic as p
from tests.conftest import alive, module_node, wait_until

node = module_node("tests.messaging_apps:queues")


def _pid(n, path: str) -> p.Pid:
    ospid = wait_until(lambda: n.conn.pid_of(path), 10, f"{path} to run")
    return p.Pid(n.conn.status().node, ospid)


def _mixed_burst(conn, dest: p.Pid, n: int) -> tuple[list, list]:
    """From one sender: casts, sends and (pipelined) calls interleaved; the log the
    worker must show, and the requests in flight."""
    want, reqs = [], []
    for i in range(n):
        kind = ("cast", "info", "call")[i % 3]
        if kind == "cast":
            assert conn.cast(dest, i)
        elif kind == "info":
            assert conn.send(dest, i)
        else:
            reqs.append((i, conn.send_request(dest, i)))
        want.append([kind, i])
    return want, reqs


def test_a_backed_up_plain_worker_handles_one_senders_messages_in_order(node):
    rec = _pid(node, "rec")
    before = len(node.conn.call(rec, "log"))
    node.conn.cast(rec, ["block", 0.3])  # nothing is read meanwhile: all of it queues up
    want, reqs = _mixed_burst(node.conn, rec, 300)
    assert [node.conn.receive_response(r, 10) for _, r in reqs] == [i for i, _ in reqs]
    assert node.conn.call(rec, "log")[before:] == want


def test_a_backed_up_async_worker_handles_one_senders_messages_in_order(node, tmp_path):
    """While an async handler awaits, the worker reads on and queues: the queue is served
    first in, first out."""
    arec = _pid(node, "arec")
    before = len(node.conn.call(arec, "log"))
    gate = tmp_path / "gate"
    node.conn.cast(arec, ["hold", str(gate)])
    want, reqs = _mixed_burst(node.conn, arec, 45)  # below its mailbox_limit of 50
    wait_until(lambda: _depth(node, "arec") >= 40, 10, "the queue to fill")
    gate.touch()
    assert [node.conn.receive_response(r, 10) for _, r in reqs] == [i for i, _ in reqs]
    assert node.conn.call(arec, "log")[before:] == want


def _depth(n, path: str) -> float:
    for line in n.conn.metrics().splitlines():
        if line.startswith(f'prismatic_mailbox_depth{{path="{path}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_mailbox_limit_pauses_reading_then_resumes_in_order(node, tmp_path):
    """An async worker holding its queue at mailbox_limit stops reading: the kernel buffer
    fills and the sender gets MailboxFull. Once the queue drains below half the limit it
    reads again, and every message accepted is handled, in order, by the same process."""
    arec = _pid(node, "arec")
    before = len(node.conn.call(arec, "log"))
    gate = tmp_path / "gate"
    node.conn.cast(arec, ["hold", str(gate)])
    accepted = 0
    with pytest.raises(p.MailboxFull):
        for accepted in range(20_000):  # without the pause the worker would read them all
            node.conn.cast(arec, accepted, timeout=0.2)
    assert accepted > 50  # the queue (the limit) and the kernel buffer took the others
    gate.touch()
    log = wait_until(lambda: (got := node.conn.call(arec, "log", timeout=10)[before:])
                     and len(got) >= accepted and got, 20, "the backlog handled")
    assert log == [["cast", i] for i in range(accepted)]
    assert _pid(node, "arec") == arec


def test_a_mailbox_limit_of_one_still_reads_every_message(node):
    """At limit 1 the mailbox pauses at each message; it must resume once it is handled."""
    one = _pid(node, "one")
    for i in range(5):
        assert node.conn.call(one, ["x", i], timeout=5) == ["x", i]


# ---- failure paths -----------------------------------------------------------------------------

failing = module_node("tests.failure_apps:failing")


def test_a_crash_in_an_async_call_handler_is_the_exit_reason(failing):
    ac = _pid(failing, "ac")
    with failing.events() as ev:
        with pytest.raises(p.ProcessDown) as info:
            failing.conn.call(ac, "crash")
        exited = ev.wait_for(lambda e: e.key == "ac" and e.kind == "child_exited", 10)
    reason = info.value.reason
    assert isinstance(reason, p.Crashed) and reason.type == "builtins.ValueError"
    assert reason.message == "async handler failed" and "handle_call" in reason.traceback
    assert exited.reason == reason and exited.pid == ac.ospid
    assert failing.conn.call(_pid(failing, "ac"), "still") == "still"  # restarted


def test_a_crash_in_an_async_cast_handler_is_the_exit_reason(failing):
    ac = _pid(failing, "ac")
    with failing.events() as ev:
        assert failing.conn.cast(ac, "crash")
        exited = ev.wait_for(lambda e: e.key == "ac" and e.kind == "child_exited", 10)
    assert exited.pid == ac.ospid
    assert isinstance(exited.reason, p.Crashed)
    assert (exited.reason.type, exited.reason.message) == ("builtins.KeyError",
                                                          "'async cast failed'")


@pytest.mark.parametrize("key,message", [("bt", "terminate failed"),
                                         ("abt", "async terminate failed")])
def test_a_crash_inside_terminate_becomes_the_exit_reason(failing, key, message):
    """As in gen_server: terminate raising on an orderly stop turns the stop into a crash,
    which the supervisor reports as a shutdown error."""
    before = _pid(failing, key)
    with failing.events() as ev:
        failing.conn.terminate_child("", key)
        error = ev.wait_for(lambda e: e.key == key and e.kind == "shutdown_error", 10)
        stopped = ev.wait_for(lambda e: e.key == key and e.kind == "child_stopped", 10)
    for e in (error, stopped):
        assert e.pid == before.ospid and isinstance(e.reason, p.Crashed)
        assert (e.reason.type, e.reason.message) == ("builtins.RuntimeError", message)
    assert failing.conn.restart_child("", key) not in (None, before.ospid)


def test_a_start_callable_that_returns_no_worker_fails_the_start(failing):
    with pytest.raises(p.StartError) as info:
        failing.conn.start_child("", p.ChildSpec(id="nw",
                                                 start="tests.failure_apps:not_a_worker"))
    reason = info.value.exit_reason
    assert isinstance(reason, p.Crashed) and reason.type == "builtins.TypeError"
    assert "returned a dict, not a prismatic.Worker" in reason.message
    assert "nw" not in [c.id for c in failing.conn.which_children()]


def test_a_worker_whose_supervisor_is_gone_stops_in_order(node_factory):
    """The worker gave up its PDEATHSIG: when its supervisor is SIGKILLed, the channel's EOF
    alone must stop it, through terminate, with reason shutdown (supervisor gone)."""
    n = node_factory("tests.failure_apps:orphaned")
    o = n.conn.pid_of("o")
    os.kill(n.conn.status().root_pid, signal.SIGKILL)
    wait_until(lambda: "terminate outliving shutdown (supervisor gone)" in n.lines(), 10,
               "the worker's terminate")
    wait_until(lambda: not alive(o), 10, "the worker to exit")


def test_a_mailbox_that_cannot_accept_recovers_without_spinning(failing, tmp_path):
    """Out of descriptors (EMFILE), a worker's mailbox cannot accept a new sender: the
    sender waits, the worker neither spins on the readable listener nor floods its log,
    and once descriptors are free again the waiting sender is accepted and answered."""
    fd = _pid(failing, "fd")
    assert failing.conn.call(fd, "starve") > 0
    cpu = failing.conn.call(fd, "cpu")
    with p.connect(failing.data_dir) as other:  # a new sender: a new connection to accept
        with pytest.raises(p.CallTimeout):
            other.call(fd, "hello", timeout=0.5)
        spent = failing.conn.call(fd, "cpu") - cpu
        assert failing.conn.call(fd, "feed") == "fed"
        assert other.call(fd, "again", timeout=5) == "again"
    assert spent < 0.2, f"{spent:.2f} s of CPU in 0.5 s: spinning on accept"
    out = failing.log.with_name("node.out").read_text()
    assert 1 <= out.count("mailbox: cannot accept a sender") <= 3
    assert _pid(failing, "fd") == fd
