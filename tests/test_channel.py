"""The supervision channel: frames round-trip; garbage is dropped and counted, never raised."""

import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

import prismatic as p
from prismatic.transports._channel import Channel, open_channel_pair
from prismatic.transports._frames import WIRE_VERSION, ExitingFrame, ReadyFrame


def test_frames_round_trip_in_order():
    a, b = open_channel_pair()
    frames = [ReadyFrame(pid=i, mono=float(i)) for i in range(100)]
    frames.append(ExitingFrame(p.Crashed("ValueError", "x", "tb")))
    for f in frames:
        a.send(f)
    got = []
    while len(got) < len(frames):
        got += b.receive(block=True)
    assert got == frames
    a.close()
    assert b.receive(block=True) == [] and b.closed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.integers(0, 3))
def test_garbage_bodies_are_dropped_not_raised(bodies, version):
    x, y = socket.socketpair()
    reader = Channel(y)
    for body in bodies:
        x.sendall(struct.pack(">IB", len(body) + 1, version) + body)
    ok = ReadyFrame(pid=1, mono=0.0)
    Channel(x).send(ok)
    got = []
    while ok not in got and not reader.closed:
        got += reader.receive(block=True)
    assert got[-1] == ok
    assert reader.bad_frames + len(got) - 1 == len(bodies)  # each one decoded or counted
    x.close()
    y.close()


def test_oversized_length_closes_the_channel():
    x, y = socket.socketpair()
    reader = Channel(y)
    x.sendall(struct.pack(">IB", 2**31, WIRE_VERSION))
    assert reader.receive(block=True) == []
    assert reader.closed and reader.bad_frames == 1
