"""The event log's store: private file modes, and durability (an ack leaves only after the
commit holding it is synced), checked on a real writer's system calls."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from prismatic.eventlog import EventDraft, open_event_log
from tests.conftest import REPO


def build_log(path: Path) -> None:
    with open_event_log(str(path), node="n1") as log:
        log.submit_many([EventDraft("a.b", 1, "s")]).result(10)


def test_log_directory_and_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "log"
    build_log(path)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [path, *path.iterdir()]}
    assert modes == {"log": 0o700, "data.mdb": 0o600, "lock.mdb": 0o600, "writer.lock": 0o600}
    # A log left readable by others (as older versions did) is tightened when opened.
    for p, mode in [(path, 0o755), *((f, 0o644) for f in path.iterdir())]:
        os.chmod(p, mode)
    build_log(path)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in [path, *path.iterdir()]} == modes



_ACKS = """
import os, sys
from prismatic.eventlog import open_event_log
with open_event_log(sys.argv[1], node="n1", commit_interval_s=0) as log:
    for i in range(5):
        os.write(1, b"ack %d\\n" % log.append("a.b", i, source="s"))
"""
_CALL = re.compile(r"^(\d+) +(?:<\.\.\. (\w+) resumed>|(\w+)\((\w+)<([^>]*)>)(.*)$")


def test_every_ack_leaves_after_its_commit_is_synced(tmp_path: Path) -> None:
    """Under strace: before each ack is written, the data pages were fdatasync'ed and then
    the meta page written through the O_DSYNC descriptor (LMDB's metasync). With
    ``sync=False`` the first is missing, with ``metasync=False`` the second."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (test_the_writer_syncs_every_commit still "
                    "checks the environment's flags)")
    trace = tmp_path / "trace"
    run = subprocess.run(
        ["strace", "-f", "-qq", "-y", "-o", str(trace),
         "-e", "trace=openat,fdatasync,fsync,pwrite64,pwritev,write",
         sys.executable, "-c", _ACKS, str(tmp_path / "log")],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, timeout=60)
    if run.returncode and b"ptrace" in run.stderr:
        pytest.skip(f"strace cannot trace here: {run.stderr.decode().strip()}")
    assert run.returncode == 0, run.stderr.decode()
    dsync_fds: set[str] = set()
    pending: dict[str, tuple[str, str, str]] = {}  # pid -> unfinished (call, fd, path)
    synced = meta_durable = False
    acks = 0
    for line in trace.read_text().splitlines():
        m = _CALL.match(line)
        if not m:
            continue
        pid, resumed, call, fd, path, rest = m.groups()
        if resumed:
            if pid not in pending:
                continue
            call, fd, path = pending.pop(pid)
        elif "<unfinished" in rest:
            pending[pid] = (call, fd or "", path or "")
            continue
        if call == "openat" and "data.mdb" in rest and "O_DSYNC" in rest:
            dsync_fds.add(rest.rsplit("= ", 1)[1].split("<")[0])
        elif call in ("fdatasync", "fsync") and path.endswith("data.mdb") and "= 0" in rest:
            synced, meta_durable = True, False  # the meta page must follow the data
        elif call in ("pwrite64", "pwritev") and fd in dsync_fds and synced:
            meta_durable = True
        elif call == "write" and fd == "1" and '"ack ' in rest:
            assert synced and meta_durable, f"ack {acks + 1} left before its commit was synced"
            synced = meta_durable = False
            acks += 1
    assert acks == 5 and dsync_fds


def test_the_writer_syncs_every_commit(tmp_path: Path) -> None:
    """Needs nothing extra: the environment must have sync and metasync on."""
    with open_event_log(str(tmp_path / "log"), node="n1") as log:
        flags = log._store.env.flags()
        assert flags["sync"] and flags["metasync"] and not flags["map_async"]
