"""Every endpoint of one real node fuzzed at once, then the node must be whole.

Thousands of messages, from a fixed seed: random bytes, truncated encodings of real
requests, msgpack of the wrong shape or nested too deep, multi-frame and empty messages,
frames over each endpoint's cap, and frames whose sender vanishes mid-frame, sent to

* the ZeroMQ endpoints: ``control.sock`` (ROUTER), ``publish.sock`` (PULL) and
  ``events.sock`` (XPUB, which reads subscriptions), through real ZeroMQ sockets and through
  a raw ZMTP peer (:mod:`tests.zmtp`) for what a ZeroMQ socket would never send;
* the ``AF_UNIX`` hub and a worker's mailbox, as raw byte streams (as
  ``tests/test_fuzz_receivers.py`` does with hypothesis, in depth; here for breadth).

Then: the node answers a control request and a call to the worker, pub/sub still delivers,
every bad input was counted, no message raised inside a task of the node (a raise there
means a receiver has a bug even though it survived), ``/health`` and ``/ready`` are 200 and
``status`` names no dead task, the node's peak RSS grew by a bounded amount, and the log
holds a bounded number of lines.
"""

from __future__ import annotations

import random
import socket
import urllib.request
from collections.abc import Iterator

import msgspec
import pytest
import zmq

from prismatic._control import CONTROL_MAX_BYTES, ControlCall, StatusCall, SupervisorCall
from prismatic._forwarder import PUBLISH_MAX_BYTES, SUBSCRIBE_MAX_BYTES
from prismatic._nodeinfo import hub_address, mailbox_address
from prismatic.transports import _messages as M
from prismatic.transports._framing import HEADER, MAX_FRAME, encode_frame
from tests import zmtp
from tests.conftest import RunningNode, start_node, wait_until
from tests.test_fuzz_receivers import send_and_wait_for_close

SEED = 11
enc = msgspec.msgpack.encode
_call_decoder = msgspec.msgpack.Decoder(ControlCall)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, str]]:
    n = start_node(tmp_path_factory.mktemp("fuzz_endpoints"), "tests.messaging_apps:agents",
                   args=("--metrics-port", "auto", "--quiet"))
    url = wait_until(lambda: n.conn.status().metrics_url, 10, "the metrics endpoint")
    yield n, str(url).removesuffix("/metrics")
    n.stop()
    wait_until(lambda: not n.pids(), 10, "the node's processes to exit")


