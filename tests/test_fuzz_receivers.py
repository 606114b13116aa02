"""Fuzzing the messaging plane's receivers end to end, against one real node.

Hypothesis writes byte strings straight to (a) a worker's mailbox socket and (b) the node's
hub socket, each over a fresh ``AF_UNIX`` connection: random bytes, truncated frames, wrong
versions, lengths out of range, msgpack of the wrong shape or nested too deep, frames of the
other plane, and well-formed frames with odd fields. The sender half-closes its end and waits
for the receiver to close too (so every byte has been read and handled), then the node and
the worker must still answer, and the hub's bad frames must be counted exactly.

A well-formed frame a worker's handler cannot take (an unknown op) makes the worker crash
and be restarted, by design: that is the handler's crash, not the receiver's; the test then
waits for the supervisor to bring ``alpha`` back. (A forged ``Down`` or ``Exit`` is dropped
by the mailbox: only the node sends those.)

Pids in generated frames are never real processes (ospids above the kernel's limit) and names
never the registered ones, so a well-formed request cannot legitimately unregister ``alpha``.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prismatic as p
from prismatic._exit import (
    Crashed, ExitCode, Killed, NoConnection, Normal, NoProc, Shutdown,
)
from prismatic._hub import DEAD_LETTER_KINDS, DEAD_LETTER_REASONS
from prismatic._mailbox_stats import collect_stats
from prismatic._nodeinfo import hub_address, mailbox_address
from prismatic._notices import Down, Exit, GlobalNameConflict
from prismatic.transports import _messages as M
from prismatic.transports._framing import HEADER, MAX_FRAME, FrameBuffer, encode_frame
from tests.conftest import assert_builds_every_member, module_node, wait_until

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
enc = msgspec.msgpack.encode
REAL_NAMES = {"alpha", "beta", "small"}


_agents = module_node("tests.messaging_apps:agents")


@pytest.fixture(scope="module")
def node(_agents):
    _agents.name = _agents.conn.status().node
    return _agents


# ---- strategies --------------------------------------------------------------------------------

text = st.text(max_size=10)
names = text.filter(lambda s: s not in REAL_NAMES)
ints = st.integers(-(2 ** 63), 2 ** 64 - 1)
values = st.recursive(
    st.none() | st.booleans() | ints | st.floats() | text | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8)


def ghost_pids(node_name: str) -> st.SearchStrategy[p.Pid]:
    """Pids of processes that cannot exist: above PID_MAX_LIMIT (2**22), or another node."""
    return st.builds(p.Pid, st.sampled_from([node_name, "elsewhere", "x" * 200]) | text,
                     st.integers(2 ** 22 + 1, 2 ** 31))


reasons = st.one_of(st.builds(Normal), st.builds(Shutdown, text),
                    st.builds(Crashed, text, text), st.builds(Killed, st.integers(0, 99)),
                    st.builds(ExitCode, st.integers(-300, 300)), st.builds(NoProc),
                    st.builds(NoConnection))


def mailbox_frames(node_name: str) -> st.SearchStrategy[Any]:
    """Well-formed mailbox frames with odd fields; the ones that crash ``alpha`` (an op it
    does not know) are a minority, to stay within its restart intensity."""
    pids = ghost_pids(node_name)
    refs = ints
    return st.one_of(
        st.builds(M.CallFrame, refs, st.tuples(st.just("echo"), values).map(list),
                  st.none() | pids, st.none() | st.just("alpha")),
        st.builds(M.CallFrame, refs, values, st.none() | pids, names),  # refused: wrong name
        st.builds(M.CallFrame, refs, values, st.none() | pids, st.none()),  # mostly a crash
        st.builds(M.CallReply, refs, values), st.builds(M.CallRefused, refs, text),
        st.builds(M.CastFrame, values.filter(lambda v: not (isinstance(v, list)
                                                           and v[:1] == ["block"]))),
        st.builds(M.InfoFrame, values),
        st.builds(Down, refs, pids, reasons),
        st.builds(Exit, pids, reasons | st.builds(Normal)),
        st.builds(M.StatsReq, refs),
        st.builds(GlobalNameConflict, text, pids),
        # not from the node: dropped as forged (a hello would open a listener)
        st.builds(M.DirectHello, refs, st.binary(max_size=16), text),
        st.builds(M.DirectFence, st.binary(max_size=16)))


def hub_requests(node_name: str) -> st.SearchStrategy[Any]:
    pids = ghost_pids(node_name)
    refs = ints
    return st.one_of(
        st.builds(M.RegisterReq, refs, names, pids),
        st.builds(M.UnregisterReq, refs, names, pids),
        st.builds(M.WhereisReq, refs, text),
        st.builds(M.MonitorReq, refs, pids, pids),
        st.builds(M.DemonitorReq, refs, pids, ints),
        st.builds(M.LinkReq, refs, pids, pids),
        st.builds(M.UnlinkReq, refs, pids, pids),
        st.builds(M.ExitOfReq, refs, pids, st.floats(max_value=0.2) | st.just(float("nan"))),
        st.builds(M.DeadLetterNote, text, st.sampled_from(["noproc", "not_registered",
                                                           "mailbox_full"]) | text,
                  st.sampled_from(["cast", "info"]) | text, st.none() | pids, ints),
        st.builds(M.DirectCountsNote, st.dictionaries(st.just("switched") | text, ints,
                                                      max_size=3)),
        st.builds(M.EmitReq, refs, st.just("fuzz.emit") | text, st.lists(values, max_size=3),
                  text, st.none() | text),
        st.builds(M.GlobalRegisterReq, refs, names, pids),
        st.builds(M.GlobalUnregisterReq, refs, names, pids),
        st.builds(M.GlobalWhereisReq, refs, text))


def test_the_strategies_build_every_member_of_their_unions() -> None:
    assert_builds_every_member(mailbox_frames("n"), M.MailboxFrame)
    assert_builds_every_member(hub_requests("n"), M.HubRequest)


def deep(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"


def wire_pieces(frames: st.SearchStrategy[Any],
                others: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """One piece of a hostile stream."""
    def header(body: bytes, version: int = 1) -> bytes:
        return HEADER.pack(len(body) + 1, version) + body

    return st.one_of(
        st.binary(max_size=100),  # garbage
        frames.map(encode_frame),  # well formed, odd fields
        others.map(encode_frame),  # a frame of the other plane
        values.map(lambda v: header(enc(v))),  # msgpack of the wrong shape
        st.tuples(text, values).map(lambda tv: header(enc(list(tv)))),  # unknown tags
        st.tuples(st.integers(0, 255), frames).map(
            lambda vf: header(enc(vf[1]), vf[0])),  # any version byte
        st.tuples(frames, st.integers(1, 50)).map(
            lambda fn: header(enc(fn[0])[:-fn[1]] or b"\xc1")),  # body cut short
        st.sampled_from([header(b""), header(b"\x92\xa4cast" + deep(50_000)),
                         header(b"\x94\xa4call\x01" + deep(50_000) + b"\xc0"),
                         header(b"\x93\xa8register\x01" + deep(50_000)),
                         header(b"\x94\xa7whereis\x01\xa1x" + deep(50_000)),  # skipped tail
                         header(enc(["call", 1, None]) + b"\x00")]),
    )


def stream(pieces: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """A few pieces, perhaps ending in a length out of range or a frame cut short."""
    endings = st.one_of(
        st.just(b""),
        st.sampled_from([0, MAX_FRAME + 1, 2 ** 32 - 1]).map(lambda n: n.to_bytes(4, "big")),
        st.tuples(st.binary(min_size=1, max_size=60), st.integers(0, 4)).map(
            lambda bk: HEADER.pack(len(bk[0]) + 1 + bk[1], 1) + bk[0]))  # promises more
    return st.tuples(st.lists(pieces, min_size=1, max_size=4), endings).map(
        lambda pe: b"".join(pe[0]) + pe[1])


# ---- the sender and the checks -----------------------------------------------------------------


def send_and_wait_for_close(address: bytes, data: bytes, timeout: float = 10.0) -> None:
    """Write ``data``, half-close, and read until the receiver closes its end: by then it
    has read (and handled, in order) every byte, or given up on the stream."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return  # it closed first (a broken stream, or the worker died of the frame)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not s.recv(1 << 16):
                    return
            except ConnectionResetError:
                return
            except TimeoutError:
                pass
            assert time.monotonic() < deadline, "the receiver never closed the connection"


