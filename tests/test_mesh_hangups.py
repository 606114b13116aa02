"""The links' hang-up watch (prismatic/mesh/_hangups.py) on real TCP connections: a peer's
close is heard, data is not, a descriptor that is not the expected connection is refused,
and the copy never changes the flags it shares with libzmq's descriptor."""

from __future__ import annotations

import fcntl
import os
import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from prismatic.mesh._hangups import HangupWatch


@contextmanager
def open_connection() -> Iterator[tuple[socket.socket, socket.socket, int]]:
    """(ours, the peer's, the peer's port): a TCP connection on loopback."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    ours = socket.create_connection(("127.0.0.1", port))
    theirs, _ = listener.accept()
    listener.close()
    try:
        yield ours, theirs, port
    finally:
        ours.close()
        theirs.close()


def readable(watch: HangupWatch[str], timeout: float) -> bool:
    return bool(select.select([watch.fileno()], [], [], timeout)[0])


def test_a_peers_close_is_heard_and_data_is_not() -> None:
    watch: HangupWatch[str] = HangupWatch()
    with open_connection() as (ours, theirs, port):
        ours.setblocking(False)  # as libzmq's descriptors are
        assert watch.watch("peer", ours.fileno(), port)
        theirs.sendall(b"greeting")
        assert not readable(watch, 0.1) and watch.hung_up() == []
        assert os.get_blocking(ours.fileno()) is False  # the copy shares and keeps the flags
        assert ours.recv(64) == b"greeting"  # and took nothing
        theirs.close()
        assert readable(watch, 2.0)
        assert watch.hung_up() == ["peer"]
        assert watch.copies == {} and not readable(watch, 0.05)  # reported once
    watch.close()


def test_a_reset_is_heard_too() -> None:
    watch: HangupWatch[str] = HangupWatch()
    with open_connection() as (ours, theirs, port):
        assert watch.watch("peer", ours.fileno(), port)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        theirs.close()
        assert readable(watch, 2.0) and watch.hung_up() == ["peer"]
    watch.close()


def test_the_copy_outlives_our_descriptor_until_unwatched() -> None:
    """libzmq closes its descriptor on a disconnect; the copy holds the connection open
    (the peer sees no close) until it is unwatched."""
    watch: HangupWatch[str] = HangupWatch()
    with open_connection() as (ours, theirs, port):
        assert watch.watch("peer", ours.fileno(), port)
        ours.close()
        theirs.setblocking(False)
        try:
            theirs.recv(1)
            raise AssertionError("the peer saw a close while the copy was held")
        except BlockingIOError:
            pass
        watch.unwatch("peer")
        theirs.setblocking(True)
        theirs.settimeout(2.0)
        assert theirs.recv(1) == b""  # now it sees the close
    watch.close()


def test_not_the_expected_connection_is_not_watched() -> None:
    watch: HangupWatch[str] = HangupWatch()
    with open_connection() as (ours, _theirs, port):
        assert not watch.watch("peer", ours.fileno(), port + 1)  # another peer's port
        r, w = os.pipe()
        assert not watch.watch("peer", r, port)  # not a socket connection
        os.close(r)
        os.close(w)
        fd = os.dup(ours.fileno())
        os.close(fd)
        assert not watch.watch("peer", fd, port)  # closed already
        assert watch.copies == {} and watch.keys == {}
    watch.close()


def test_a_new_connection_replaces_the_old_one_and_close_releases_all() -> None:
    watch: HangupWatch[str] = HangupWatch()
    with open_connection() as (a, a_peer, a_port), open_connection() as (b, _b_peer, b_port):
        assert watch.watch("x", a.fileno(), a_port)
        assert watch.watch("x", b.fileno(), b_port)  # a reconnect: the old copy goes
        assert len(watch.copies) == 1
        a_peer.close()
        assert not readable(watch, 0.1)  # the replaced copy is no longer watched
        flags = fcntl.fcntl(b.fileno(), fcntl.F_GETFL)
        watch.close()
        assert fcntl.fcntl(b.fileno(), fcntl.F_GETFL) == flags
