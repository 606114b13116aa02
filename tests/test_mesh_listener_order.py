"""The mesh listener's descriptor (prismatic/mesh/_listener_order.py): bound above the floor,
so a killed node's listener closes before its connections; checked on a real node and on a
process killed with a listener and connections laid out the same way."""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import subprocess
import sys

from prismatic.mesh._listener_order import LISTENER_FD_FLOOR, open_descriptor_floor

_VICTIM = r"""
import socket, sys, time
from prismatic.mesh._listener_order import open_descriptor_floor
with open_descriptor_floor():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
listener.listen(8)
print(listener.getsockname()[1], listener.fileno(), flush=True)
conns = [listener.accept()[0] for _ in range(4)]
print("ready", flush=True)
time.sleep(60)
"""


def test_a_socket_made_inside_gets_a_number_above_the_floor_and_the_holes_are_freed() -> None:
    with open_descriptor_floor(200):
        s = socket.socket()
    try:
        assert s.fileno() >= 199
        low = os.open(os.devnull, os.O_RDONLY)  # the numbers below are free again
        assert low < 199
        os.close(low)
    finally:
        s.close()
    assert LISTENER_FD_FLOOR < 1024  # below FD_SETSIZE


def test_a_killed_process_closes_such_a_listener_before_its_connections() -> None:
    """At its first connection's close the listener is gone already: a connect is refused
    (with the listener bound low it was still there, 17 of 20 times)."""
    victim = subprocess.Popen([sys.executable, "-c", _VICTIM], stdout=subprocess.PIPE,
                              text=True)
    try:
        port, fd = map(int, victim.stdout.readline().split())  # type: ignore[union-attr]
        assert fd >= LISTENER_FD_FLOOR - 1
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        assert victim.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        hangups = select.epoll()
        for c in conns:
            hangups.register(c.fileno(), select.EPOLLRDHUP)
        victim.send_signal(signal.SIGKILL)
        assert hangups.poll(10), "no connection closed"
        knock = socket.socket()
        knock.setblocking(False)
        err = knock.connect_ex(("127.0.0.1", port))
        if err == errno.EINPROGRESS:
            select.select([], [knock], [], 2)
            err = knock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        knock.close()
        hangups.close()
        for c in conns:
            c.close()
        assert err == errno.ECONNREFUSED, os.strerror(err)
    finally:
        victim.kill()
        victim.wait()