def alpha_answers(node) -> bool:
    try:
        return node.conn.call("alpha", ["echo", 1], timeout=2) == 1
    except p.CallError:
        return False  # crashed on a frame it was given, and not restarted yet


def alpha_pid(node) -> p.Pid:
    return wait_until(lambda: node.conn.whereis("alpha"), 10, "alpha to be registered")


def survives(node) -> None:
    assert node.proc.poll() is None, "the node died"
    assert node.conn.status().node == node.name
    wait_until(lambda: alpha_answers(node), 10, "alpha to answer again")


def hub_bad_frames(node) -> int:
    for line in node.conn.metrics().splitlines():
        if line.startswith("prismatic_bad_frames_hub_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no prismatic_bad_frames_hub_total in the metrics")


def expected_bad(data: bytes) -> int:
    """What the hub must count: a FrameBuffer fed the same bytes (it stops at a broken
    length, as the hub then closes the connection), plus the dead-letter notes whose reason
    or kind is outside the protocol (they would name a topic and a metric label)."""
    fb = FrameBuffer(msgspec.msgpack.Decoder(M.HubRequest), "expected")
    notes = [f for f in fb.feed(data) if isinstance(f, M.DeadLetterNote)]
    return fb.bad_frames + sum(1 for n in notes if n.reason not in DEAD_LETTER_REASONS
                               or n.kind not in DEAD_LETTER_KINDS)


