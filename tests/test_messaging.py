"""call / cast / send, the registry, monitors and links, between real processes of a node."""

from __future__ import annotations

import os
import signal
import threading

import pytest

import prismatic as p
from prismatic._process import child_pids, process_name
from tests.conftest import module_node, wait_until


node = module_node("tests.messaging_apps:agents")


def L(pid: p.Pid) -> list:
    """A Pid as it arrives inside a message (msgpack data: a two-element list)."""
    return [pid.node, pid.ospid]


def pid(node, path: str) -> p.Pid:
    ospid = wait_until(lambda: node.conn.pid_of(path), 10, f"{path} to run")
    return p.Pid(node.conn.status().node, ospid)


def restarted(node, path: str, old: p.Pid) -> p.Pid:
    return p.Pid(old.node, wait_until(
        lambda: (n := node.conn.pid_of(path)) not in (None, old.ospid) and n, 10,
        f"{path} to be restarted"))


def test_call_by_name_and_by_pid(node):
    assert node.conn.call("alpha", ["echo", {"k": [1, 2]}]) == {"k": [1, 2]}
    b = pid(node, "b")
    assert node.conn.call(b, ["echo", "x"]) == "x"
    assert b.names(node.conn.whereis("beta"))  # whereis gives the exact Pid (see _address)
    assert node.conn.whereis("nobody") is None


def test_async_handler_replies(node):
    assert node.conn.call(pid(node, "async"), "hi") == ["async", "hi"]


def test_messages_between_a_pair_arrive_in_send_order(node):
    c = pid(node, "c")
    before = len(node.conn.call(c, ["casts"]))
    for i in range(500):
        node.conn.cast(c, i)
    assert node.conn.call(c, ["casts"])[before:] == list(range(500))
    # and between two workers: alpha casts to c, then calls it; the call sees every cast
    a_casts = [node.conn.call("alpha", ["cast", L(c), ["from-a", i]]) for i in range(50)]
    assert all(a_casts)
    assert node.conn.call(c, ["casts"])[-50:] == [["from-a", i] for i in range(50)]


def test_send_reaches_handle_info(node):
    assert node.conn.send("beta", "ping")
    assert "ping" in node.conn.call("beta", ["infos"])


def test_worker_to_worker_call_carries_the_caller(node):
    assert node.conn.call("alpha", ["call", "beta", ["whoami"], 2])[1][2] is True
    assert node.conn.call("alpha", ["whoami"])[2] is False  # a client has no pid


def test_timeout_then_the_late_reply_is_dropped(node):
    with pytest.raises(p.CallTimeout):
        node.conn.call("alpha", ["sleep", 0.3], timeout=0.05)
    # the late "slept" arrives on the same connection first and must not answer this call
    assert node.conn.call("alpha", ["echo", "fresh"], timeout=5) == "fresh"


def test_noproc_for_unknown_names_and_dead_pids(node):
    with pytest.raises(p.NoProcError) as info:
        node.conn.call("nobody", 1)
    assert isinstance(info.value.reason, p.NoProc)
    with pytest.raises(p.NoProcError):
        node.conn.call(p.Pid(node.conn.status().node, 2 ** 22 + 7), 1)


def test_callee_crash_is_down_with_its_reason(node):
    old = pid(node, "a")
    with pytest.raises(p.ProcessDown) as info:
        node.conn.call(old, ["crash"])
    assert isinstance(info.value.reason, p.Crashed)
    assert "asked to crash" in info.value.reason.message
    restarted(node, "a", old)


def test_sigkilled_callee_is_down_killed(node):
    old = pid(node, "b")
    with pytest.raises(p.ProcessDown) as info:
        node.conn.call(old, ["die"])
    assert info.value.reason == p.Killed(signal.SIGKILL)
    restarted(node, "b", old)


