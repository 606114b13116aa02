"""Event log: appends and acks, queries and indexes, replay, follow, retention, map growth,
bad input, disk full. Real LMDB files, real processes; waits use deadlines, never bare sleeps.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from prismatic._errors import EventLogError, EventLogFormatError, EventLogFullError, TopicError
from prismatic.eventlog import EventDraft, EventRecord, _log, open_event_log

REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    ready = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        ready.wait(0.01)


def run_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=env, **kwargs
    )


def test_append_ack_and_seq_order(tmp_path: Path) -> None:
    with open_event_log(str(tmp_path / "log"), node="n1") as log:
        assert log.last_seq == 0 and log.first_seq is None
        assert log.append("a.b", {"k": 1}, source="s") == 1
        futures = [log.submit("a.c", i, source="s", correlation_id=f"c{i}") for i in range(100)]
        assert [f.result(timeout=10) for f in futures] == list(range(2, 102))
        many = log.submit_many([EventDraft("a.d", i, "s2") for i in range(10)])
        assert many.result(timeout=10) == list(range(102, 112))
        records = list(log.query())
        assert [r.seq for r in records] == list(range(1, 112))
        assert records[0] == EventRecord(
            1, records[0].wall_ns, records[0].mono_ns, "n1", "s", "a.b", None, {"k": 1}
        )
        assert records[5].correlation_id == "c4"
        stats = log.stats()
        assert stats.appends == 111 and stats.records == 111 and stats.last_seq == 111
    with open_event_log(str(tmp_path / "log"), node="n1") as log:
        assert log.append("a.b", None, source="s") == 112  # seqs continue after reopen


def test_a_lazy_event_waits_for_company_and_the_next_one_shares_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node logs lifecycle events lazily: a burst of starts shares a few synced commits.
    monkeypatch.setattr(_log, "LAZY_COMMIT_S", 0.3)
    with open_event_log(str(tmp_path / "log"), node="n1") as log:
        t0 = time.monotonic()
        first = log.submit("supervisor.a", 1, source="s", lazy=True)
        second = log.submit("supervisor.b", 2, source="s", lazy=True)
        assert first.result(timeout=10) == 1 and second.result(timeout=10) == 2
        assert time.monotonic() - t0 >= 0.29  # never committed before its time was up
        assert log.stats().commits == 1


def test_an_acknowledged_submit_ends_the_wait_of_lazy_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_log, "LAZY_COMMIT_S", 60.0)
    with open_event_log(str(tmp_path / "log"), node="n1") as log:
        lazy = log.submit("supervisor.a", 1, source="s", lazy=True)
        wait_until(lambda: log._lazy_wait, what="the writer waiting for company")
        assert log.submit("app.x", 2, source="s").result(timeout=10) == 2  # not after 60 s
        assert lazy.result(timeout=0) == 1
        late = log.submit("supervisor.b", 3, source="s", lazy=True)
    assert late.result(timeout=0) == 3  # closing commits what waits, at once


def test_invalid_events_are_refused_at_submit(tmp_path: Path) -> None:
    with open_event_log(str(tmp_path / "log"), node="n1") as log:
        with pytest.raises(ValueError, match="invalid topic 'a..b'"):
            log.submit("a..b", 1, source="s")
        with pytest.raises(EventLogError, match="not msgspec-encodable"):
            log.submit("a.b", object(), source="s")
        with pytest.raises(EventLogError, match="invalid source"):
            log.submit("a.b", 1, source="")
        with pytest.raises(EventLogError, match="invalid correlation_id"):
            log.submit("a.b", 1, source="s", correlation_id=5)  # type: ignore[arg-type]
        with pytest.raises(TopicError):
            log.submit_many([EventDraft("a.b", 1, "s"), EventDraft("bad topic", 1, "s")])
        assert log.append("a.b", 1, source="s") == 1  # nothing partial was queued
    with pytest.raises(EventLogError, match="is closed"):
        log.submit("a.b", 1, source="s")


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[tuple[str, list[int]]]:
    """A log with 3 timed batches of 300 events over topics w0..w2 and sources s0/s1."""
    path = str(tmp_path / "log")
    marks = []
    with open_event_log(path, node="n1") as log:
        for _batch in range(3):
            marks.append(time.time_ns())
            drafts = [
                EventDraft(f"sup.root.w{i % 3}.{'up' if i % 2 else 'down'}", i, f"s{i % 2}")
                for i in range(300)
            ]
            log.submit_many(drafts).result(timeout=10)
            wait_until(lambda: time.time_ns() > marks[-1] + 1000)
        marks.append(time.time_ns())
    yield path, marks


def test_query_filters(filled: tuple[str, list[int]]) -> None:
    path, marks = filled
    with open_event_log(path, node="n1", readonly=True) as log:
        every = list(log.query())
        assert len(every) == 900

        def expect(predicate: Callable[[EventRecord], bool], **filters) -> None:
            got = list(log.query(**filters))
            assert got == [r for r in every if predicate(r)], filters

        expect(lambda r: 100 <= r.seq <= 200, start_seq=100, end_seq=200)
        expect(lambda r: r.topic == "sup.root.w1.up", pattern="sup.root.w1.up")
        expect(lambda r: r.topic.startswith("sup.root.w2."), pattern="sup.root.w2.#")
        expect(lambda r: r.topic.endswith(".down"), pattern="sup.*.*.down")
        expect(lambda r: r.topic.endswith(".down"), pattern="#.down")
        expect(lambda r: r.source == "s1", source="s1")
        expect(lambda r: marks[1] <= r.wall_ns <= marks[2], since_ns=marks[1], until_ns=marks[2])
        expect(lambda r: r.wall_ns >= marks[2], since_ns=marks[2])
        expect(
            lambda r: r.source == "s0" and r.topic.startswith("sup.root.w0") and r.seq > 500,
            pattern="sup.root.w0.#", source="s0", start_seq=501,
        )
        assert [r.seq for r in log.query(pattern="sup.#", limit=5)] == [1, 2, 3, 4, 5]
        assert list(log.query(pattern="nothing.here")) == []
        seen: list[int] = []
        assert log.replay(lambda r: seen.append(r.seq), source="s0", end_seq=20) == 10
        assert seen == list(range(1, 21, 2))


def test_topic_query_uses_the_index_not_a_full_scan(tmp_path: Path) -> None:
    with open_event_log(str(tmp_path / "log"), node="n1") as log:
        log.submit_many([EventDraft("bulk.event", i, "s") for i in range(20000)]).result(10)
        log.append("rare.event", "needle", source="s")
        log.submit_many([EventDraft("bulk.event", i, "s") for i in range(20000)]).result(10)
        # Count records decoded: the index plan decodes only candidates.
        import prismatic.eventlog._query as query_module

        decoded = 0
        real = query_module._decode_record

        def counting(value: bytes) -> EventRecord:
            nonlocal decoded
            decoded += 1
            return real(value)

        query_module._decode_record = counting
        try:
            assert [r.payload for r in log.query(pattern="rare.#")] == ["needle"]
            assert decoded == 1
            since = list(log.query(start_seq=20001, end_seq=20001))[0].wall_ns
            decoded = 0
            assert [r.seq for r in log.query(since_ns=since, until_ns=since)] == [20001]
            assert decoded == 1
        finally:
            query_module._decode_record = real


def test_follow_in_process_and_from_a_read_only_process(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    reader = None
    with open_event_log(path, node="n1") as log:
        log.append("t.a", 0, source="s")
        stop = threading.Event()
        got: list[int] = []

        def tail() -> None:
            for record in log.follow(1, stop=stop, poll_interval_s=0.5):
                got.append(record.seq)

        thread = threading.Thread(target=tail)
        thread.start()
        reader = run_python(
            """
            import os, sys, threading
            from prismatic.eventlog import open_event_log
            watchdog = threading.Timer(20, os._exit, (3,))  # never outlive a stuck test
            watchdog.daemon = True
            watchdog.start()
            with open_event_log(sys.argv[1], node="", readonly=True) as log:
                print("ready", flush=True)
                for record in log.follow(1, poll_interval_s=0.01):
                    print(record.seq, flush=True)
                    if record.seq == 500:
                        break
            """,
            path, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert reader.stdout.readline().strip() == "ready"
            for i in range(1, 500):
                log.submit("t.b", i, source="s")
            log.submit_many([]).result(10)
            wait_until(lambda: len(got) == 500, what="in-process follower")
            stop.set()
            thread.join(5)
            assert not thread.is_alive()
            out = reader.stdout.read()  # the reader exits by itself after seq 500
            reader.wait(20)
            assert [int(x) for x in out.split()] == list(range(1, 501))
            assert got == list(range(1, 501))
        finally:
            stop.set()
            if reader.poll() is None:
                reader.kill()
                reader.wait()


def test_read_only_handle_shares_the_writer_environment(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    with open_event_log(path, node="n1") as log:
        with open_event_log(path, node="n1", readonly=True) as ro:
            log.append("a.b", 1, source="s")
            assert ro.last_seq == 1
            with pytest.raises(EventLogError, match="read-only"):
                ro.append("a.b", 1, source="s")
        with pytest.raises(EventLogError, match="already open in this process"):
            with open_event_log(path, node="n1"):
                pass


def test_second_writer_process_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    with open_event_log(path, node="n1"):
        child = run_python(
            """
            import sys
            from prismatic.eventlog import open_event_log
            from prismatic._errors import EventLogError
            try:
                with open_event_log(sys.argv[1], node="n1"):
                    print("opened")
            except EventLogError as exc:
                print("refused:", exc)
            """,
            path, stdout=subprocess.PIPE, text=True,
        )
        out, _ = child.communicate(timeout=20)
    assert "refused" in out and "another process" in out


def test_retention_by_age_while_writing(tmp_path: Path) -> None:
    with open_event_log(str(tmp_path / "log"), node="n1", max_age_s=0.3) as log:
        for i in range(20):
            log.submit_many([EventDraft(f"t.w{i % 3}", i, "s") for _ in range(100)]).result(10)
        old_last = log.last_seq
        deadline = time.monotonic() + 10
        while (log.first_seq or 0) <= old_last:
            assert time.monotonic() < deadline, "old records were not deleted"
            log.append("t.new", 1, source="s")  # writing continues during retention
        assert log.counters.retention_deleted >= old_last
        records = list(log.query())
        assert records and all(r.seq > old_last for r in records)
        # Indexes were cleaned with the records and never return deleted ones.
        assert list(log.query(pattern="t.w0")) == []
        assert list(log.query(source="s")) == records
        last = log.last_seq
    with open_event_log(str(tmp_path / "log"), node="n1") as log:
        assert log.append("t.after", 1, source="s") == last + 1  # no seq reuse


def test_retention_by_size_while_writing(tmp_path: Path) -> None:
    limit = 1 << 20
    with open_event_log(str(tmp_path / "log"), node="n1", max_bytes=limit) as log:
        for _ in range(60):
            log.submit_many([EventDraft("t.big", "x" * 200, "s") for _ in range(200)]).result(10)
        wait_until(lambda: log.stats().used_bytes <= limit * 1.2, what="size retention")
        stats = log.stats()
        assert stats.first_seq > 1 and stats.last_seq == 12000
        assert stats.retention_deleted == stats.first_seq - 1
        assert [r.seq for r in log.query()] == list(range(stats.first_seq, 12001))


def test_retention_that_empties_the_log_keeps_seqs_unique(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    with open_event_log(path, node="n1", max_age_s=0.05) as log:
        log.submit_many([EventDraft("t.a", i, "s") for i in range(10)]).result(10)
        wait_until(lambda: log.first_seq is None, what="all records expired")
        assert log.last_seq == 10
    with open_event_log(path, node="n1") as log:
        assert log.append("t.a", 1, source="s") == 11


def test_map_grows_from_a_tiny_initial_map(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    with open_event_log(path, node="n1", initial_map_size=1 << 16) as log:
        for _ in range(10):
            log.submit_many([EventDraft("t.a", "y" * 500, "s") for _ in range(1000)]).result(30)
        stats = log.stats()
        assert stats.map_growths >= 5 and stats.map_size > 5_000_000
        assert stats.last_seq == 10000
    with open_event_log(path, node="n1", readonly=True) as log:
        assert sum(1 for _ in log.query()) == 10000


def _tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_directory_with_other_files_is_not_a_log(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    before = _tree_digest(tmp_path)
    for readonly in (True, False):
        with pytest.raises(EventLogFormatError, match=f"{tmp_path}.*not a Prismatic event log"):
            with open_event_log(str(tmp_path), node="n1", readonly=readonly):
                pass
    assert _tree_digest(tmp_path) == before


def test_foreign_lmdb_environment_is_not_a_log(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), max_dbs=2)
    with env.begin(write=True) as txn:
        txn.put(b"hello", b"world")
    env.close()
    before = _tree_digest(tmp_path)
    with pytest.raises(EventLogFormatError, match="not a Prismatic event log"):
        with open_event_log(str(tmp_path), node="n1"):
            pass
    assert _tree_digest(tmp_path) == before


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with open_event_log(str(path), node="n1") as log:
        log.append("a.b", 1, source="s")
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"format_version", b"99", db=env.open_db(b"meta", txn=txn))
    env.close()
    before = _tree_digest(path)
    with pytest.raises(EventLogFormatError, match="format_version=99 is newer"):
        with open_event_log(str(path), node="n1"):
            pass
    assert _tree_digest(path) == before


@pytest.mark.parametrize("damage", ["header", "truncated", "record"])
def test_corrupted_data_file_is_refused_and_left_untouched(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "log"
    with open_event_log(str(path), node="n1") as log:
        log.submit_many([EventDraft("a.b", "payload", "s") for _ in range(50)]).result(10)
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    if damage == "header":
        raw[0:8192] = os.urandom(8192)  # both meta pages
    elif damage == "truncated":
        raw = raw[:100]
    else:
        # Garble the newest record's bytes in place (leave the B-tree structure intact).
        at = raw.rfind(b"payload")
        raw[at - 30 : at + 7] = b"\xc1" * 37  # 0xc1 is never valid msgpack
    data.write_bytes(bytes(raw))
    before = _tree_digest(path)
    with pytest.raises(EventLogFormatError, match=str(path)):
        with open_event_log(str(path), node="n1"):
            pass
    assert _tree_digest(path) == before


def test_other_node_and_bad_options_are_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    with open_event_log(path, node="n1"):
        pass
    with pytest.raises(EventLogError, match="belongs to node 'n1'"):
        with open_event_log(path, node="n2"):
            pass
    with pytest.raises(EventLogError, match="max_age_s"):
        with open_event_log(path, node="n1", max_age_s=0):
            pass
    with pytest.raises(EventLogFormatError, match="missing"):
        with open_event_log(str(tmp_path / "absent"), node="n1", readonly=True):
            pass


# The open log runs its writer thread, so this fork is of a multi-threaded process, which
# Python 3.12+ warns about; the child touches no lock (it is refused before any), then _exits.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_handle_used_after_fork_is_refused(tmp_path: Path) -> None:
    with open_event_log(str(tmp_path / "log"), node="n1") as log:
        log.append("a.b", 1, source="s")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: must refuse, then leave without running any teardown
            try:
                _ = log.last_seq  # the use the child must be refused
                os.write(write, b"used")
            except EventLogError as exc:
                os.write(write, b"refused" if "after fork" in str(exc) else b"other")
            finally:
                os._exit(0)
        os.close(write)
        answer = os.read(read, 100)
        os.close(read)
        os.waitpid(pid, 0)
    assert answer == b"refused"


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a 2 MiB tmpfs to fill the disk: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_disk_full_fails_appends_then_recovers(tiny_fs: Path) -> None:
    filler = tiny_fs / "filler"
    filler.write_bytes(b"\0" * (700 << 10))
    with open_event_log(str(tiny_fs / "log"), node="n1", initial_map_size=1 << 16) as log:
        acked = []
        with pytest.raises(EventLogFullError, match=str(tiny_fs / "log")):
            for _ in range(200):
                drafts = [EventDraft("t.a", "z" * 1000, "s") for _ in range(20)]
                acked.extend(log.submit_many(drafts).result(10))
        assert log.counters.full_errors >= 1
        filler.unlink()
        seq = log.append("t.a", "after", source="s")
        assert seq == acked[-1] + 1  # failed batches burnt no seqs
        assert [r.seq for r in log.query()] == acked + [seq]


DURABILITY_CHILD = """
import sys, collections
from prismatic.eventlog import EventDraft, open_event_log
round_no = int(sys.argv[2])
out = sys.stdout
with open_event_log(sys.argv[1], node="n1", initial_map_size=1 << 20) as log:
    in_flight = collections.deque()
    n = 0
    while True:
        in_flight.append(log.submit_many(
            [EventDraft("dur.test", [round_no, n + i], "child") for i in range(50)]))
        n += 50
        if len(in_flight) >= 8:
            seqs = in_flight.popleft().result()
            out.write(f"{seqs[0]} {seqs[-1]}\\n")
            out.flush()