# ---- the tests ---------------------------------------------------------------------------------


def mailbox_stats(pid: p.Pid) -> Any:
    got, missed = collect_stats({"a": pid}, 5.0)
    assert not missed, f"{pid} did not answer its stats request"
    return got["a"]


def may_stop_alpha(frame: Any) -> bool:
    """Whether a decoded frame reaches a handler of alpha's that may raise (any call it
    answers but an ``echo``). A ``Down`` or ``Exit`` from this process is forged (only the
    node may send them): dropped and counted, see :func:`dropped_by_alpha`."""
    if isinstance(frame, M.CallFrame):
        answered = frame.to_name is None or frame.to_name == "alpha"
        echo = isinstance(frame.msg, list) and len(frame.msg) == 2 and frame.msg[0] == "echo"
        return answered and not echo
    return False


def dropped_by_alpha(fb: FrameBuffer, decoded: list[Any]) -> int:
    """What alpha's mailbox must count as bad: what it cannot decode, and the notices it
    refuses because they do not come from the node (Down, Exit, a lost global name, a
    direct listener's hello or fence)."""
    return fb.bad_frames + sum(1 for f in decoded
                               if isinstance(f, (Down, Exit, GlobalNameConflict,
                                                 M.DirectHello, M.DirectFence)))


def test_fuzz_a_workers_mailbox(node):
    survives(node)
    frames, others = mailbox_frames(node.name), hub_requests(node.name)
    seen = {"dropped": 0, "same_process": 0}

    @FUZZ
    @given(data=stream(wire_pieces(frames, others)))
    def fuzz(data: bytes) -> None:
        target = alpha_pid(node)
        before = mailbox_stats(target).bad_frames
        fb = FrameBuffer(msgspec.msgpack.Decoder(M.MailboxFrame), "expected")
        decoded = fb.feed(data)
        send_and_wait_for_close(mailbox_address(node.name, target.ospid), data)
        survives(node)
        if any(may_stop_alpha(f) for f in decoded):
            return  # its handler's crash, by design: restarted
        # The receiver dropped what it could not decode or would not take (a forged notice),
        # counted each, and the process that took it is the one that answers now: no crash
        # hidden behind a restart.
        assert alpha_pid(node) == target
        want = dropped_by_alpha(fb, decoded)
        assert mailbox_stats(target).bad_frames - before == want
        seen["same_process"] += 1
        seen["dropped"] += want

    fuzz()
    # the worker's handler crashed on some frames, by design; never too often for its
    # supervisor (intensity 50 in 5 s), and the receiver itself never
    assert node.conn.call("alpha", ["echo", "still here"]) == "still here"
    assert seen["same_process"] >= 50 and seen["dropped"] >= 50, seen


def test_fuzz_the_hub(node):
    survives(node)
    frames, others = hub_requests(node.name), mailbox_frames(node.name)
    counted = {"want": hub_bad_frames(node)}

    @FUZZ
    @given(data=stream(wire_pieces(frames, others)))
    def fuzz(data: bytes) -> None:
        send_and_wait_for_close(hub_address(node.name), data)
        counted["want"] += expected_bad(data)
        want = counted["want"]
        got = wait_until(lambda: (n := hub_bad_frames(node)) >= want and [n], 10,
                         f"{want} bad frames counted by the hub")[0]
        assert got == want
        survives(node)
        assert node.conn.whereis("alpha") is not None

    fuzz()
    logs = node.log.parent / "node.out", node.log
    assert not any("hub: request" in f.read_text() for f in logs if f.exists()), \
        "a request raised in the hub"


def test_control_endpoint_survives_deeply_nested_requests(node):
    """msgpack nested past Python's recursion limit is bad input like any other."""
    import zmq

    from prismatic._control import SupervisorCall
    from prismatic._node import control_address

    nested = b"\x91" * 100_000 + b"\x00"  # 100k one-element arrays, one inside the other
    call = SupervisorCall(1, ("a",), msgspec.Raw(nested), "not-the-cookie")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.connect(control_address(node.data_dir))
        sock.send(msgspec.msgpack.encode(call))  # a well-formed call around a bottomless op
        sock.send(nested)
    finally:
        sock.close(linger=5000)  # deliver both before the context goes
        ctx.term()

    def counted() -> bool:
        return any(line.startswith("prismatic_bad_frames_control_total")
                   and float(line.split()[-1]) >= 2 for line in node.conn.metrics().splitlines())

    wait_until(counted, 10, "the bad control requests to be counted")
    assert node.conn.status().ready
