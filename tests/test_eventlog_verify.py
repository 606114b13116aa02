"""Checking the event log's file before LMDB opens it, verify, salvage, and the failure
paths of the writer, retention and the read side; all on real LMDB files."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import random
import shutil
from pathlib import Path

import lmdb
import pytest

from prismatic._errors import EventLogError, EventLogFormatError
from prismatic.eventlog import EventDraft, open_event_log, salvage_log, verify_log
from tests.conftest import wait_until


def build_log(path: Path, batches: int = 20, per_batch: int = 1000) -> int:
    """A log of a few MB (every page live: appends only); returns its last seq."""
    with open_event_log(str(path), node="n1") as log:
        for b in range(batches):
            log.submit_many([
                EventDraft(f"t.{i % 5}", {"b": b, "i": i, "pad": "x" * (i % 200)}, f"s{i % 3}")
                for i in range(per_batch)
            ]).result(30)
        return log.last_seq


def digest(path: Path) -> str:
    return hashlib.sha256((path / "data.mdb").read_bytes()).hexdigest()


def scribble(data: Path, seed: int = 11, length: int = 4096) -> None:
    """Random bytes at 1/4, 1/2 and 3/4 of the file, as the probe wrote them."""
    rng = random.Random(seed)
    size = data.stat().st_size
    with open(data, "r+b") as f:
        for quarter in (1, 2, 3):
            f.seek(size * quarter // 4 + rng.randrange(4096))
            f.write(rng.randbytes(length))


@pytest.fixture(scope="module")
def sound_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("sound") / "log"
    return path, build_log(path)


def copy_of(sound_log: tuple[Path, int], tmp_path: Path) -> Path:
    path = tmp_path / "log"
    shutil.copytree(sound_log[0], path)
    return path


def test_a_sound_log_verifies(sound_log: tuple[Path, int]) -> None:
    path, last = sound_log
    report = verify_log(str(path))
    assert report.problem is None
    assert (report.records, report.first_seq, report.last_seq) == (last, 1, last)


def test_a_truncated_log_is_refused_before_lmdb_maps_it(sound_log, tmp_path: Path) -> None:
    path = copy_of(sound_log, tmp_path)
    data = path / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)
    before = digest(path)
    for readonly in (False, True):  # LMDB would die of SIGBUS on the missing pages
        with pytest.raises(EventLogFormatError) as refused:
            with open_event_log(str(path), node="n1", readonly=readonly):
                pass
        message = str(refused.value)
        assert str(data) in message and "truncated" in message
        assert "events salvage --to" in message and "\n" not in message
    assert digest(path) == before
    assert "truncated" in (verify_log(str(path)).problem or "")


def test_damaged_pages_are_refused_and_never_written(sound_log, tmp_path: Path) -> None:
    path = copy_of(sound_log, tmp_path)
    scribble(path / "data.mdb")
    before = digest(path)
    with pytest.raises(EventLogFormatError, match=f"{path / 'data.mdb'} is damaged: .*salvage"):
        with open_event_log(str(path), node="n1"):
            pass
    assert digest(path) == before
    assert verify_log(str(path)).problem is not None


def test_salvage_copies_every_readable_record_keeping_seqs(sound_log, tmp_path: Path) -> None:
    path = copy_of(sound_log, tmp_path)
    last = sound_log[1]
    scribble(path / "data.mdb")
    report = salvage_log(str(path), str(tmp_path / "new"))
    assert report.node == "n1" and report.damage
    assert last * 0.9 < report.copied < last and report.last_seq == last
    assert verify_log(str(tmp_path / "new")).problem is None
    with open_event_log(str(tmp_path / "new"), node="n1") as log:
        records = list(log.query())
        assert len(records) == report.copied
        assert all(r.payload["b"] * 1000 + r.payload["i"] + 1 == r.seq for r in records)
        by_topic = list(log.query(pattern="t.3"))
        assert by_topic == [r for r in records if r.topic == "t.3"]
        assert log.append("after.salvage", 1, source="s") == last + 1


def test_salvage_of_a_truncated_log_searches_every_page(sound_log, tmp_path: Path) -> None:
    path = copy_of(sound_log, tmp_path)
    data = path / "data.mdb"
    os.truncate(data, data.stat().st_size // 2)  # the roots (newest pages) are gone
    report = salvage_log(str(path), str(tmp_path / "new"))
    assert report.scanned and report.node == "n1"
    assert report.copied > sound_log[1] * 0.3 and report.first_seq == 1
    with open_event_log(str(tmp_path / "new"), node="n1") as log:
        seqs = [r.seq for r in log.query()]
        assert seqs == sorted(set(seqs)) and len(seqs) == report.copied


def test_salvage_without_meta_pages_searches_every_page(sound_log, tmp_path: Path) -> None:
    path = copy_of(sound_log, tmp_path)
    with open(path / "data.mdb", "r+b") as f:
        f.write(os.urandom(8192))  # both meta pages
    report = salvage_log(str(path), str(tmp_path / "new"))
    assert report.scanned and report.node == "n1"
    assert (report.copied, report.first_seq, report.last_seq) == (sound_log[1], 1, sound_log[1])


def _flip_in_payload(path: Path, seq: int, env: lmdb.Environment | None = None) -> None:
    """Change one byte of a record's payload so that it still decodes."""
    own = env is None
    env = env or lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            db = env.open_db(b"events", txn=txn)
            key = seq.to_bytes(8, "big")
            value = bytearray(txn.get(key, db=db))
            at = value.rindex(b"xx")  # inside the pad string
            value[at] = ord("y")
            txn.put(key, bytes(value), db=db)
    finally:
        if own:
            env.close()