"""


def test_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    import random

    path = str(tmp_path / "log")
    acked: set[int] = set()
    rng = random.Random(1234)
    for round_no in range(20):
        child = run_python(DURABILITY_CHILD, path, str(round_no), stdout=subprocess.PIPE)
        try:
            first = child.stdout.readline()  # wait for the first acknowledgement
            assert first, "child produced no acknowledgement"
            lines = [first]
            deadline = time.monotonic() + rng.uniform(0.02, 0.25)
            while time.monotonic() < deadline:
                lines.append(child.stdout.readline())
        finally:
            child.kill()
            rest = child.stdout.read()  # EOF once the killed child's pipe closes
            child.wait(20)
        text = b"".join(lines) + rest
        for line in text.split(b"\n")[:-1]:  # a torn last line was not fully reported
            low, high = map(int, line.split())
            acked.update(range(low, high + 1))
    with open_event_log(path, node="n1", readonly=True) as log:
        records = list(log.query())
    seqs = [r.seq for r in records]
    assert seqs == list(range(1, len(seqs) + 1)), "seqs must be contiguous from 1, no duplicates"
    assert acked <= set(seqs), f"lost acknowledged seqs: {sorted(acked - set(seqs))[:10]}"
    keys = [tuple(r.payload) for r in records]
    assert len(set(keys)) == len(keys), "an event was stored twice"
    assert len(acked) > 1000


def test_replay_with_raw_payloads(tmp_path: Path) -> None:
    import msgspec

    from prismatic.eventlog import RawEventRecord

    with open_event_log(str(tmp_path / "log"), node="n@h") as log:
        log.append("a.b", {"k": [1, 2]}, source="s", correlation_id="c")
        got: list = []
        assert log.replay(got.append, raw_payloads=True, pattern="a.#") == 1
    (rec,) = got
    assert isinstance(rec, RawEventRecord) and (rec.topic, rec.correlation_id) == ("a.b", "c")
    assert msgspec.msgpack.decode(rec.payload) == {"k": [1, 2]}
