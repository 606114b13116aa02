"""Connections libzmq cuts below the node (prismatic/_connection_drops.py): a raw peer that
sends a frame over an endpoint's ZMQ_MAXMSGSIZE is counted and logged, a peer that hangs up
is not. Real sockets: a bound ROUTER in this process, then a real node's control, publish
and events endpoints (the mesh's listener: tests/test_mesh.py)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from prismatic._connection_drops import ConnectionDrops, Verdict, peek_verdict
from prismatic._context_term import term_within
from prismatic._control import CONTROL_MAX_BYTES
from prismatic._forwarder import PUBLISH_MAX_BYTES, SUBSCRIBE_MAX_BYTES
from tests import zmtp
from tests.conftest import module_node, wait_until


def test_a_peek_tells_a_goodbye_from_a_cut():
    assert peek_verdict(b"", None) is Verdict.LEFT  # end of stream: the peer hung up
    assert peek_verdict(b"\x00", None) is Verdict.DROPPED  # it was still sending
    assert peek_verdict(None, errno.EAGAIN) is Verdict.DROPPED  # open and quiet
    assert peek_verdict(None, errno.ECONNRESET) is Verdict.LEFT
    assert peek_verdict(None, errno.EBADF) is Verdict.UNCHECKED


# ---- one bound socket, in this process --------------------------------------------------------

CAP = 1000


@contextlib.contextmanager
def open_watched_router(tmp_path: Path, label: str, on_event: Any = None,
                        ) -> Iterator[tuple[str, ConnectionDrops]]:
    """A ROUTER bound at an ipc path, frames capped at CAP, watched as ``label``."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.maxmsgsize = CAP
    path = str(tmp_path / "r.sock")
    sock.bind(f"ipc://{path}")
    drops = ConnectionDrops()
    drops.watch(sock, label, on_event=on_event)
    try:
        yield path, drops
    finally:
        drops.close()
        sock.close(0)
        ctx.term()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[str, ConnectionDrops]]:
    with open_watched_router(tmp_path, "test") as watched:
        yield watched


