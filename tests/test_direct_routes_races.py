"""Direct routes under races and pressure, between real nodes: what happens to a pair's
switch (its hello, its fence, its route) when the callee's node holds all it may for the
callee's mailbox, when the callee exits mid-switch, and what a process other than the node
can make a callee hold (``prismatic._direct_listener``, ``prismatic.mesh._direct``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

import prismatic as p
from prismatic._address import process_start
from prismatic._direct_listener import REJOIN_S
from prismatic._pair_switch import SWITCH_AFTER, PairState
from prismatic.mesh._secret import derive_keys, read_secret
from prismatic.transports._messages import (
    CallFrame, CallReply, CastFrame, DirectFence, DirectHello,
)
from prismatic.transports._remote_frames import Deliver, decode_answers, encode_deliveries
from tests.conftest import wait_until
from tests.test_mesh import member_socket, members, metric
from tests.test_remote import Nodes, open_cluster

BACKLOG_LIMIT = 1 << 20  # what b holds for one of its mailboxes: reached with a few casts


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    backlog = {"PRISMATIC_REMOTE_BACKLOG_BYTES": str(BACKLOG_LIMIT)}
    with open_cluster(tmp_path_factory.mktemp("races"), "ab", backlog) as c:
        yield c


def test_a_fence_sent_while_the_callees_node_backlog_is_full_is_not_lost(
        nodes: Nodes) -> None:
    """The pair's route is connected; the callee then takes nothing for a while and another
    sender fills what its node holds for it (past the bound, the node drops what comes).
    The pair's next message sends its fence on the node path and goes on the route: the
    fence must still reach the callee, or the callee holds the route's messages for ever
    (a call on it never answered)."""
    a, b = nodes.nodes["a"], nodes.nodes["b"]
    t = nodes.pid("b", "t")
    full = "prismatic_cluster_direct_mailbox_full"
    with p.connect(a.data_dir) as conn, p.connect(a.data_dir) as other:
        for i in range(SWITCH_AFTER + 1):  # the hello, then its answer read: connecting
            assert conn.call(t, ["echo", i]) == i
        pair = conn._messaging().pairs[t]
        assert pair.state is PairState.CONNECTING and pair.route is not None
        route = pair.route
        wait_until(route.connected, 5, "the route's connection")
        full0 = metric(b, full)
        busy = other.send_request(t, ["sleep", 3])  # t takes nothing meanwhile
        big = "x" * 65536
        for i in range((BACKLOG_LIMIT >> 16) + 64):  # the bound, the kernel's buffers, more
            assert other.cast(t, ["flood", i, big])
        wait_until(lambda: metric(b, full) > full0, 3, "b to drop what comes for t")
        assert conn.call(t, ["echo", "after"], timeout=8) == "after"  # fence, then route
        assert state_of(conn, t) is PairState.DIRECT
        assert other.receive_response(busy, timeout=5) == "slept"
        assert conn.call(t, ["echo", "again"], timeout=5) == "again"


def state_of(conn: p.NodeConnection, pid: p.Pid) -> PairState | None:
    pair = conn._messaging().pairs.get(pid)
    return None if pair is None else pair.state


def test_two_spellings_of_one_pid_share_one_route(nodes: Nodes) -> None:
    """A Pid as it travels (``[node, ospid]``) and the same process's exact Pid are two
    spellings of one destination: one pair, one route. Two routes would lose the pair's
    order between them, and the callee's node (which watches one route per caller) would
    tell only the later one of the callee's exit: a call in flight on the other would wait
    for its timeout, and each cast after block, then fail with MailboxFull."""
    u = nodes.pid("b", "u")
    exact = p.Pid(u.node, u.ospid, 0, process_start(u.ospid))
    assert exact != u and u.names(exact)
    before = len(nodes.nodes["b"].conn.call(u, ["casts"]))
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        for spelling in (u, exact):  # u's pair switches first, then (if apart) exact's
            for i in range(SWITCH_AFTER + 2):
                assert conn.call(spelling, ["echo", i]) == i
            wait_until(lambda s=spelling: conn.call(s, ["echo", 0]) == 0
                       and state_of(conn, s) is PairState.DIRECT, 5, "the pair to switch")
        for i in range(100):
            assert conn.cast((u, exact)[i % 2], ["seq", i])
        got = [x[1] for x in conn.call(u, ["casts"])[before:] if x[:1] == ["seq"]]
        assert got == list(range(100))
        r1 = conn.send_request(u, ["die"])  # SIGKILLed on the route, a call behind it
        r2 = conn.send_request(u, ["echo", 2])
        for req in (r1, r2):
            with pytest.raises(p.ProcessDown) as down:
                conn.receive_response(req, timeout=3)
            assert down.value.reason == p.Killed(9)
        started = time.monotonic()
        assert conn.cast(u, ["seq", "late"])  # on the node path: a dead letter there
        assert conn.cast(exact, ["seq", "late"])
        assert time.monotonic() - started < 1
    nodes.restarted("b", "u", u)


def test_a_callee_moved_onto_uvloop_mid_flight_serves_on_its_route(nodes: Nodes) -> None:
    """The callee's listener is read by its Reactor; a plain handler then returns an
    awaitable (the worker moves onto uvloop): the route's next calls, pipelined and one at
    a time, are still read and answered."""
    c = nodes.pid("b", "c")
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        for i in range(SWITCH_AFTER + 2):
            assert conn.call(c, ["echo", i]) == i
        wait_until(lambda: conn.call(c, ["echo", 0]) == 0 and state_of(conn, c)
                   is PairState.DIRECT, 5, "the pair to switch")
        reqs = [conn.send_request(c, ["echo", i]) for i in range(20)]
        moved = conn.send_request(c, ["awaitable", "x"])
        reqs += [conn.send_request(c, ["echo", i]) for i in range(20, 40)]
        assert conn.receive_response(moved, timeout=5) == ["later", "x"]
        assert [conn.receive_response(r, timeout=5) for r in reqs] == list(range(40))
        for i in range(20):
            assert conn.call(c, ["echo", i], timeout=5) == i
        assert state_of(conn, c) is PairState.DIRECT


def test_a_reply_to_a_caller_that_left_its_route_is_counted_lost(nodes: Nodes) -> None:
    """A caller closes while its call is in the callee's handler: the reply has nowhere to
    go on the route. It is dropped, and counted on the callee's node (not silently
    discarded by ZeroMQ)."""
    b = nodes.nodes["b"]
    c = nodes.pid("b", "c")
    lost = "prismatic_cluster_direct_listener_answers_lost"
    lost0 = metric(b, lost)
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        for i in range(SWITCH_AFTER + 2):
            assert conn.call(c, ["echo", i]) == i
        wait_until(lambda: conn.call(c, ["echo", 0]) == 0 and state_of(conn, c)
                   is PairState.DIRECT, 5, "the pair to switch")
        conn.send_request(c, ["sleep", 0.5])
    wait_until(lambda: metric(b, lost) > lost0, 5, "the lost reply to be counted")
    assert b.conn.call(c, ["echo", "still"]) == "still"


def test_a_hello_refused_for_a_full_backlog_is_asked_again_later(nodes: Nodes) -> None:
    """The pair's hello reaches the callee's node while that node holds all it may for the
    callee (the callee busy, another sender's flood): the hello is refused. That is a busy
    moment, not a callee without a listener: the pair asks again later (as for a hello not
    answered in time) and switches, instead of staying on the node path for good."""
    a, b = nodes.nodes["a"], nodes.nodes["b"]
    t = nodes.pid("b", "t")
    full = "prismatic_cluster_direct_mailbox_full"
    with p.connect(a.data_dir) as conn, p.connect(a.data_dir) as other:
        for i in range(SWITCH_AFTER - 1):
            assert conn.call(t, ["echo", i]) == i
        full0 = metric(b, full)
        busy = other.send_request(t, ["sleep", 2])
        big = "x" * 65536
        for i in range((BACKLOG_LIMIT >> 16) + 64):
            assert other.cast(t, ["flood", i, big])
        wait_until(lambda: metric(b, full) > full0, 3, "b to drop what comes for t")
        conn.cast(t, ["x", "the hello's"])  # with the hello: both refused there
        assert other.receive_response(busy, timeout=5) == "slept"

        def answered() -> bool:  # t read half its backlog: b lets calls in again
            try:
                return bool(conn.call(t, ["echo", 0]) == 0)
            except p.MailboxFull:
                return False

        wait_until(answered, 10, "t to read its backlog")
        for i in range(64 * SWITCH_AFTER + 4):  # a pair asks again after this many
            assert conn.cast(t, ["x", i])
        wait_until(lambda: conn.call(t, ["echo", 0]) == 0 and state_of(conn, t)
                   is PairState.DIRECT, 5, "the pair to switch after all")


def ask_for_route(ctx: zmq.Context, nodes: Nodes, t: p.Pid) -> tuple[zmq.Socket, bytes, int]:
    """Be a caller that asks ``t`` for its listener on the node path (a member's DEALER at
    b's mesh address, as a process's link to b is): the link, the route's token, the port."""
    b = nodes.nodes["b"]
    link = member_socket(ctx, nodes.secret, members(b)[nodes.name("b")].address, 0)
    token = b"\x01" + os.urandom(15)
    link.send(encode_deliveries([Deliver(t, DirectHello(1, token))]))
    assert link.poll(5000), "no answer to the hello"
    (answer,) = decode_answers(link.recv())[0] or []
    assert isinstance(answer, CallReply) and isinstance(answer.value, int)
    return link, token, answer.value


def route_socket(ctx: zmq.Context, nodes: Nodes, token: bytes, port: int) -> zmq.Socket:
    """A route to the listener at ``port``, as a caller's DEALER (its routing id the token)."""
    keys = derive_keys(read_secret(nodes.secret))
    route = ctx.socket(zmq.DEALER)
    route.linger = 0
    route.routing_id = token
    route.curve_serverkey = keys.public
    route.curve_publickey, route.curve_secretkey = keys.public, keys.secret
    route.connect(f"tcp://127.0.0.1:{port}")
    return route


def route_then_gone(nodes: Nodes, token: bytes, port: int, casts: list[object],
                    to: p.Pid) -> None:
    """A caller's route that sends ``casts`` to ``to`` and goes: its own context, ended once
    they left (within the linger), so its connection goes after them."""
    ctx = zmq.Context()
    route = route_socket(ctx, nodes, token, port)
    route.linger = 5000
    for cast in casts:
        route.send(encode_deliveries([Deliver(to, CastFrame(cast))]))
    route.close()
    ctx.term()


def hold_past_the_bound(nodes: Nodes, t: p.Pid) -> None:
    """Be a caller that asks ``t`` for its listener and routes casts to it past the backlog
    bound, but whose fence never comes; then is gone."""
    b = nodes.nodes["b"]
    ctx = zmq.Context()
    try:
        link, token, port = ask_for_route(ctx, nodes, t)
        route = route_socket(ctx, nodes, token, port)
        big = "x" * 65536
        dead = '{kind="cast",reason="mailbox_full"}'
        dead0 = metric(b, "prismatic_dead_letters", dead)
        for i in range((BACKLOG_LIMIT >> 16) + 4):
            route.send(encode_deliveries([Deliver(t, CastFrame(["held", i, big]))]))
        wait_until(lambda: metric(b, "prismatic_dead_letters", dead) > dead0, 5,
                   "t to hold all it may for the caller, and refuse the rest")
        route.close(0)
        link.close(0)
    finally:
        ctx.destroy(0)  # whatever an assertion left open


def test_what_a_caller_that_never_fenced_left_held_does_not_refuse_others(
        nodes: Nodes) -> None:
    """A caller routes to t past the bound on what t holds before fences, and goes before
    its fence came (as one SIGKILLed between its fence and its route's first message, or
    whose node link closed at a node loss with the fence queued). Its route's connection
    went and does not come back: within REJOIN_S, t drops what it held for it (counted,
    logged), and a later caller's pre-fence messages are held, not refused MailboxFull."""
    a, b = nodes.nodes["a"], nodes.nodes["b"]
    t = nodes.pid("b", "b")
    released = "prismatic_cluster_direct_listener_released"
    released0 = metric(b, released)
    hold_past_the_bound(nodes, t)
    wait_until(lambda: metric(b, released) >= released0 + (BACKLOG_LIMIT >> 16), 3 + REJOIN_S,
               "t to drop what it held for the caller that went")
    assert "route went before its fence came" in (b.log.parent / "node.out").read_text()
    big = "x" * 65536
    # A caller that switches while t is busy: its route's first call comes before its fence.
    with p.connect(a.data_dir) as conn, p.connect(a.data_dir) as other:
        for i in range(SWITCH_AFTER + 1):
            assert conn.call(t, ["echo", i]) == i
        pair = conn._messaging().pairs[t]
        wait_until(lambda: pair.route is not None and pair.route.connected(), 5,
                   "the route's connection")
        read0 = metric(b, "prismatic_cluster_direct_messages")
        busy = other.send_request(t, ["sleep", 0.5])
        for i in range(12):  # the fence goes behind these in t's mailbox
            assert other.cast(t, ["flood", i, big])
        wait_until(lambda: metric(b, "prismatic_cluster_direct_messages") >= read0 + 13, 5,
                   "b to have read them")
        assert conn.call(t, ["echo", "after"], timeout=5) == "after"
        assert other.receive_response(busy, timeout=5) == "slept"


def test_a_caller_whose_route_reconnects_keeps_what_was_held_for_it(nodes: Nodes) -> None:
    """A live caller's route connection goes while t holds its first messages (its fence
    still on the node path) and comes back under the same routing id, with nothing sent on
    it since. When t looks for it (REJOIN_S after its connection went) it is there: what t
    held for it is kept, and goes in, in order, once its fence came."""
    b = nodes.nodes["b"]
    c = nodes.pid("b", "c")
    before = len(b.conn.call(c, ["casts"]))
    ctx = zmq.Context()
    try:
        link, token, port = ask_for_route(ctx, nodes, c)
        route_then_gone(nodes, token, port, [["seq", i] for i in range(3)], c)
        route = route_socket(ctx, nodes, token, port)  # the caller's reconnection
        assert route.poll(int((REJOIN_S + 3) * 1000)), "t never looked for the caller"
        assert decode_answers(route.recv()) == ([], "")  # its look: an empty batch
        link.send(encode_deliveries([Deliver(c, DirectFence(token))]))
        route.send(encode_deliveries([Deliver(c, CastFrame(["seq", 3]))]))
        wait_until(lambda: len(b.conn.call(c, ["casts"])) >= before + 4, 5,
                   "the casts held for the caller, then the one after its fence")
        assert b.conn.call(c, ["casts"])[before:] == [["seq", i] for i in range(4)]
    finally:
        ctx.destroy(0)  # whatever an assertion left open


def test_a_caller_back_on_a_new_connection_is_served_while_its_old_one_lingers(
        nodes: Nodes) -> None:
    """A caller's route connection is reset without the callee's side seeing it (the
    callee still holds the old one, until keepalive ends it) and the caller reconnects
    under its routing id: its routing id moves to the new connection, where it is served
    at once (not refused until the old one ends, ~25 s). When the old connection does
    end, that is not the caller going: its route serves on."""
    c = nodes.pid("b", "c")
    ctx = zmq.Context()
    try:
        link, token, port = ask_for_route(ctx, nodes, c)
        link.send(encode_deliveries([Deliver(c, DirectFence(token))]))
        old = route_socket(ctx, nodes, token, port)  # what the callee still holds
        old.send(encode_deliveries([Deliver(c, CallFrame(1, ["echo", "old"]))]))
        assert old.poll(5000), "no answer on the first connection"
        assert decode_answers(old.recv())[0] == [CallReply(1, "old")]
        new = route_socket(ctx, nodes, token, port)  # the caller, reconnected
        new.send(encode_deliveries([Deliver(c, CallFrame(2, ["echo", "new"]))]))
        assert new.poll(3000), "the reconnected caller not served while the old one lingers"
        assert decode_answers(new.recv())[0] == [CallReply(2, "new")]
        old.close(0)  # the old connection ends (keepalive, in life)
        looked = time.monotonic() + REJOIN_S + 0.5  # c would have looked for it by then
        wait_until(lambda: time.monotonic() > looked, REJOIN_S + 2, "c to look")
        new.send(encode_deliveries([Deliver(c, CallFrame(3, ["echo", "on"]))]))
        assert new.poll(3000), "the caller not served after its old connection ended"
        answers = decode_answers(new.recv())[0] or []
        assert answers[-1:] == [CallReply(3, "on")], answers
    finally:
        ctx.destroy(0)  # whatever an assertion left open


def test_what_is_released_for_a_caller_that_went_is_counted_once(nodes: Nodes) -> None:
    """A caller routes two calls and a cast before its fence and goes: the three are
    released (counted as such), each once: the calls' failures, with nobody to take them,
    are not also answers lost, nor the cast a listener's dead letter (it is a dead letter
    of its node's, ``noconnection``, as ever)."""
    b = nodes.nodes["b"]
    c = nodes.pid("b", "c")
    names = ["prismatic_cluster_direct_listener_released",
             "prismatic_cluster_direct_listener_answers_lost",
             "prismatic_cluster_direct_listener_dead_letters"]
    dead = '{kind="cast",reason="noconnection"}'
    before = [metric(b, name) for name in names] + [metric(b, "prismatic_dead_letters", dead)]
    ctx = zmq.Context()
    try:
        _link, token, port = ask_for_route(ctx, nodes, c)
        route = route_socket(ctx, nodes, token, port)
        route.linger = 5000
        route.send(encode_deliveries([Deliver(c, CallFrame(1, ["echo", 1])),
                                      Deliver(c, CastFrame(["released", 0])),
                                      Deliver(c, CallFrame(2, ["echo", 2]))]))
        route.close()
    finally:
        ctx.destroy()  # it left (within the linger): the connection goes after it
    wait_until(lambda: metric(b, names[0]) >= before[0] + 3, REJOIN_S + 5,
               "c to release what it held for the caller that went")
    settled = time.monotonic() + 0.5  # a count of the same release reported later is in
    wait_until(lambda: time.monotonic() > settled, 2, "c's later reports")
    after = [metric(b, name) for name in names] + [metric(b, "prismatic_dead_letters", dead)]
    assert [x - y for x, y in zip(after, before, strict=True)] == [3, 0, 0, 1]


def test_a_listener_has_the_kernel_watch_its_callers_connections(nodes: Nodes) -> None:
    """A caller cut off with its connection left open (a partition, its host lost) never
    closes it, and the listener would hold what it sent for ever: the listener's side of
    each route's connection has TCP keepalive on (the kernel's timer runs on it), so an
    unanswered one ends, and its caller is then one that went."""
    c = nodes.pid("b", "c")
    ctx = zmq.Context()
    try:
        _link, token, port = ask_for_route(ctx, nodes, c)
        route = route_socket(ctx, nodes, token, port)  # kept: a socket collected is closed

        def timers() -> set[str]:  # the accepted sides: local port == the listener's
            rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
            return {r[5][:2] for r in rows if r[1].endswith(f":{port:04X}") and r[3] == "01"}

        assert wait_until(lambda: timers() == {"02"}, 5, "the kernel's keepalive timer")
        route.close(0)
    finally:
        ctx.destroy(0)


def test_the_node_forgets_the_callers_of_routes_that_went(nodes: Nodes) -> None:
    """The callee's node watches each caller that asked for its listener (to tell it of the
    callee's exit): callers that switched and then went leave nothing watched behind."""
    a, b = nodes.nodes["a"], nodes.nodes["b"]
    c = nodes.pid("b", "c")
    watchers = "prismatic_cluster_direct_route_watchers"
    base = metric(b, watchers)
    for n in range(4):
        with p.connect(a.data_dir) as conn:
            for i in range(SWITCH_AFTER + 2):
                assert conn.call(c, ["echo", i]) == i
            wait_until(lambda conn=conn: conn.call(c, ["echo", 0]) == 0 and state_of(conn, c)
                       is PairState.DIRECT, 5, "the pair to switch")
            if n == 0:
                assert metric(b, watchers) >= 1
    wait_until(lambda: metric(b, watchers) <= base, REJOIN_S + 5,  # (an earlier test's
               "b to forget the callers that went")  # caller may go meanwhile: not above)
    assert b.conn.call(c, ["echo", "still"]) == "still"


@contextlib.contextmanager
def full_link(conn: p.NodeConnection, node: str) -> Iterator[None]:
    """``conn``'s link to ``node`` stays full meanwhile (as when that node takes nothing for
    a while): its DEALER is set aside for one whose queue is full, for a peer that never
    comes; then put back."""
    link = conn._messaging().links[node]
    ctx = zmq.Context()
    try:
        full = ctx.socket(zmq.DEALER)
        full.linger = 0
        full.sndhwm = 1
        full.connect("tcp://127.0.0.1:9")  # nothing listens there: it never connects
        with pytest.raises(zmq.Again):
            for _ in range(64):
                full.send(b"x", zmq.NOBLOCK)
        real, link.sock, link.timeout = link.sock, full, -1.0
        try:
            yield
        finally:
            link.sock, link.timeout = real, -1.0
    finally:
        ctx.destroy(0)


@pytest.mark.parametrize("lost", ["hello", "fence"])
def test_a_pair_whose_link_is_full_when_it_asks_or_fences_asks_again_later(
        nodes: Nodes, lost: str, caplog: pytest.LogCaptureFixture) -> None:
    """The caller's own link to the callee's node stays full just when its hello, or its
    fence, is due: neither goes (nor the message after it: MailboxFull, as for any send
    on a full link). A busy moment, not a callee without a listener: the pair stays on the
    node path for now, counted and logged, and asks again later (as for a route that did
    not connect), then switches."""
    a = nodes.nodes["a"]
    c = nodes.pid("b", "c")
    failures = "prismatic_cluster_direct_connect_failures"
    failures0 = metric(a, failures)
    with p.connect(a.data_dir) as conn:
        for i in range(SWITCH_AFTER - 1 if lost == "hello" else SWITCH_AFTER + 1):
            assert conn.call(c, ["echo", i]) == i
        pair = conn._messaging().pairs[c]
        if lost == "fence":
            wait_until(lambda: pair.route is not None and pair.route.connected(), 5,
                       "the route's connection")
        with full_link(conn, c.node), pytest.raises(p.MailboxFull):
            conn.cast(c, ["x", "due"], timeout=0.05)
        assert state_of(conn, c) is PairState.NODE and pair.route is None
        assert f"its {lost} did not go" in caplog.text
        wait_until(lambda: metric(a, failures) > failures0, 5, "the failure to be counted")
        for i in range(64 * SWITCH_AFTER + 2):  # a pair asks again after this many
            assert conn.cast(c, ["x", i])
        wait_until(lambda: conn.call(c, ["echo", 0]) == 0 and state_of(conn, c)
                   is PairState.DIRECT, 5, "the pair to switch after all")


def test_routes_leave_a_callee_descriptors_for_its_local_senders(nodes: Nodes) -> None:
    """Each route is a TCP connection into the callee, one per process of another node
    that keeps talking to it, and nothing else bounds them: with many such peers, routes
    would take every descriptor below the callee's reserve, and its mailbox would refuse
    the next local sender. A callee offers routes only while it uses under half of what
    its limit leaves below the reserve; past that, pairs stay on the node path."""
    a, b = nodes.nodes["a"], nodes.nodes["b"]
    alpha = nodes.pid("b", "a")
    with p.connect(a.data_dir) as first:  # its listener is open: its descriptors counted
        for i in range(SWITCH_AFTER + 2):
            assert first.call(alpha, ["echo", i]) == i
        wait_until(lambda: first.call(alpha, ["echo", 0]) == 0 and state_of(first, alpha)
                   is PairState.DIRECT, 5, "the first pair to switch")
        in_use = len(os.listdir(f"/proc/{alpha.ospid}/fd"))
        old = b.conn.call(alpha, ["fdlimit", in_use + 12])  # 8 below its reserve (a quarter)
        try:
            clients = [p.connect(a.data_dir) for _ in range(12)]
            try:
                for conn in clients:
                    for i in range(SWITCH_AFTER + 2):
                        assert conn.call(alpha, ["echo", i]) == i
                for conn in clients:  # each is answered, on its route or the node path
                    assert conn.call(alpha, ["echo", "more"], timeout=5) == "more"
                with p.connect(b.data_dir) as local:  # a new local sender still gets in
                    assert local.call(alpha, ["echo", "local"], timeout=5) == "local"
                assert nodes.pid("b", "a") == alpha
            finally:
                for conn in clients:
                    conn.close()
        finally:
            b.conn.call(alpha, ["fdlimit", old])
    logged = (b.log.parent / "node.out").read_text()
    assert f"direct listener of {alpha}: " in logged and "offers no route" in logged


def test_a_caller_short_of_descriptors_keeps_its_pairs_on_the_node_path(
        nodes: Nodes) -> None:
    """Each route costs its caller a ZeroMQ socket (a descriptor or two): a process that
    keeps talking to many processes of another node would run out, and a send that
    switches would raise the socket's error (or libzmq abort the process). Short of
    descriptors, a caller opens no more routes: its pairs stay on the node path."""
    import resource

    names = ["a", "b", "c", "u", "t", "async", "small"]
    pids = [nodes.pid("b", name) for name in names]
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        for pid in pids:  # its link to b is made: what follows costs routes only
            conn.call(pid, ["echo", 0]) if pid != pids[5] else conn.call(pid, 0)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 8, hard))
        try:
            for pid in pids:
                for i in range(SWITCH_AFTER + 2):
                    want = ["async", i] if pid == pids[5] else i
                    assert conn.call(pid, ["echo", i] if pid != pids[5] else i) == want
            states_now = [state_of(conn, pid) for pid in pids]
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert PairState.OFF in states_now
        for pid in pids:
            want = ["async", 1] if pid == pids[5] else 1
            assert conn.call(pid, ["echo", 1] if pid != pids[5] else 1) == want


