"""The node's task watch: a message that raises is dropped and counted; a task that ends
turns the real HTTP ``/health`` and ``/ready`` to 503, says why, and is logged."""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request

from prismatic._metrics import NodeMetrics, serve_metrics
from prismatic._node_tasks import NodeTasks


def http_status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_raising_message_is_dropped_and_the_task_keeps_serving(caplog):
    caplog.set_level(logging.WARNING)
    counted: list[str] = []

    async def main() -> list[int]:
        tasks = NodeTasks(on_error=counted.append)
        queue: asyncio.Queue[int] = asyncio.Queue()
        served: list[int] = []

        async def serve() -> None:
            while True:
                msg = await queue.get()
                with tasks.guard("control"):
                    served.append(10 // msg)  # 0 raises ZeroDivisionError

        tasks.start("control", serve())
        for msg in (1, 0, 0, 2):
            queue.put_nowait(msg)
        while len(served) < 2:
            await asyncio.sleep(0.001)
        assert not tasks.dead
        tasks.close()
        await asyncio.sleep(0)
        return served

    assert asyncio.run(main()) == [10, 5]
    assert counted == ["control", "control"]
    lines = [r for r in caplog.records if "a message raised" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info  # throttled, with the traceback


def test_a_dead_task_turns_health_and_ready_to_503(caplog):
    metrics = NodeMetrics("unit", lambda: [], lambda: {}, lambda: {})
    metrics.ready = True
    server = serve_metrics(metrics, 0)
    base = server.url.removesuffix("/metrics")
    caplog.set_level(logging.ERROR)

    async def main() -> NodeTasks:
        def died(task: str) -> None:
            metrics.task_deaths.labels(task).inc()
            metrics.dead_tasks = tuple(tasks.dead)

        tasks = NodeTasks(on_death=died)

        async def broken() -> None:
            raise OSError("the socket failed for good")

        async def beat() -> None:
            await asyncio.sleep(3600)

        tasks.start("heartbeat", beat())
        tasks.start("control", broken())
        while not tasks.dead:
            await asyncio.sleep(0.001)
        tasks.close()  # a stopping node's cancelled tasks are no deaths
        await asyncio.sleep(0)
        return tasks

    try:
        assert http_status(base + "/health")[0] == 200
        tasks = asyncio.run(main())
        assert list(tasks.dead) == ["control"]
        for path in ("/health", "/ready"):
            code, body = http_status(base + path)
            assert code == 503 and "dead node tasks: control" in body
        assert "prismatic_node_task_deaths_total{task=\"control\"} 1.0" in \
            metrics.exposition().decode()
    finally:
        server.close()
    deaths = [r for r in caplog.records if "node task control died" in r.getMessage()]
    assert len(deaths) == 1 and "the socket failed for good" in deaths[0].getMessage()