def test_registered_name_follows_restarts(node):
    for _ in range(3):
        old = pid(node, "a")
        with node.events() as ev:
            os.kill(old.ospid, signal.SIGKILL)
            ev.wait_for(lambda e: e.key == "a" and e.kind == "child_started", 10)
        new = restarted(node, "a", old)
        # the restarted child registered again in its init, before it reported started
        assert new.names(node.conn.whereis("alpha"))
        assert node.conn.call("alpha", ["echo", 1]) == 1


def test_register_refuses_a_taken_name(node):
    reply = node.conn.call("beta", ["call", "alpha", ["register", "beta"], 2])
    assert reply[0] == "error"  # alpha's register raised RegistryError: it crashed
    wait_until(lambda: node.conn.whereis("alpha") is not None, 10, "alpha to come back")


def test_monitor_gets_one_down_with_the_reason(node):
    c = pid(node, "c")
    victim = pid(node, "b")
    node.conn.call(c, ["monitor", L(victim)])
    os.kill(victim.ospid, signal.SIGKILL)
    downs = wait_until(lambda: [n for n in node.conn.call(c, ["notices"])
                                if n[1] == L(victim)], 10, "the DOWN")
    assert downs == [["Down", L(victim), "killed by SIGKILL"]]
    restarted(node, "b", victim)


def test_monitor_of_a_dead_process_is_noproc_at_once(node):
    c = pid(node, "c")
    ghost = p.Pid(c.node, 2 ** 22 + 11)
    node.conn.call(c, ["monitor", L(ghost)])
    notes = wait_until(lambda: [n for n in node.conn.call(c, ["notices"])
                                if n[1] == L(ghost)], 10, "the DOWN")
    assert notes == [["Down", L(ghost), "noproc"]]


def test_link_kills_a_process_that_does_not_trap_exits(node):
    c, a = pid(node, "c"), pid(node, "a")
    node.conn.call(c, ["link", L(a)])
    with node.events() as ev:
        os.kill(a.ospid, signal.SIGKILL)
        exited = ev.wait_for(lambda e: e.key == "c" and e.kind == "child_exited", 10)
    assert exited.reason == p.Killed(signal.SIGKILL)  # c died of a's exit
    restarted(node, "c", c)
    restarted(node, "a", a)


def test_a_linked_process_that_does_not_trap_exits_ignores_a_normal_exit(node):
    """OTP: an exit signal with reason normal does not kill a process that does not trap
    exits; one that traps gets it as a message. Both c and t are linked to a."""
    c, t, a = pid(node, "c"), pid(node, "t"), pid(node, "a")
    node.conn.call(c, ["link", L(a)])
    node.conn.call(t, ["link", L(a)])
    with pytest.raises(p.ProcessDown) as info:
        node.conn.call(a, ["stop"])
    assert info.value.reason == p.Normal()
    exits = wait_until(lambda: [n for n in node.conn.call(t, ["notices"]) if n[1] == L(a)],
                       10, "t's EXIT message")
    assert exits == [["Exit", L(a), "normal"]]  # so the hub sent the exit signal out
    assert node.conn.call(c, ["echo", "alive"]) == "alive"
    assert node.conn.pid_of("c") == c.ospid
    restarted(node, "a", a)


def test_trap_exit_turns_the_exit_into_a_message(node):
    t, a = pid(node, "t"), pid(node, "a")
    node.conn.call(t, ["link", L(a)])
    os.kill(a.ospid, signal.SIGKILL)
    exits = wait_until(lambda: [n for n in node.conn.call(t, ["notices"])
                                if n[1] == L(a)], 10, "the EXIT message")
    assert exits == [["Exit", L(a), "killed by SIGKILL"]]
    assert node.conn.pid_of("t") == t.ospid  # still alive
    restarted(node, "a", a)


