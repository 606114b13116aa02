"""The hub's own checks on processes (prismatic/_hub.py): probing a mailbox and watching a
pid. Real sockets and pidfds; file-descriptor exhaustion made real with RLIMIT_NOFILE."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator

from prismatic._address import Pid
from prismatic._hub import Hub
from prismatic._nodeinfo import mailbox_address
from tests.conftest import REPO

NODE = f"hubtest-{os.getpid()}"


def hub() -> Hub:
    return Hub(NODE, on_dead_letter=lambda note: None)


@contextlib.contextmanager
def no_free_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def mailbox(ospid: int, backlog: int = 16) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(mailbox_address(NODE, ospid))
    s.listen(backlog)
    try:
        yield s
    finally:
        s.close()


def test_a_probe_says_dead_only_when_the_mailbox_refuses():
    h = hub()
    with mailbox(4242):
        assert h.probe_alive(Pid(NODE, 4242))
    assert not h.probe_alive(Pid(NODE, 4242))  # closed: refused
    assert not h.probe_alive(Pid(NODE, 2 ** 22 + 7))  # never existed


def test_a_mailbox_with_a_full_accept_queue_is_alive():
    h = hub()
    with mailbox(4243, backlog=0) as box:
        held = []
        try:
            for _ in range(4):  # fill the accept queue (nobody accepts)
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.setblocking(False)
                try:
                    c.connect(box.getsockname())
                except BlockingIOError:
                    c.close()
                    break
                held.append(c)
            assert h.probe_alive(Pid(NODE, 4243))
        finally:
            for c in held:
                c.close()
    assert h.counters["probe_failed"] == 0


def _probe_without_fds() -> None:
    h = hub()
    with no_free_fds():
        alive = h.probe_alive(Pid(NODE, 2 ** 22 + 9))
    assert alive  # a wrong "dead" would fire a false DOWN or give a name away
    assert h.counters["probe_failed"] == 1


def _watch_without_fds() -> None:
    async def main() -> Hub:
        h = hub()
        with no_free_fds():
            h.watch(Pid(NODE, os.getpid()))
        h.watch(Pid(NODE, 2 ** 22 + 11))  # no such process: nothing to watch, nothing said
        return h

    h = asyncio.run(main())
    assert h.counters["watch_failed"] == 1
    assert not h.watched


def in_fresh_process(check: str) -> str:
    """Run ``check`` (a function of this module) in a new interpreter and return its log:
    a descriptor limit of 0 in the test process itself would hit every live thread there
    (ZeroMQ's I/O threads of other tests' contexts abort the process when a socket fails)."""
    code = ("import logging, sys; logging.basicConfig(stream=sys.stderr, level=logging.INFO)\n"
            f"import tests.test_hub as t; t.{check}()")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    return out.stderr


def test_a_probe_that_cannot_run_takes_the_process_as_alive_and_says_so():
    assert "cannot tell whether" in in_fresh_process("_probe_without_fds")


def test_a_process_the_hub_cannot_watch_is_logged_and_counted():
    assert "cannot watch" in in_fresh_process("_watch_without_fds")
