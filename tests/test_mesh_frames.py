"""The mesh's wire frames (:mod:`prismatic.transports._mesh_frames`) under hypothesis.

Properties: every frame survives an encode/decode round trip; anything else (a foreign
prefix, another wire version, random bytes, msgpack of the wrong shape, an unknown tag)
decodes to ``None`` with a reason, and never raises.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prismatic._address import Pid
from prismatic.transports import _global_frames as G
from prismatic._exit import Crashed, NoConnection, NoProc
from prismatic.transports import _mesh_frames as M
from prismatic.transports._messages import (
    CallFrame, CallRefused, CallReply, CastFrame, InfoFrame,
)
from prismatic.transports._remote_frames import CallFailed
from tests.conftest import assert_builds_every_member

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

names = st.text(min_size=1, max_size=12)
addrs = st.sampled_from(["tcp://127.0.0.1:4000", "tcp://[::1]:1"]) | st.text(max_size=20)
incs = st.integers(0, 2 ** 63 - 1)
seqs = st.integers(0, 2 ** 32)
updates = st.lists(st.builds(M.Update, names, addrs, incs, st.sampled_from(M.MemberState),
                             st.text(max_size=8)), max_size=M.MAX_PIGGYBACK).map(tuple)
head = (names, addrs, incs)
pids = st.builds(Pid, names, st.integers(0, 2 ** 22))
regs = st.builds(G.GlobalReg, names, pids, incs)
global_frames = (  # the global registry's (prismatic.mesh._global)
    st.builds(G.GlobalClaim, names, addrs, seqs, names, pids),
    st.builds(G.GlobalVerdict, names, addrs, seqs, names, pids, st.booleans(),
              st.none() | pids),
    st.builds(G.GlobalAdd, names, addrs, regs),
    st.builds(G.GlobalRemove, names, addrs, names, pids),
    st.builds(G.GlobalSync, names, addrs, st.lists(regs, max_size=4).map(tuple),
              st.booleans()))
values = (st.none() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=10)
          | st.lists(st.integers(-2**63, 2**63 - 1), max_size=3))  # what msgpack can carry
reasons = st.sampled_from([NoProc(), NoConnection(), Crashed("ValueError", "x", "tb")])
payloads = st.one_of(st.builds(CallFrame, seqs, values, st.none() | pids,
                               st.none() | st.text(max_size=5)),
                     st.builds(CastFrame, values), st.builds(InfoFrame, values))
answers = st.one_of(st.builds(CallReply, seqs, values), st.builds(CallRefused, seqs, names),
                    st.builds(CallFailed, seqs, reasons))
frames = st.one_of(
    st.builds(M.Ping, *head, seqs, names, updates),
    st.builds(M.Ack, *head, seqs, updates),
    st.builds(M.PingReq, *head, seqs, names, addrs, updates),
    st.builds(M.IndirectAck, *head, seqs, names, updates),
    st.builds(M.Nack, *head, seqs, names, updates),
    st.builds(M.Gossip, *head, updates),
    st.builds(M.SyncReq, *head, updates),
    st.builds(M.Sync, *head, updates),
    st.builds(M.Join, *head),
    st.builds(M.JoinReply, *head, updates),
    st.builds(M.JoinNack, *head, st.text(max_size=30)),
    st.builds(M.Leave, *head),
    *global_frames,
    st.builds(M.Route, names, seqs, pids | names, payloads),
    st.builds(M.Answer, names, seqs, answers),
    st.builds(M.Watch, names, pids),
    st.builds(M.LinkAdd, names, pids, pids),
    st.builds(M.LinkDel, names, pids, pids),
    st.builds(M.Gone, names, pids, reasons),
    st.builds(M.WhereisName, names, seqs, names),
    st.builds(M.NameAt, names, seqs, st.none() | pids),
    st.builds(M.ControlRoute, names, seqs, values.map(lambda v: msgspec.Raw(
        msgspec.msgpack.encode(v)))),
    st.builds(M.ControlAnswer, names, seqs, values.map(lambda v: msgspec.Raw(
        msgspec.msgpack.encode(v)))),
    st.builds(M.Events, names, st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)),
                                        max_size=3).map(tuple)))


def test_the_strategy_builds_every_frame() -> None:
    assert_builds_every_member(frames, M.MeshFrame)


@SETTINGS
@given(frames)
def test_round_trip(frame: Any) -> None:
    assert M.decode_mesh_frame(M.encode_mesh_frame(frame)) == (frame, "")


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    frame, why = M.decode_mesh_frame(data)
    assert frame is None and why


@SETTINGS
@given(st.recursive(st.none() | st.integers(-2 ** 63, 2 ** 63 - 1) | st.text(max_size=5)
                    | st.binary(max_size=5),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=10))
def test_wrong_shapes_behind_a_good_prefix_are_dropped(value: Any) -> None:
    frame, why = M.decode_mesh_frame(b"PM\x01" + msgspec.msgpack.encode(value))
    assert frame is None and why


def test_foreign_version_and_nesting() -> None:
    good = M.encode_mesh_frame(M.Leave("a", "tcp://h:1", 1))
    assert M.decode_mesh_frame(b"PM\x02" + good[3:])[1].startswith("unknown mesh wire version")
    assert M.decode_mesh_frame(b"XX" + good[2:])[1].startswith("foreign")
    assert M.decode_mesh_frame(b"PM")[0] is None
    deep = b"PM\x01" + b"\x91" * 100_000  # a list in a list in a list...
    assert M.decode_mesh_frame(deep)[0] is None
    huge = b"PM\x01" + b"\x00" * (M.MAX_FRAME_BYTES + 1)
    assert M.decode_mesh_frame(huge)[1].startswith("oversized")