def test_dead_letters_are_counted_published_and_logged(node):
    ghost = p.Pid(node.conn.status().node, 2 ** 22 + 13)
    with node.conn.subscribe("deadletter.#") as sub:
        assert node.conn.cast(ghost, "lost") is False
        assert node.conn.send("nobody", "lost") is False
        first, second = sub.next(10), sub.next(10)
    assert (first.topic, first.payload["dest"], first.payload["kind"]) == \
        ("deadletter.noproc", str(ghost), "cast")
    assert (second.topic, second.payload["dest"]) == ("deadletter.not_registered", "nobody")

    def counted():
        lines = node.conn.metrics().splitlines()
        return ('prismatic_dead_letters_total{kind="cast",reason="noproc"} 1.0' in lines and
                'prismatic_dead_letters_total{kind="info",reason="not_registered"} 1.0' in lines)

    wait_until(counted, 10, "the dead letters in the metrics")


def test_a_full_mailbox_pushes_back_on_the_sender(node):
    small = pid(node, "small")
    node.conn.cast(small, ["block", 1.5])  # its plain handler sleeps: nothing is read
    with pytest.raises(p.MailboxFull):
        # Bounded by the kernel's socket buffers alone: a plain handler holds the whole
        # process, so no message is even read, let alone queued (the mailbox_limit pause
        # is an async worker's: tests/test_worker_runtime.py).
        for i in range(100_000):
            node.conn.cast(small, ["x" * 1000, i], timeout=0.2)
    # once it drains, it answers again
    assert node.conn.call(small, ["echo", "back"], timeout=10) == "back"


def test_many_requests_in_flight_collected_in_any_order(node):
    reqs = [node.conn.send_request("beta", ["echo", i]) for i in range(300)]
    assert [node.conn.receive_response(r) for r in reversed(reqs)] == list(range(299, -1, -1))
    # an abandoned request's reply is dropped, not mistaken for the next one
    slow = node.conn.send_request("beta", ["sleep", 0.2])
    with pytest.raises(p.CallTimeout):
        node.conn.receive_response(slow, timeout=0.01)
    assert node.conn.call("beta", ["echo", "next"]) == "next"