def test_a_stale_pid_of_a_routed_process_reaches_nobody(nodes: Nodes) -> None:
    """A Pid of another incarnation at the same OS pid shares the live process's pair (one
    pair per OS pid): what is sent to it goes on the route, where the callee's listener
    refuses it as its node would: NoProcError for a call, a dead letter for a cast."""
    b = nodes.nodes["b"]
    c = nodes.pid("b", "c")
    stale = p.Pid(c.node, c.ospid, 1, 1)
    dead = '{kind="cast",reason="noproc"}'
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        for i in range(SWITCH_AFTER + 2):
            assert conn.call(c, ["echo", i]) == i
        wait_until(lambda: conn.call(c, ["echo", 0]) == 0 and state_of(conn, c)
                   is PairState.DIRECT, 5, "the pair to switch")
        assert state_of(conn, stale) is None or state_of(conn, stale) is PairState.DIRECT
        with pytest.raises(p.NoProcError):
            conn.call(stale, ["echo", "stale"], timeout=5)
        assert state_of(conn, stale) is PairState.DIRECT  # on c's route
        dead0 = metric(b, "prismatic_dead_letters", dead)
        assert conn.cast(stale, ["seq", "stale"])
        wait_until(lambda: metric(b, "prismatic_dead_letters", dead) > dead0, 5,
                   "the dead letter")
        assert conn.call(c, ["echo", "live"]) == "live"


