"""Stream framing (:mod:`prismatic.transports._framing`) under hypothesis, for the three unions
it carries: the messaging plane's ``MailboxFrame`` and ``HubRequest``, the supervision
plane's ``Frame``.

Properties: valid frames cut at any byte boundaries come out whole and in order; a bad frame
(wrong version, empty or undecodable body, msgpack of the wrong shape, unknown tag, trailing
bytes, nesting too deep to decode) between them is dropped and counted, never raised, and
never costs a good frame; a length out of range marks the buffer ``broken``.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prismatic._address import Pid
from prismatic._exit import (
    Crashed, ExitCode, Killed, NoConnection, Normal, NoProc, Shutdown,
)
from prismatic._notices import Down, Exit, GlobalNameConflict
from prismatic.transports import _frames as F
from prismatic.transports import _messages as M
from prismatic.transports._framing import (
    HEADER, MAX_FRAME, SMALL_FRAME, WIRE_VERSION, ByteBudget, FrameBuffer, encode_frame,
)
from tests.conftest import assert_builds_every_member

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
enc = msgspec.msgpack.encode

# ---- strategies --------------------------------------------------------------------------------

ints = st.integers(-(2 ** 63), 2 ** 64 - 1)
small_ints = st.integers(-(2 ** 31), 2 ** 31)
text = st.text(max_size=12)
# What an ``Any`` field gives back after a msgpack round trip: lists (not tuples), str keys.
values = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False) | text | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12)
pids = st.builds(Pid, st.sampled_from(["n", "prismatic@host"]), st.integers(1, 2 ** 22))
reasons = st.one_of(
    st.builds(Normal), st.builds(Shutdown, text), st.builds(Crashed, text, text, text),
    st.builds(Killed, st.integers(1, 64)), st.builds(ExitCode, st.integers(-255, 255)),
    st.builds(NoProc), st.builds(NoConnection))
raws = values.map(lambda v: msgspec.Raw(enc(v)))
paths = st.lists(text, max_size=3).map(tuple)

mailbox_frames = st.one_of(
    st.builds(M.CallFrame, small_ints, values, st.none() | pids, st.none() | text),
    st.builds(M.CallReply, small_ints, values),
    st.builds(M.CallRefused, small_ints, text),
    st.builds(M.CastFrame, values), st.builds(M.InfoFrame, values),
    st.builds(Down, small_ints, pids, reasons), st.builds(Exit, pids, reasons),
    st.builds(M.StatsReq, small_ints), st.builds(GlobalNameConflict, text, pids),
    st.builds(M.DirectHello, small_ints, st.binary(max_size=16), text, st.binary(max_size=40),
              st.binary(max_size=40)),
    st.builds(M.DirectFence, st.binary(max_size=16)))
hub_requests = st.one_of(
    st.builds(M.RegisterReq, small_ints, text, pids),
    st.builds(M.UnregisterReq, small_ints, text, pids),
    st.builds(M.WhereisReq, small_ints, text),
    st.builds(M.MonitorReq, small_ints, pids, pids),
    st.builds(M.DemonitorReq, small_ints, pids, small_ints),
    st.builds(M.LinkReq, small_ints, pids, pids),
    st.builds(M.UnlinkReq, small_ints, pids, pids),
    st.builds(M.ExitOfReq, small_ints, pids, st.floats(0, 10)),
    st.builds(M.DeadLetterNote, text, text, text, st.none() | pids, small_ints),
    st.builds(M.DirectCountsNote, st.dictionaries(text, small_ints, max_size=3)),
    st.builds(M.EmitReq, small_ints, text, st.lists(values, max_size=3), text,
              st.none() | text),
    st.builds(M.GlobalRegisterReq, small_ints, text, pids),
    st.builds(M.GlobalUnregisterReq, small_ints, text, pids),
    st.builds(M.GlobalWhereisReq, small_ints, text))
supervision_frames = st.one_of(
    st.builds(F.Become, text, text, st.lists(values, max_size=3).map(tuple)),
    st.builds(F.BecomeAt, paths, text, text, st.lists(values, max_size=3).map(tuple)),
    st.builds(F.ReadyFrame, small_ints, st.floats(0, 1e9)),
    st.builds(F.IgnoredFrame), st.builds(F.ExitingFrame, reasons),
    st.builds(F.RequestFrame, small_ints, paths, raws),
    st.builds(F.ReplyFrame, small_ints, raws),
    st.builds(F.LifecycleFrame, paths, text, text, st.none() | small_ints, st.none() | reasons,
              text, st.floats(0, 1e9), st.floats(0, 1e9)),
    st.builds(F.TroubleFrame, paths, text))

UNIONS = {
    "mailbox": (M.MailboxFrame, mailbox_frames),
    "hub": (M.HubRequest, hub_requests),
    "supervision": (F.Frame, supervision_frames),
}


@pytest.mark.parametrize("union", sorted(UNIONS))
def test_each_strategy_builds_every_member_of_its_union(union: str) -> None:
    assert_builds_every_member(UNIONS[union][1], UNIONS[union][0])


def buffer(union: str) -> FrameBuffer:
    return FrameBuffer(msgspec.msgpack.Decoder(UNIONS[union][0]), f"test {union}")


def frame_bytes(version: int, body: bytes) -> bytes:
    return HEADER.pack(len(body) + 1, version) + body


def deep(depth: int, inner: bytes = b"\xc0") -> bytes:
    """msgpack of ``depth`` nested one-element arrays: decodes only with a deep stack."""
    return b"\x91" * depth + inner


# Bodies that are msgpack (or nearly) but no frame of any union: each must be dropped.
WRONG_SHAPES = [
    b"", b"\xc1", b"\x92", enc(None), enc(1), enc("call"), enc({"ref": 1}), enc([]),
    enc(["nosuchtag", 1]), enc(["call"]), enc(["call", "one", "msg"]), enc([None, 1, 2]),
    enc(["reply", "1", 2]), enc(["register", 1, 2, ["n", 1]]),
    enc(["register", 1, "x", ["n", "not-an-int"]]), enc(["down", 1, ["n", 1], {"kind": "?"}]),
    enc({"type": "ready", "pid": "x"}), enc({"type": "nosuchtag"}), enc([b"call", 1, 2]),
    enc(["call", 1, 2]) + b"\x00",  # trailing bytes
    enc(["cast", 1])[:-1],  # truncated body
    enc(["call", 1.5, None]), b"\xd4\xff\x00",  # a float ref; an ext
    deep(100_000),  # deeper than the decoder's stack
    b"\x94\xa4call\x01" + deep(100_000) + b"\xc0",  # ... inside an ``Any`` field
    b"\x92\xa4cast" + deep(100_000),
    b"\x94\xa7whereis\x01\xa1x" + deep(20_000),  # an extra element, skipped: still deep
    b"\x93\xa4cast\x01" + deep(20_000),
    b"\x82\xa4type\xa6become\xa3key" + deep(100_000),
    b"\x84\xa4type\xa6become\xa3key\xa1k\xa7spec_id\xa1s\xa4args\x91" + deep(20_000),
    b"\x84\xa4type\xa7request\xa3ref\x01\xa4path\x90\xa2op" + deep(20_000),  # a Raw
]


def bad_bodies(union: str) -> st.SearchStrategy[bytes]:
    """Bodies this union's decoder rejects (random bytes that happen to decode are skipped)."""
    decoder = msgspec.msgpack.Decoder(UNIONS[union][0])

    def rejected(body: bytes) -> bool:
        try:
            decoder.decode(body)
        except (ValueError, RecursionError):  # DecodeError, bad UTF-8, bottomless
            return True
        return False

    return st.sampled_from(WRONG_SHAPES) | st.binary(max_size=64).filter(rejected)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def feed_all(fb: FrameBuffer, chunks: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        out += fb.feed(chunk)
        assert len(fb.buf) < 4 or len(fb.buf) < 4 + struct.unpack_from(">I", fb.buf)[0], \
            "a complete frame was left in the buffer"
    return out


# ---- properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("union", UNIONS)
@SETTINGS
@given(data=st.data(), cuts=st.lists(st.integers(0, 10 ** 6), max_size=20))
def test_valid_frames_survive_any_split(union: str, data: Any, cuts: list[int]) -> None:
    frames = data.draw(st.lists(UNIONS[union][1], max_size=8))
    stream = b"".join(encode_frame(f) for f in frames)
    fb = buffer(union)
    assert feed_all(fb, split(stream, cuts)) == frames
    assert fb.bad_frames == 0 and not fb.broken and not fb.buf


@pytest.mark.parametrize("union", UNIONS)
@SETTINGS
@given(data=st.data(), cuts=st.lists(st.integers(0, 10 ** 6), max_size=20))
def test_bad_frames_between_good_ones_are_dropped_and_counted(union: str, data: Any,
                                                              cuts: list[int]) -> None:
    good = UNIONS[union][1]
    bad = st.one_of(
        bad_bodies(union).map(lambda b: frame_bytes(WIRE_VERSION, b)),
        st.tuples(st.integers(0, 255).filter(lambda v: v != WIRE_VERSION),
                  st.binary(max_size=32) | good.map(enc)).map(lambda vb: frame_bytes(*vb)))
    items = data.draw(st.lists(st.tuples(st.booleans(), st.data()), max_size=10))
    stream, want, n_bad = b"", [], 0
    for is_good, d in items:
        if is_good:
            frame = d.draw(good)
            stream += encode_frame(frame)
            want.append(frame)
        else:
            stream += d.draw(bad)
            n_bad += 1
    fb = buffer(union)
    assert feed_all(fb, split(stream, cuts)) == want
    assert fb.bad_frames == n_bad and not fb.broken and not fb.buf


@pytest.mark.parametrize("union", UNIONS)
@SETTINGS
@given(garbage=st.binary(max_size=300), cuts=st.lists(st.integers(0, 10 ** 6), max_size=10))
def test_random_bytes_never_raise(union: str, garbage: bytes, cuts: list[int]) -> None:
    fb = buffer(union)
    before = 0
    for chunk in split(garbage, cuts):
        fb.feed(chunk)
        assert fb.bad_frames >= before
        before = fb.bad_frames
        if fb.broken:
            assert not fb.buf
            break


@pytest.mark.parametrize("union", UNIONS)
@SETTINGS
@given(data=st.data(), keep=st.integers(0, 10 ** 6))
def test_a_truncated_frame_waits_and_completes(union: str, data: Any, keep: int) -> None:
    frame = data.draw(UNIONS[union][1])
    wire = encode_frame(frame)
    keep %= len(wire)
    fb = buffer(union)
    assert fb.feed(wire[:keep]) == []
    assert fb.bad_frames == 0 and not fb.broken
    assert fb.feed(wire[keep:]) == [frame]
    assert not fb.buf


@pytest.mark.parametrize("union", UNIONS)
@SETTINGS
@given(data=st.data(),
       length=st.one_of(st.just(0), st.integers(MAX_FRAME + 1, 2 ** 32 - 1)),
       tail=st.binary(max_size=64), cuts=st.lists(st.integers(0, 10 ** 6), max_size=5))
def test_a_length_out_of_range_breaks_the_stream(union: str, data: Any, length: int,
                                                 tail: bytes, cuts: list[int]) -> None:
    before = data.draw(st.lists(UNIONS[union][1], max_size=3))
    stream = b"".join(encode_frame(f) for f in before) + struct.pack(">I", length) + tail
    fb = buffer(union)
    out = []
    for chunk in split(stream, cuts):
        out += fb.feed(chunk)
        if fb.broken:
            break
    assert out == before  # what came before the bad length is kept
    assert fb.broken and fb.bad_frames == 1 and not fb.buf


@pytest.mark.parametrize("union", UNIONS)
@SETTINGS
@given(data=st.data())
def test_a_frame_that_decodes_as_another_union_is_dropped(union: str, data: Any) -> None:
    """A hub request sent to a mailbox (and so on) is a bad frame, not a crash."""
    others = [u for u in UNIONS if u != union]
    frame = data.draw(st.sampled_from(others).flatmap(lambda u: UNIONS[u][1]))
    fb = buffer(union)
    try:  # a few shapes are legal in both (e.g. ``reply`` of both planes): then it decodes
        expected = [msgspec.msgpack.Decoder(UNIONS[union][0]).decode(enc(frame))]
    except ValueError:  # msgspec's DecodeError, bad UTF-8
        expected = []
    assert fb.feed(encode_frame(frame)) == expected
    assert fb.bad_frames == 1 - len(expected) and not fb.broken


# ---- examples ----------------------------------------------------------------------------------


@pytest.mark.parametrize("union", UNIONS)
@pytest.mark.parametrize("body", WRONG_SHAPES, ids=range(len(WRONG_SHAPES)))
@pytest.mark.parametrize("whole", [True, False], ids=["one-read", "in-pieces"])
def test_each_wrong_shape_is_counted_once(union: str, body: bytes, whole: bool) -> None:
    fb = buffer(union)
    wire = frame_bytes(WIRE_VERSION, body)
    out: list[Any] = []
    step = 1 if len(wire) < 200 else 997  # byte by byte, or a few reads for the deep ones
    for chunk in [wire] if whole else [wire[i:i + step] for i in range(0, len(wire), step)]:
        out += fb.feed(chunk)
    assert out == [] and fb.bad_frames == 1 and not fb.broken and not fb.buf


def test_a_deeply_nested_message_does_not_lose_the_frames_read_with_it():
    fb = buffer("mailbox")
    first, last = M.CastFrame(1), M.CastFrame(3)
    wire = encode_frame(first) + frame_bytes(WIRE_VERSION, b"\x92\xa4cast" + deep(100_000)) \
        + encode_frame(last)
    assert fb.feed(wire) == [first, last]
    assert fb.bad_frames == 1


@pytest.mark.parametrize("union", UNIONS)
def test_a_string_that_is_not_utf8_is_a_bad_frame(union: str) -> None:
    """msgspec raises UnicodeDecodeError (not a DecodeError) for such a string: found by
    hypothesis, pinned here."""
    buf = FrameBuffer(msgspec.msgpack.Decoder(UNIONS[union][0]), f"test {union}")
    body = b"\x91\xa1\x80"  # [<a one-byte string that is not UTF-8>]
    assert buf.feed(HEADER.pack(len(body) + 1, WIRE_VERSION) + body) == []
    assert buf.bad_frames == 1 and not buf.broken


# ---- caps: one frame's size, and the bytes of unfinished frames a listener holds ------------


def test_a_frame_over_the_buffers_cap_breaks_the_stream_and_is_counted() -> None:
    fb = FrameBuffer(msgspec.msgpack.Decoder(M.HubRequest), "test", max_frame=1000)
    assert fb.feed(encode_frame(M.WhereisReq(1, "x" * 900))) != []
    assert fb.feed(HEADER.pack(1001, WIRE_VERSION)) == []
    assert fb.broken and fb.too_big == 1 and fb.bad_frames == 1
    assert fb.feed(encode_frame(M.WhereisReq(2, "x"))) == []  # broken: the owner closes it


@SETTINGS
@given(sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=12),
       limit=st.integers(0, 12000), complete=st.lists(st.booleans(), min_size=12, max_size=12))
