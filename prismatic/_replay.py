"""Replaying the node's event log: re-delivering a range to a handler, or republishing it.

Any process of the node's host may read the log while the node writes it (LMDB readers do
not block the writer): a worker rebuilding its state in ``init``, a client, the CLI. The
log is opened read-only in the calling process, after any fork, and closed before return.

Republishing puts each record's payload back on pub/sub under ``<prefix>.<topic>``
(``replay.`` by default): live subscribers of the original topics never mistake history for
news, and a consumer that wants history subscribes to ``replay.<pattern>``. Runs of records
with one topic go out as one batch; order is the log's order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._topics import validate_topic

__all__ = ["replay_log", "republish_log", "open_log_reader"]

DEFAULT_PREFIX = "replay"


@contextmanager
def open_log_reader(data_dir: Path | str) -> Iterator[Any]:
    from .eventlog import open_event_log  # noqa: PLC0415 - LMDB only in processes that read

    with open_event_log(str(Path(data_dir) / "eventlog"), node="", readonly=True) as log:
        yield log


def replay_log(data_dir: Path | str, handler: Callable[[Any], object], **filters: Any) -> int:
    """Call ``handler`` on every record matching ``filters`` (see ``EventLog.query``), in
    sequence order; return how many."""
    with open_log_reader(data_dir) as log:
        return log.replay(handler, **filters)


def republish_log(data_dir: Path | str, publish_many: Callable[[str, list[Any]], None], *,
                  prefix: str = DEFAULT_PREFIX, **filters: Any) -> int:
    """Publish the payloads of the matching records under ``<prefix>.<topic>``; how many."""
    validate_topic(prefix)
    topic: str | None = None
    run: list[Any] = []
    count = 0
    with open_log_reader(data_dir) as log:
        for record in log.query(**filters):
            if record.topic != topic:
                if run:
                    publish_many(f"{prefix}.{topic}", run)
                topic, run = record.topic, []
            run.append(record.payload)
            count += 1
    if run:
        publish_many(f"{prefix}.{topic}", run)
    return count
