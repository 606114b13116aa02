"""The knock (prismatic/mesh/_knock.py) against real listeners on loopback: what it concludes
from a refused connect, a live libzmq peer, a listener that closes with the knock still
unaccepted (a dying process closes its listener after its connections), and a listener that
never answers (a stopped process: nothing may be concluded)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import zmq

from prismatic.mesh._knock import Knock, KnockResult


def knock(port: int, timeout: float = 2.0,
          meanwhile: Callable[[Knock], None] | None = None) -> tuple[KnockResult, float]:
    """Knock at 127.0.0.1:``port`` on a fresh loop; ``meanwhile`` runs once the knock has
    started. The result and how long it took."""
    async def main() -> tuple[KnockResult, float]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[KnockResult] = loop.create_future()
        k = Knock(loop, "127.0.0.1", port, timeout, done.set_result)
        t0 = time.monotonic()
        k.start()
        if meanwhile is not None:
            meanwhile(k)
        result = await asyncio.wait_for(done, timeout + 5)
        return result, time.monotonic() - t0
    return asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening_is_refused() -> None:
    result, took = knock(free_port())
    assert result is KnockResult.REFUSED and took < 0.5


def test_a_live_zmq_peer_answers() -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        result, took = knock(port)
    finally:
        router.close(0)
        ctx.term()
    assert result is KnockResult.ANSWERED and took < 1.0


def test_a_listener_closed_with_the_knock_unaccepted_is_refused() -> None:
    """The dying process's listener, still open when the knock connects, closes without
    accepting it: the kernel resets the queued connection, which is the confirmation (it
    came only from the link's reconnect before, milliseconds later)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # never accepts
    port = listener.getsockname()[1]

    def close_listener_once_queued(k: Knock) -> None:
        async def later() -> None:
            while k.waiting != "reader":  # connected: queued in the listener's backlog
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)  # and nothing concluded while it stays queued
            assert k.sock is not None
            listener.close()
        asyncio.get_running_loop().create_task(later())

    result, took = knock(port, meanwhile=close_listener_once_queued)
    assert result is KnockResult.REFUSED and took < 1.0


def test_a_listener_that_never_answers_concludes_nothing() -> None:
    """A stopped process's listener still queues connections: no answer, no verdict."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        result, took = knock(listener.getsockname()[1], timeout=0.2)
    finally:
        listener.close()
    assert result is KnockResult.UNANSWERED and 0.2 <= took < 1.0


def test_a_cancelled_knock_never_reports() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    async def main() -> list[KnockResult]:
        loop = asyncio.get_running_loop()
        seen: list[KnockResult] = []
        k = Knock(loop, "127.0.0.1", listener.getsockname()[1], 0.05, seen.append)
        k.start()
        await asyncio.sleep(0.01)
        k.cancel()
        listener.close()  # would reset it, were it still open
        await asyncio.sleep(0.1)  # past its timeout too
        return seen
    assert asyncio.run(main()) == []