def test_a_record_that_still_decodes_fails_its_checksum(sound_log, tmp_path: Path) -> None:
    path = copy_of(sound_log, tmp_path)
    last = sound_log[1]
    _flip_in_payload(path, last // 2)  # a leaf in the middle: verify finds it, not open
    assert f"record {last // 2} does not match its checksum" in (
        verify_log(str(path)).problem or "")
    report = salvage_log(str(path), str(tmp_path / "new"))
    assert (report.copied, report.undecodable) == (last - 1, 1)
    _flip_in_payload(path, last)  # the newest record: in a leaf every open reads
    with pytest.raises(EventLogFormatError, match="does not match its checksum"):
        with open_event_log(str(path), node="n1"):
            pass


def test_records_without_a_checksum_are_still_read(tmp_path: Path) -> None:
    """Records written before checksums (9 elements) read, verify and salvage as before."""
    path = tmp_path / "log"
    build_log(path, batches=1, per_batch=3)
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        db = env.open_db(b"events", txn=txn)
        for key, value in list(txn.cursor(db)):
            assert value[:1] == b"\x9a" and value[-5] == 0xCE
            txn.put(key, b"\x99" + value[1:-5], db=db)  # as the older format stored it
    env.close()
    with open_event_log(str(path), node="n1") as log:
        assert [r.payload["i"] for r in log.query()] == [0, 1, 2]
        assert log.append("new.one", 3, source="s") == 4
    assert verify_log(str(path)).records == 4
    assert salvage_log(str(path), str(tmp_path / "new")).copied == 4


def _hold_writer(path: str, ready, done) -> None:
    with open_event_log(path, node="n1"):
        ready.set()
        done.wait(10)


def test_verify_and_salvage_refuse_a_log_being_written(tmp_path: Path) -> None:
    path = tmp_path / "log"
    build_log(path, batches=1, per_batch=10)
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_hold_writer, args=(str(path), ready, done))
    writer.start()
    try:
        assert ready.wait(20)
        with pytest.raises(EventLogError, match="open for writing"):
            verify_log(str(path))
        with pytest.raises(EventLogError, match="open for writing"):
            salvage_log(str(path), str(tmp_path / "new"))
    finally:
        done.set()
        writer.join(20)
    assert not (tmp_path / "new").exists()


def _put_raw(path: Path, key: bytes, value: bytes, env: lmdb.Environment | None = None) -> None:
    """Write into the log behind the writer's back, as a foreign process could."""
    own = env is None
    env = env or lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            txn.put(key, value, db=env.open_db(b"events", txn=txn))
    finally:
        if own:
            env.close()


