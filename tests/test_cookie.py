"""Cookie authentication of the control endpoint, against real nodes."""

from __future__ import annotations

import stat

import msgspec
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

import prismatic as p
from prismatic._control import ControlReply, StatusCall
from prismatic._cookie import CookieRefused, ensure_cookie, read_cookie
from prismatic._node import control_address


def refusals(conn: p.NodeConnection) -> dict[str, float]:
    return {s.labels["reason"]: s.value
            for fam in text_string_to_metric_families(conn.metrics())
            for s in fam.samples if s.name == "prismatic_control_refusals_total"}


def test_cookie_file_is_private_and_kept(tmp_path):
    first = ensure_cookie(tmp_path)
    assert len(first) == 64 and int(first, 16) >= 0
    assert stat.S_IMODE((tmp_path / "cookie").stat().st_mode) == 0o600
    assert ensure_cookie(tmp_path) == first == read_cookie(tmp_path)
    (tmp_path / "cookie").chmod(0o644)
    with pytest.raises(p.NodeError, match="chmod 600"):
        ensure_cookie(tmp_path)


def test_wrong_and_missing_cookies_are_refused_and_counted(node_factory):
    n = node_factory("tests.apps:one_for_one")
    assert stat.S_IMODE((n.data_dir / "cookie").stat().st_mode) == 0o600
    with p.connect(n.data_dir, cookie="0" * 64) as bad:
        with pytest.raises(CookieRefused, match="wrong cookie"):
            bad.which_children()
        with pytest.raises(CookieRefused):
            bad.tree()
    # a client that sends no cookie field at all
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(control_address(n.data_dir))
    sock.send(msgspec.msgpack.encode({"type": "status", "ref": 7}))
    assert sock.poll(10_000)
    reply = msgspec.msgpack.decode(sock.recv(), type=ControlReply)
    sock.close(0)
    ctx.term()
    assert reply.ref == 7
    assert msgspec.msgpack.decode(reply.result)["reason"] == "unauthorized"
    assert refusals(n.conn) == {"wrong_cookie": 2.0, "missing_cookie": 1.0}
    # the right cookie still works, and nothing else changed
    assert n.conn.status().ready
    assert [c.id for c in n.conn.which_children()] == ["w3", "w2", "w1"]
    assert StatusCall(1).cookie == ""
