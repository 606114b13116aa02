"""The node loop's ZeroMQ endpoints under attack, against one real node: a malformed control
message must not end the control task, oversized frames must be refused before they are
buffered, and a flood of bad input logs one line per interval however many connections it
comes over."""

from __future__ import annotations

import socket

import zmq

from prismatic._control import CONTROL_MAX_BYTES
from prismatic._forwarder import PUBLISH_MAX_BYTES, SUBSCRIBE_MAX_BYTES
from prismatic._nodeinfo import hub_address
from prismatic.transports._framing import HEADER
from tests import zmtp
from tests.conftest import module_node, wait_until

node = module_node("tests.apps:flat")


def counter(node, name: str) -> float:
    for line in node.conn.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def node_out(node) -> list[str]:
    return node.log.with_name("node.out").read_text().splitlines()


def vm_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def test_only_the_nodes_user_may_connect_to_its_zeromq_sockets(node):
    for name in ("control.sock", "publish.sock", "events.sock"):
        assert (node.data_dir / name).stat().st_mode & 0o777 == 0o600, name


def test_a_two_frame_message_does_not_end_the_control_task(node):
    """Issue 11.1: a DEALER sending ``[b"a", b"b"]`` ended the control task (every later
    request timed out); now it is dropped, counted and logged, once per interval, however
    many connections the flood comes over (11.8)."""
    before = counter(node, "prismatic_bad_frames_control_total")
    ctx = zmq.Context()
    try:
        for i in range(200):  # a new connection per message: the throttle is node-wide
            s = ctx.socket(zmq.DEALER)
            s.connect(f"ipc://{node.data_dir.resolve()}/control.sock")
            s.send_multipart([b"a", b"b"] if i % 2 else [b"x"] * 7)
            s.close(linger=2000)
    finally:
        ctx.term()
    wait_until(lambda: counter(node, "prismatic_bad_frames_control_total") >= before + 200, 10,
               "200 bad control requests to be counted")
    st = node.conn.status()
    assert st.ready and st.dead_tasks == ()
    dropped = [line for line in node_out(node) if "control: dropped a malformed request" in line]
    assert 1 <= len(dropped) <= 2, dropped
    assert "0 more" not in dropped[0]


def test_new_hub_connections_share_one_throttle(node):
    """Issue 11.8: the hub throttled per connection, so a new connection per bad frame
    logged every one."""
    name = node.conn.status().node
    bad = HEADER.pack(2, 9) + b"\xc0"  # wire version 9: dropped, the stream goes on
    for _ in range(100):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(hub_address(name))
            s.sendall(bad)
    wait_until(lambda: counter(node, "prismatic_bad_frames_hub_total") >= 100, 10,
               "100 bad hub frames to be counted")
    lines = [line for line in node_out(node) if "hub: dropped a frame with wire version" in line]
    assert 1 <= len(lines) <= 2, lines


def test_oversized_frames_are_refused_before_they_are_buffered(node):
    """Issue 11.10: the control ROUTER accepted 100 MiB before the cookie check. Every
    ZeroMQ socket the node binds drops a peer whose frame is over its cap as soon as the
    frame's header arrives: the node's peak memory does not grow by the frame."""
    pid = node.proc.pid
    peak = vm_kib(pid, "VmHWM")
    big = 100 << 20
    data = node.data_dir.resolve()
    for sock, kind, cap in (("control.sock", "DEALER", CONTROL_MAX_BYTES),
                            ("publish.sock", "PUSH", PUBLISH_MAX_BYTES),
                            ("events.sock", "XSUB", SUBSCRIBE_MAX_BYTES)):
        with zmtp.connect(str(data / sock), kind) as s:
            s.sendall(zmtp.frame_header(big))
            sent = zmtp.send_until_dropped(s, big)
        assert sent < cap + (8 << 20), f"{sock} took {sent} bytes of a {big}-byte frame"
    st = node.conn.status()
    assert st.ready and st.dead_tasks == ()
    grown = vm_kib(pid, "VmHWM") - peak
    assert grown < 48 * 1024, f"the node's peak RSS grew by {grown} KiB"