def test_what_a_listener_drops_past_its_hold_bound_is_counted_at_its_node_at_once(
        nodes: Nodes) -> None:
    b = nodes.nodes["b"]
    full = "prismatic_cluster_direct_listener_mailbox_full"
    full0 = metric(b, full)
    hold_past_the_bound(nodes, nodes.pid("b", "small"))
    wait_until(lambda: metric(b, full) > full0, 3, "the drops to be counted at b")


@pytest.mark.parametrize("when", ["asked", "connecting"])
def test_a_callee_killed_mid_switch_fails_the_next_call_at_once(nodes: Nodes,
                                                                 when: str) -> None:
    """The callee is SIGKILLed after the pair's hello went (its answer not read yet), or
    once the route's connection is up but before the fence: the caller's next call does
    not wait for its timeout (NoProcError from the node path, or ProcessDown with the
    reason its node saw), and a cast after it is a dead letter, at once."""
    b = nodes.nodes["b"]
    u = nodes.pid("b", "u")
    with p.connect(nodes.nodes["a"].data_dir) as conn:
        for i in range(SWITCH_AFTER if when == "asked" else SWITCH_AFTER + 1):
            assert conn.call(u, ["echo", i]) == i
        pair = conn._messaging().pairs[u]
        if when == "connecting":
            wait_until(lambda: pair.route is not None and pair.route.connected(), 5,
                       "the route's connection")
        with pytest.raises(p.ProcessDown):
            b.conn.call(u, ["die"], timeout=5)
        started = time.monotonic()
        with pytest.raises((p.NoProcError, p.ProcessDown)) as failed:
            conn.call(u, ["echo", "late"], timeout=5)
        if not isinstance(failed.value, p.NoProcError):
            assert failed.value.reason == p.Killed(9)
        assert conn.cast(u, ["seq", "late"])
        assert time.monotonic() - started < 2
    nodes.restarted("b", "u", u)