def metric(node: RunningNode, name: str) -> float:
    """The sum of every sample of ``name`` (all label sets)."""
    return sum(float(line.split()[-1]) for line in node.conn.metrics().splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


# ---- what is sent ------------------------------------------------------------------------------

def garbage(rng: random.Random, max_size: int = 200) -> bytes:
    return rng.randbytes(rng.randrange(max_size))


def msgpack_value(rng: random.Random, depth: int = 0) -> object:
    pick = rng.randrange(7 if depth < 3 else 4)
    if pick == 0:
        return None
    if pick == 1:
        return rng.randrange(-2 ** 63, 2 ** 64)
    if pick == 2:
        return rng.choice(["", "supervisor", "status", "tree", "metrics", "x" * 300])
    if pick == 3:
        return garbage(rng, 20)
    if pick == 4:
        return [msgpack_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if pick == 5:
        return {str(rng.randrange(9)): msgpack_value(rng, depth + 1) for _ in range(3)}
    return rng.random()


def control_frames(rng: random.Random) -> list[bytes]:
    """One control message (the client's frames; the ROUTER adds the identity)."""
    real = enc(rng.choice([StatusCall(rng.randrange(1 << 32), "not-the-cookie"),
                           SupervisorCall(1, ("root",), msgspec.Raw(enc(["which_children"])),
                                          "bad")]))
    pick = rng.randrange(9)
    if pick == 0:
        return [garbage(rng)]
    if pick == 1:
        return [garbage(rng, 50) for _ in range(rng.randrange(2, 30))]  # multi-frame
    if pick == 2:
        return [real[:rng.randrange(len(real))]]  # truncated
    if pick == 3:
        return [enc(msgpack_value(rng))]  # the wrong shape
    if pick == 4:
        return [b"\x91" * rng.randrange(1000, 100_000) + b"\xc0"]  # nested too deep
    if pick == 5:
        return [b""] * rng.randrange(1, 4)
    if pick == 6:
        return [real, garbage(rng)]  # a real request with a frame too many
    if pick == 7:
        return [enc([rng.choice(["status", "tree", "supervisor"]), msgpack_value(rng)])]
    return [real]  # well formed, wrong cookie: refused (answered), not a bad frame


def publish_frames(rng: random.Random) -> list[bytes]:
    topic = rng.choice([b"fuzz.ok", b"fuzz..bad", b"_hello.spoof", b"\xff\xfe", b"", b"a" * 300])
    pick = rng.randrange(6)
    if pick == 0:
        return [garbage(rng)]
    if pick == 1:
        return [garbage(rng, 50) for _ in range(rng.randrange(3, 30))]
    if pick == 2:
        return [topic, garbage(rng)]
    if pick == 3:
        return [topic, enc([msgpack_value(rng)])[:rng.randrange(1, 6)]]  # a cut array header
    if pick == 4:
        return [topic]
    return [topic, enc([msgpack_value(rng) for _ in range(rng.randrange(1, 4))])]


def subscription_frames(rng: random.Random) -> list[bytes]:
    pick = rng.randrange(4)
    if pick == 0:
        return [bytes((rng.randrange(2),)) + garbage(rng, 60)]  # (un)subscribe anything
    if pick == 1:
        return [b"\x01_hello." + garbage(rng, 20)]  # a handshake the node answers
    if pick == 2:
        return [garbage(rng, 40) for _ in range(rng.randrange(2, 10))]
    return [garbage(rng)]


def stream(rng: random.Random, frames: list[bytes]) -> bytes:
    """A hostile AF_UNIX byte stream: mostly bad frames, perhaps ending in a broken length
    or a frame cut short. ``frames``: encoded frames to truncate and corrupt (none of them
    is sent whole: a well-formed frame could legitimately act, e.g. crash the worker)."""
    pieces = []
    for _ in range(rng.randrange(1, 12)):
        pick = rng.randrange(5)
        if pick == 0:
            pieces.append(garbage(rng))
        elif pick == 1:
            f = rng.choice(frames)
            body = f[5:5 + rng.randrange(len(f) - 5)]  # body cut short, length fixed up
            pieces.append(HEADER.pack(len(body) + 1, 1) + body)
        elif pick == 2:
            body = rng.choice(frames)[5:]
            pieces.append(HEADER.pack(len(body) + 1, rng.randrange(2, 256)) + body)  # version
        elif pick == 3:
            body = enc(msgpack_value(rng))
            pieces.append(HEADER.pack(len(body) + 1, 1) + body)
        else:
            pieces.append(HEADER.pack(2, 1) + b"\xc1")  # never valid msgpack
    ending = rng.randrange(4)
    if ending == 1:
        pieces.append(rng.choice([0, MAX_FRAME + 1, 2 ** 32 - 1]).to_bytes(4, "big"))
    elif ending == 2:
        pieces.append(HEADER.pack(1000, 1) + garbage(rng, 100))  # promises more, then closes
    return b"".join(pieces)


def zmtp_abuse(address: str, kind: str, cap: int, rng: random.Random) -> None:
    """What no ZeroMQ socket sends: a frame over the cap, a frame or a multi-frame message
    whose sender vanishes half way, a frame header cut short."""
    for pick in range(4):
        try:
            with zmtp.connect(address, kind) as s:
                if pick == 0:  # over the cap, and so big that buffering it would show
                    size = max(cap + 1, 64 << 20)
                    s.sendall(zmtp.frame_header(size))
                    zmtp.send_until_dropped(s, size)
                elif pick == 1:
                    s.sendall(zmtp.frame_header(5000) + garbage(rng, 4000))
                elif pick == 2:
                    s.sendall(zmtp.message([garbage(rng, 30) for _ in range(500)])[:-10])
                else:
                    s.sendall(b"\x02\x00\x00")  # a long frame's size, cut short
        except (BrokenPipeError, ConnectionResetError):
            pass  # dropped by the node: what it should do


# ---- the test ----------------------------------------------------------------------------------


def test_every_endpoint_survives_a_fuzzing(node):
    node, base = node
    rng = random.Random(SEED)
    data = node.data_dir.resolve()
    pid = node.proc.pid
    alpha = wait_until(lambda: node.conn.whereis("alpha"), 10, "alpha to be registered")
    node.conn.metrics()  # the first scrape's one-time allocations are not the fuzz's
    peak_before = vm_kib(pid, "VmHWM")
    bad_control = metric(node, "prismatic_bad_frames_control_total")
    forwarded = sum(metric(node, f"prismatic_pubsub_{c}_total") for c in (
        "messages_forwarded", "dropped_bad_frames", "dropped_bad_topic"))
    hub_bad = metric(node, "prismatic_bad_frames_hub_total")
    box_bad = metric(node, "prismatic_bad_frames_mailbox_total")
    lines_before = len(node.log.with_name("node.out").read_text().splitlines())

    ctx = zmq.Context()
    sent_control = expect_bad_control = sent_publish = 0
    try:
        for _ in range(20):  # 20 clients of each endpoint, 100 messages each
            dealer = ctx.socket(zmq.DEALER)
            push = ctx.socket(zmq.PUSH)
            xsub = ctx.socket(zmq.XSUB)
            for s, name in ((dealer, "control"), (push, "publish"), (xsub, "events")):
                s.setsockopt(zmq.LINGER, 5000)
                s.connect(f"ipc://{data}/{name}.sock")
            for _ in range(100):
                frames = control_frames(rng)
                dealer.send_multipart(frames)
                sent_control += 1
                try:
                    expect_bad_control += len(frames) != 1 or not _call_decoder.decode(frames[0])
                except (ValueError, RecursionError):
                    expect_bad_control += 1
                push.send_multipart(publish_frames(rng))
                sent_publish += 1
                xsub.send_multipart(subscription_frames(rng))
            for s in (dealer, push, xsub):
                s.close()  # lingers until everything is handed over
        for name, kind, cap in (("control", "DEALER", CONTROL_MAX_BYTES),
                                ("publish", "PUSH", PUBLISH_MAX_BYTES),
                                ("events", "XSUB", SUBSCRIBE_MAX_BYTES)):
            zmtp_abuse(str(data / f"{name}.sock"), kind, cap, rng)
    finally:
        ctx.term()

    hub_frames = [encode_frame(f) for f in (
        M.WhereisReq(1, "alpha"), M.RegisterReq(2, "fuzz", alpha),
        M.EmitReq(3, "fuzz.emit", [1], "fuzz", None), M.LinkReq(4, alpha, alpha))]
    box_frames = [encode_frame(f) for f in (
        M.CallFrame(1, ["echo", 1], None, "alpha"), M.CastFrame(["x"]), M.InfoFrame(1))]
    for _ in range(150):
        send_and_wait_for_close(hub_address(alpha.node), stream(rng, hub_frames))
        send_and_wait_for_close(mailbox_address(alpha.node, alpha.ospid), stream(rng, box_frames))

    # everything sent was handled: counted as bad, refused, or forwarded
    wait_until(lambda: metric(node, "prismatic_bad_frames_control_total")
               == bad_control + expect_bad_control, 10, "the bad control requests counted")
    wait_until(lambda: sum(metric(node, f"prismatic_pubsub_{c}_total") for c in (
        "messages_forwarded", "dropped_bad_frames", "dropped_bad_topic"))
        == forwarded + sent_publish, 10, "every published message forwarded or dropped")
    assert metric(node, "prismatic_bad_frames_hub_total") > hub_bad + 150
    assert metric(node, "prismatic_bad_frames_mailbox_total") > box_bad + 150
    assert 1000 <= expect_bad_control < sent_control

    # and the node is whole
    assert node.proc.poll() is None
    st = node.conn.status()
    assert st.ready and st.dead_tasks == ()
    for path in ("/health", "/ready"):
        assert urllib.request.urlopen(base + path, timeout=5).status == 200
    assert node.conn.call("alpha", ["echo", "still here"]) == "still here"
    assert node.conn.whereis("alpha") == alpha  # the hub fuzz unregistered nothing real
    with node.conn.subscribe("after.fuzz") as sub:
        node.conn.publish("after.fuzz", 1)
        assert (event := sub.next(10)) is not None and event.payload == 1
    assert metric(node, "prismatic_node_task_errors_total") == 0, \
        "a message raised inside a task of the node"
    grown = vm_kib(pid, "VmHWM") - peak_before
    assert grown < 64 * 1024, f"the node's peak RSS grew by {grown} KiB"
    lines = node.log.with_name("node.out").read_text().splitlines()[lines_before:]
    assert len(lines) < 20, "the log was flooded:\n" + "\n".join(lines[:40])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # the hub still accepts
        s.connect(hub_address(alpha.node))