def test_a_failed_commit_is_counted_once_and_logged(tmp_path: Path, caplog) -> None:
    path = tmp_path / "log"
    with open_event_log(str(path), node="n1") as log:
        log.append("a.b", 1, source="s")
        # The seq the writer hands out next (LMDB allows one environment per process).
        _put_raw(path, (2).to_bytes(8, "big"), b"squatter", log._store.env)
        with caplog.at_level(logging.ERROR, logger="prismatic.eventlog._log"):
            with pytest.raises(EventLogError, match="collides"):
                log.append("a.b", 2, source="s")
        assert log.counters.errors == 1 and log.counters.appends == 1
        assert any("collides" in r.getMessage() for r in caplog.records)


def test_a_failed_retention_pass_is_counted_and_logged(tmp_path: Path, caplog) -> None:
    path = tmp_path / "log"
    with caplog.at_level(logging.ERROR, logger="prismatic.eventlog._log"):
        with open_event_log(str(path), node="n1", max_age_s=3600) as log:
            log.append("a.b", 1, source="s")
            _put_raw(path, (1).to_bytes(8, "big"), b"\xc1", log._store.env)  # undecodable
            wait_until(lambda: log.counters.errors >= 1, 10, "a counted retention failure")
            assert log.append("a.b", 2, source="s") == 2  # the writer thread still runs
            assert log.counters.errors == 1  # retried later, not at every commit
    assert any("retention pass failed" in r.getMessage() for r in caplog.records)


def test_a_corrupted_record_is_a_format_error_on_the_read_side(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with open_event_log(str(path), node="n1") as log:
        log.submit_many([EventDraft("a.b", i, "s") for i in range(20)]).result(10)
        # Damaged while open (a reader beside a running writer checks only the meta pages).
        _put_raw(path, (7).to_bytes(8, "big"), b"\xc1", log._store.env)
        with open_event_log(str(path), node="", readonly=True) as reader:
            with pytest.raises(EventLogFormatError, match=f"{path}.*corrupted record"):
                list(reader.query())
    assert "record 7 does not decode" in (verify_log(str(path)).problem or "")


def _grow(path: str, grown) -> None:
    # Past the 10 MiB a read-only LMDB handle maps by default, so the reader must adopt it.
    with open_event_log(path, node="n1", initial_map_size=1 << 16) as log:
        while log.stats().map_size <= 16 << 20:
            log.submit_many([EventDraft("g.h", "y" * 1000, "s")] * 1000).result(10)
        grown.set()


def test_a_reader_adopts_a_map_grown_by_the_writer_process(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with open_event_log(str(path), node="n1", initial_map_size=1 << 16) as log:
        log.append("a.b", 1, source="s")
    with open_event_log(str(path), node="", readonly=True) as reader:
        assert reader.last_seq == 1
        ctx = multiprocessing.get_context("spawn")
        grown = ctx.Event()
        writer = ctx.Process(target=_grow, args=(str(path), grown))
        writer.start()
        writer.join(30)
        assert grown.is_set() and writer.exitcode == 0
        # The reader's map is now smaller than the file's: LMDB says MapResizedError.
        records = list(reader.query())
        assert len(records) == reader.last_seq > 10_000


def test_a_free_list_past_txn_255_is_sound(tmp_path):
    """The free list's keys are native integers (MDB_INTEGERKEY): bytewise, txn 256 sorts
    before 255, and a check that compared bytes refused every log whose free list had grown
    across such a boundary (a reader held open while the writer went on: any node after a
    while, and one SIGKILLed mid-write). The walk must order them as numbers."""
    from prismatic.eventlog._pages import free_list_pages, open_lmdb_file

    env = lmdb.open(str(tmp_path), map_size=1 << 26, max_dbs=4)
    db = env.open_db(b"events")
    reader = None
    for i in range(600):
        if i == 200:
            reader = env.begin()  # pins txn 200: every later free stays on the list
        with env.begin(write=True, db=db) as txn:
            txn.put(i.to_bytes(8, "big"), os.urandom(300))
            if i > 5:
                txn.delete((i - 5).to_bytes(8, "big"))
    file = open_lmdb_file(str(tmp_path / "data.mdb"))
    assert file.meta.free.entries > 300  # keys from ~200 to ~600: across 256 and 512
    assert len(list(free_list_pages(file, set()))) > 1000
    assert reader is not None
    reader.abort()
    env.close()