def test_a_caller_back_after_its_release_is_not_served_ahead_of_its_fence(
        nodes: Nodes) -> None:
    """A caller's route connection goes while c holds its first message (its fence still on
    the node path) and is not back within REJOIN_S: c releases it (drops what it held). The
    caller comes back later still (a network slower than REJOIN_S) and routes more before
    its fence came. What it sent on the node path before its fence goes in before anything
    it routed after it: what comes on the route before the fence is held again (not served
    ahead of the fence), and goes in behind it."""
    b = nodes.nodes["b"]
    c = nodes.pid("b", "c")
    released = "prismatic_cluster_direct_listener_released"
    dead = '{kind="cast",reason="noconnection"}'
    released0 = metric(b, released)
    dead0 = metric(b, "prismatic_dead_letters", dead)
    before = len(b.conn.call(c, ["casts"]))
    ctx = zmq.Context()
    try:
        link, token, port = ask_for_route(ctx, nodes, c)
        route_then_gone(nodes, token, port, [["rel", 0]], c)
        looked = time.monotonic() + REJOIN_S + 1  # c looks for it REJOIN_S after it went
        wait_until(lambda: time.monotonic() > looked and metric(b, released) > released0,
                   REJOIN_S + 5, "c to release the caller that did not come back in time")
        assert metric(b, "prismatic_dead_letters", dead) > dead0  # the held one: loudly
        route = route_socket(ctx, nodes, token, port)  # back, too late
        route.send(encode_deliveries([Deliver(c, CastFrame(["rel", 2])),
                                      Deliver(c, CallFrame(1, ["echo", "rel"]))]))
        # Its call is answered once served: at once if nothing holds it (then the cast
        # before it was served too, ahead of what follows on the node path).
        served_at_once = route.poll(500)
        # Sent by the caller before its fence (its node path is the slower one here).
        link.send(encode_deliveries([Deliver(c, CastFrame(["rel", 1]))]))
        link.send(encode_deliveries([Deliver(c, DirectFence(token))]))
        route.send(encode_deliveries([Deliver(c, CastFrame(["rel", 3]))]))
        wait_until(lambda: ["rel", 3] in b.conn.call(c, ["casts"])[before:], 5,
                   "what came on the route after the fence")
        got = [m for m in b.conn.call(c, ["casts"])[before:] if m[0] == "rel"]
        assert got == [["rel", 1], ["rel", 2], ["rel", 3]] and not served_at_once, got
        assert route.poll(5000), "the held call never answered"
        assert decode_answers(route.recv())[0] == [CallReply(1, "rel")]
        assert b.conn.call(c, ["echo", "still"]) == "still"
    finally:
        ctx.destroy(0)  # whatever an assertion left open