def test_messaging_metrics_per_worker(node):
    for i in range(20):
        node.conn.call("alpha", ["call", "beta", ["echo", i], 2])  # alpha calls beta 20 times
    node.conn.cast("small", ["block", 1.0])  # stuck in a plain handler: cannot answer
    busy = pid(node, "async")  # async handlers: the queue grows while one awaits
    reqs = [node.conn.send_request(busy, i) for i in range(300)]
    text = node.conn.metrics()
    assert [node.conn.receive_response(r) for r in reqs] == [["async", i] for i in range(300)]
    from prometheus_client.parser import text_string_to_metric_families
    m = {(s.name, tuple(sorted(s.labels.items()))): s.value
         for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert m[("prismatic_call_latency_seconds_count", (("path", "a"),))] >= 20
    assert m[("prismatic_call_latency_seconds_bucket", (("le", "+Inf"), ("path", "a")))] >= 20
    assert m[("prismatic_messages_sent_total", (("path", "a"),))] >= 20
    assert m[("prismatic_messages_received_total", (("path", "b"),))] >= 20
    assert m[("prismatic_mailbox_depth", (("path", "async"),))] >= 1
    assert ("prismatic_mailbox_depth", (("path", "small"),)) not in m
    assert m[("prismatic_mailbox_stats_missed", ())] >= 1


def test_a_malformed_frame_to_a_mailbox_is_counted_in_the_metrics(node):
    import socket

    from prismatic._nodeinfo import mailbox_address
    from prismatic.transports._framing import HEADER, WIRE_VERSION

    b = pid(node, "b")
    body = b"\xc1"  # never valid msgpack
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(mailbox_address(b.node, b.ospid))
        s.sendall(HEADER.pack(len(body) + 1, WIRE_VERSION) + body)

    def counted() -> bool:
        return any(line.startswith('prismatic_bad_frames_mailbox_total{path="b"}')
                   and float(line.split()[-1]) >= 1 for line in node.conn.metrics().splitlines())

    wait_until(counted, 10, "the bad frame in b's metrics")
    assert node.conn.call(b, ["echo", "still here"]) == "still here"


def _maps(ospid: int) -> str:
    with open(f"/proc/{ospid}/maps") as f:
        return f.read()


def test_plain_workers_run_without_uvloop_async_ones_with_it(node):
    """A worker whose handlers are all plain runs on the small reactor: uvloop is not even
    loaded into it (the memory and start-up it would cost)."""
    assert "uvloop" not in _maps(pid(node, "c").ospid)
    assert "uvloop" in _maps(pid(node, "async").ospid)


def test_a_plain_handler_returning_an_awaitable_moves_the_worker_onto_uvloop(node):
    u = pid(node, "u")
    assert node.conn.call(u, ["timer", 0.3, "tick"]) == "armed"
    assert node.conn.call(u, ["awaitable", 7]) == ["later", 7]
    assert "uvloop" in _maps(u.ospid)
    node.conn.cast(u, "after")
    # The timer set on the reactor fires on uvloop; the cast is handled there too.
    wait_until(lambda: node.conn.call(u, ["infos"]) == ["tick"], 10, "the moved timer")
    assert node.conn.call(u, ["casts"]) == ["after"]
    assert node.conn.pid_of("u") == u.ospid


def test_monitors_and_links_fire_for_a_death_no_supervisor_reports(node_factory):
    """A process still in init is in no tree yet: killed with its supervisor (PDEATHSIG),
    nobody reports its exit, and the hub's own pidfd watch must fire its monitors and
    links (as killed by SIGKILL, which is how it died)."""
    n = node_factory("tests.messaging_apps:agents")
    root = n.conn.status().root_pid
    starting = threading.Thread(target=_start_gated, args=(n.data_dir,))
    starting.start()
    try:
        target = wait_until(lambda: n.conn.whereis("gated"), 10, "gated to register")
        n.conn.call("alpha", ["monitor", L(target)])
        n.conn.call(pid(n, "t"), ["link", L(target)])  # t traps exits
        sup = wait_until(lambda: [c for c in child_pids(root)
                                  if process_name(c) == "prism-sup:s"], 10, "the supervisor")
        os.kill(sup[0], signal.SIGKILL)
        for who, kind in (("alpha", "Down"), (pid(n, "t"), "Exit")):
            notes = wait_until(lambda who=who: [x for x in n.conn.call(who, ["notices"])
                                                if x[1] == L(target)], 10, f"the {kind}")
            assert notes == [[kind, L(target), "killed by SIGKILL"]]
        assert "was never reported" in n.log.with_name("node.out").read_text()
    finally:
        n.log.with_name(n.log.name + ".gate").touch()
        starting.join(30)


def _start_gated(data_dir) -> None:
    with p.connect(data_dir) as conn:  # a connection of its own: one per thread
        try:
            conn.start_child("", p.ChildSpec(id="s", start="tests.messaging_apps:gated",
                                             type="supervisor"))
        except p.PrismaticError:
            pass  # its supervisor is killed while it starts


def test_monitor_and_link_of_impossible_pids_answer_noproc(node):
    """Pids no process can have (0, negative, past pid_t): noproc at once, the hub unharmed."""
    c, t = pid(node, "c"), pid(node, "t")  # t traps exits
    for ospid in (0, -5, 2 ** 31, 2 ** 40):
        ghost = p.Pid(c.node, ospid)
        node.conn.call(c, ["monitor", L(ghost)])
        node.conn.call(t, ["link", L(ghost)])
        for who, kind in ((c, "Down"), (t, "Exit")):
            notes = wait_until(lambda who=who, ghost=ghost: [
                n for n in node.conn.call(who, ["notices"]) if n[1] == L(ghost)],
                10, f"the {kind}")
            assert notes == [[kind, L(ghost), "noproc"]]
    assert node.conn.call(c, ["echo", 1]) == 1

