"""Long multi-part messages (prismatic/_multipart.py): libzmq holds every frame of one until
its last arrives (the known limit this pins, docs/operator.md), and the node then reads it
without a second copy. A raw ZMTP peer against a bound socket and against a real node."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import zmq

from prismatic._multipart import read_rest
from tests import zmtp
from tests.conftest import wait_until


def test_read_rest_keeps_what_it_is_asked_and_drops_the_rest(tmp_path: Path):
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    path = str(tmp_path / "p.sock")
    pull.bind(f"ipc://{path}")
    try:
        with zmtp.connect(path, "PUSH") as s:
            s.sendall(zmtp.message([b"a", b"b", b"c", b"d", b"e"]) + zmtp.message([b"x", b"y"]))
            assert pull.poll(5000)
            parts = [pull.recv()]
            assert read_rest(pull, parts, 2) == 5 and parts == [b"a", b"b"]
            parts = [pull.recv()]
            assert read_rest(pull, parts, 2) == 2 and parts == [b"x", b"y"]  # intact
            parts = [pull.recv(zmq.NOBLOCK)] if pull.poll(0) else []
            assert parts == []
    finally:
        pull.close(0)
        ctx.term()


def vm_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(field)


def counter(n, name: str) -> float:
    m = re.search(rf"^prismatic_{name}_total (\S+)$", n.conn.metrics(), re.M)
    assert m, name
    return float(m.group(1))


@pytest.mark.parametrize("endpoint, kind, dropped, says", [
    ("control", "DEALER", "bad_frames_control", "{} frames instead of 1"),
    ("publish", "PUSH", "pubsub_dropped_bad_frames", "{} frames instead of 2")])
def test_a_long_multipart_message_is_held_by_libzmq_once_and_read_without_a_copy(
        node_factory, endpoint, kind, dropped, says):
    node = node_factory("tests.messaging_apps:agents")
    pid = node.proc.pid
    frames = 600_000
    held = frames * 60 / 2 ** 20  # libzmq: 64 bytes per frame of at most 33 bytes
    before = counter(node, dropped)
    base = vm_mib(pid, "VmRSS")
    with zmtp.connect(str(node.data_dir.resolve() / f"{endpoint}.sock"), kind) as s:
        chunk = (zmtp.frame_header(20, more=True) + b"y" * 20) * 100_000
        for _ in range(frames // 100_000):
            s.sendall(chunk)
        # The known limit: libzmq holds it all, and the node sees none of it yet.
        wait_until(lambda: vm_mib(pid, "VmRSS") > base + held, 10,
                   "libzmq to hold the frames")
        assert node.conn.status().ready  # the node serves others meanwhile
        assert counter(node, dropped) == before
        pending = vm_mib(pid, "VmRSS")
        s.sendall(zmtp.frame_header(1) + b"z")  # the last frame: now the node reads it
        wait_until(lambda: counter(node, dropped) == before + 1, 10,
                   "the message to be dropped")
    # Read one frame at a time: no Python copy of a million frames on top of libzmq's
    # (recv_multipart made one: 40 to 75 MiB more here).
    assert vm_mib(pid, "VmHWM") - pending < held * 0.25
    out = node.log.with_name("node.out").read_text()
    assert says.format(frames + 1) in out