def test_a_shared_budget_bounds_the_unfinished_bytes_of_all_buffers(
        sizes: list[int], limit: int, complete: list[bool]) -> None:
    """Each buffer gets a partial frame of ``size`` bytes (some then complete it, some close);
    together they never hold more than the limit, and every byte is given back."""
    budget = ByteBudget(limit)
    decoder = msgspec.msgpack.Decoder(M.HubRequest)
    buffers = []
    for size, done in zip(sizes, complete, strict=False):
        frame = encode_frame(M.WhereisReq(1, "x" * size))
        fb = FrameBuffer(decoder, "test", budget=budget)
        room = limit - budget.used
        fb.feed(frame[:-1])
        assert budget.used <= limit
        assert budget.used == sum(b.charged for b in buffers + [fb])
        assert fb.broken == (len(frame) - 1 > room)
        if fb.broken:
            assert fb.over_budget == 1 and fb.charged == 0
        elif done:
            assert len(fb.feed(frame[-1:])) == 1 and fb.charged == 0
        buffers.append(fb)
    for fb in buffers:
        fb.release()
    assert budget.used == 0


@pytest.mark.parametrize("size", [0, SMALL_FRAME - 20, SMALL_FRAME, 4 * SMALL_FRAME])
def test_a_whole_frame_in_one_read_decodes_from_a_copy_or_a_view(size: int) -> None:
    """Frames under SMALL_FRAME are decoded from a slice, larger ones from a memoryview of
    the read: both give the frame back whole."""
    decoder = msgspec.msgpack.Decoder(M.MailboxFrame)
    frame = M.CallReply(7, b"x" * size)
    fb = FrameBuffer(decoder, "test")
    assert fb.feed(encode_frame(frame)) == [frame]
    assert not fb.buf and fb.bad_frames == 0