def test_an_oversized_frame_is_counted_and_a_goodbye_is_not(router, caplog):
    path, drops = router
    caplog.set_level(logging.WARNING, "prismatic._connection_drops")
    for _ in range(3):  # well-behaved peers: a message, then they hang up
        ctx = zmq.Context()
        peer = ctx.socket(zmq.DEALER)
        peer.connect(f"ipc://{path}")
        peer.send(b"x" * CAP)  # at the cap: fine
        peer.close(1000)
        ctx.term()
    with zmtp.connect(path, "DEALER") as s:  # half a frame at the cap, then a hang-up
        wait_until(lambda: drops.watching("test"), 5, "the watcher to take the connection")
        s.sendall(zmtp.frame_header(CAP) + b"x" * (CAP // 2))
    # (a goodbye libzmq saw before the watcher could look is unchecked, never a cut)
    wait_until(lambda: drops.left["test"] + drops.unchecked["test"] == 4, 5,
               "the four goodbyes to be seen")
    assert drops.left["test"] >= 1 and drops.dropped["test"] == 0
    with zmtp.connect(path, "DEALER") as s:
        wait_until(lambda: drops.watching("test"), 5, "the watcher to take the connection")
        s.sendall(zmtp.frame_header(CAP + 1) + b"x" * 10)
        wait_until(lambda: drops.dropped["test"] == 1, 5, "the cut to be counted")
        s.settimeout(5)
        assert s.recv(1 << 16)  # the node's greeting and READY, unread so far
        assert s.recv(1) == b""  # and then the close, once the watcher let go
    assert drops.errors == 0
    assert f"test: libzmq cut a connection from pid {os.getpid()}" in caplog.text
    assert f"a frame over {CAP} bytes" in caplog.text


def test_a_descriptor_reused_by_a_live_connection_is_never_taken_for_a_cut(tmp_path):
    """The watcher looks late (a hook slows it): each short connection's descriptor number
    is a live connection's by then, and its copy is of that one, still open. Not a cut."""
    live = []
    with open_watched_router(tmp_path, "slow", lambda event, fd: time.sleep(0.02) is not None
                             ) as (path, drops):
        try:
            for _ in range(8):
                with zmtp.connect(path, "DEALER"):
                    pass  # a goodbye right after the handshake
                live.append(zmtp.connect(path, "DEALER"))  # takes the number it left
            wait_until(lambda: sum(d["slow"] for d in (drops.left, drops.unchecked,
                                                       drops.dropped)) >= 8, 10,
                       "the short connections to be judged")
            for s in live:
                s.close()
            wait_until(lambda: sum(d["slow"] for d in (drops.left, drops.unchecked,
                                                       drops.dropped)) == 16, 10,
                       "every connection to be judged")
            assert drops.dropped["slow"] == 0
            assert drops.unchecked["slow"] >= 1  # the race this guards did happen
        finally:
            for s in live:
                s.close()


def test_a_failing_hook_is_counted_and_the_watch_goes_on(tmp_path, caplog):
    def hook(event: int, fd: int) -> bool:
        raise RuntimeError("a bug in the hook")

    with open_watched_router(tmp_path, "hooked", hook) as (path, drops):
        with zmtp.connect(path, "DEALER") as s:
            wait_until(lambda: drops.watching("hooked"), 5, "the connection to be watched")
            s.sendall(zmtp.frame_header(CAP + 1))
            wait_until(lambda: drops.dropped["hooked"] == 1, 5, "the cut to be counted")
        assert drops.errors == 2  # ACCEPTED and DISCONNECTED, each logged
        assert "a bug in the hook" in caplog.text


# ---- a real node ------------------------------------------------------------------------------

node = module_node("tests.messaging_apps:agents")


def series(n, name: str, endpoint: str) -> float:
    m = re.search(rf'^prismatic_{name}{{endpoint="{endpoint}"}} (\S+)$', n.conn.metrics(), re.M)
    assert m, f"no {name} for {endpoint}"
    return float(m.group(1))


def dropped(n, endpoint: str) -> float:
    return series(n, "zmq_connections_dropped_total", endpoint)


def watched(n, endpoint: str) -> float:
    return series(n, "zmq_connections_watched", endpoint)


def test_every_capped_endpoint_of_a_node_counts_the_peers_libzmq_cut(node):
    data = node.data_dir.resolve()
    ends = (("control", "DEALER", CONTROL_MAX_BYTES), ("publish", "PUSH", PUBLISH_MAX_BYTES),
            ("events", "XSUB", SUBSCRIBE_MAX_BYTES))
    # ordinary traffic first: requests, a subscriber that comes and goes, a publisher
    node.conn.status()
    with node.conn.subscribe("nothing.#"):
        pass
    node.conn.publish("nothing.here", 1)
    before = {e: dropped(node, e) for e, _, _ in ends}
    node.conn.status()
    assert before == {e: dropped(node, e) for e, _, _ in ends}
    for endpoint, kind, cap in ends:
        open_before = watched(node, endpoint)
        with zmtp.connect(str(data / f"{endpoint}.sock"), kind) as s:
            wait_until(lambda e=endpoint, n=open_before: watched(node, e) > n, 5,
                       f"the node to watch the connection to {endpoint}.sock")
            s.sendall(zmtp.frame_header(cap + 1) + b"x" * 100)
            wait_until(lambda e=endpoint: dropped(node, e) == before[e] + 1, 5,
                       f"the cut on {endpoint}.sock to be counted")
    for endpoint, _, _ in ends:
        assert dropped(node, endpoint) == before[endpoint] + 1
    st = node.conn.status()
    assert st.ready and st.dead_tasks == ()
    wait_until(lambda: any(f"control: libzmq cut a connection from pid {os.getpid()}" in line
                           for line in node.log.with_name("node.out").read_text().splitlines()),
               5, "the node to log the first cut")


def test_a_watcher_closed_at_once_lets_the_context_terminate(tmp_path):
    """A node whose root fails at once stops before the watcher's thread has taken up the
    monitors it was given: every monitor must still be closed, or the node's context
    ``term()`` waits forever (the node hung on exit, its tree long gone)."""
    hung = 0
    for i in range(20):
        ctx = zmq.Context()
        socks = [ctx.socket(zmq.ROUTER) for _ in range(3)]
        for j, sock in enumerate(socks):
            sock.bind(f"ipc://{tmp_path}/s{i}-{j}")
        drops = ConnectionDrops()
        for j, sock in enumerate(socks):
            drops.watch(sock, f"endpoint{j}")
        drops.close()
        for sock in socks:
            sock.close(0)
        term = threading.Thread(target=ctx.term, daemon=True)
        term.start()
        term.join(2.0)
        hung += term.is_alive()
    assert hung == 0, f"{hung} of 20 contexts never terminated"


def test_a_socket_left_open_does_not_hang_the_contexts_end(caplog):
    """The node ends its context with term_within: a socket some path forgot makes it say so
    and go on, rather than hold the node's exit forever (what the watcher above once did)."""
    ctx = zmq.Context()
    left = ctx.socket(zmq.PAIR)  # a reference kept: a collected socket closes itself
    left.bind("inproc://left-open")
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        assert term_within(ctx, "test", 0.3) is False
    assert time.monotonic() - started < 2
    assert "did not terminate" in caplog.text
    left.close(0)  # the stuck term returns now, on its own thread
    ok = zmq.Context()
    ok.socket(zmq.PAIR).close()
    assert term_within(ok, "test", 2.0) is True
