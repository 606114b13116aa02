"""A node's data directory: private modes, one-line refusals of directories it cannot or
must not use, and of an event log that is truncated or damaged (never SIGBUS, never written),
the recovery commands, and ``prismatic_eventlog_errors_total`` counting a failure once."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import lmdb
import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from prismatic.cli import cli
from prismatic.eventlog import open_event_log
from tests.conftest import REPO, SESSION_TAG, start_node, wait_until

APP = "tests.apps:one_for_one"


def run_node(data: Path, name: str, *, wrap: list[str] | None = None,
             timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A node start that is expected to fail at once: its exit code and output."""
    env = dict(os.environ, PYTHONPATH=str(REPO),
               PRISMATIC_TEST_TAG=f"{SESSION_TAG}-{uuid.uuid4().hex[:8]}")
    return subprocess.run([*(wrap or []), sys.executable, "-m", "prismatic.node", "--app", APP,
                           "--data-dir", str(data), "--name", name, "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def one_line_exit_2(run: subprocess.CompletedProcess[str], *needles: str) -> str:
    out = (run.stdout + run.stderr).strip()
    assert run.returncode == 2, f"exit {run.returncode}: {out}"
    assert len(out.splitlines()) == 1 and out.startswith("prismatic: error: "), out
    for needle in needles:
        assert needle in out, out
    return out


def events(data: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--node", str(data), "events", *args])


def metric(text: str, name: str) -> float:
    return next(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
                if s.name == name)


def _settled_seq(path: Path) -> int:
    """The event log's last seq once it has not moved for 0.2 s (deadline 10 s)."""
    seen: list[tuple[int, float]] = []

    def still() -> bool:
        with open_event_log(str(path), node="", readonly=True) as log:
            seq = log.last_seq
        if not seen or seen[-1][0] != seq:
            seen.append((seq, time.monotonic()))
        return time.monotonic() - seen[-1][1] >= 0.2

    wait_until(still, 10, "the event log to stand still")
    return seen[-1][0]


def test_a_node_keeps_its_data_private_and_counts_a_log_failure_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # as older versions left it: tightened at start
    os.chmod(data, 0o755)
    n = start_node(tmp_path, APP, data_dir=data, name="private")
    try:
        modes = {str(p.relative_to(data)): stat.S_IMODE(p.stat().st_mode)
                 for p in [data, *data.rglob("*")] if not p.is_socket()}
        # each child's output (logs/<path>.log, see supervisors/_logfile.py) is private too
        logs = {k: modes.pop(k) for k in list(modes) if k == "logs" or k.startswith("logs/")}
        assert set(logs.values()) <= {0o700, 0o600} and logs.get("logs", 0o700) == 0o700
        assert modes == {".": 0o700, "node.lock": 0o600, "cookie": 0o600, "eventlog": 0o700,
                         "eventlog/data.mdb": 0o600, "eventlog/lock.mdb": 0o600,
                         "eventlog/writer.lock": 0o600}
        # A foreign write takes the seq the node hands out next: its next commit fails. The
        # node's own lifecycle events of the start may still be on their way (a lazy commit
        # waits up to 20 ms): wait until the log has stood still, or one of those would be
        # the commit that collides.
        taken = _settled_seq(data / "eventlog") + 1
        env = lmdb.open(str(data / "eventlog"), max_dbs=8)
        with env.begin(write=True) as txn:
            txn.put(taken.to_bytes(8, "big"), b"squatter", db=env.open_db(b"events", txn=txn))
        env.close()
        with pytest.raises(Exception, match="collides"):
            n.conn.emit("probe.event", 1)
        assert metric(n.conn.metrics(), "prismatic_eventlog_errors_total") == 1
    finally:
        n.stop()


@pytest.fixture(scope="module")
def stopped_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The event log of a real node that ran, emitted ~2 MB and stopped."""
    tmp = tmp_path_factory.mktemp("stopped")
    n = start_node(tmp, APP, name="damaged")
    try:
        for i in range(20):
            n.conn.emit_many("bulk.event", [{"i": i, "pad": "x" * 100}] * 1000)
    finally:
        assert n.stop() == 0
    return tmp / "data" / "eventlog"


def damaged_copy(stopped_log: Path, tmp_path: Path, damage: str) -> Path:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    shutil.copytree(stopped_log, data / "eventlog")
    target = data / "eventlog" / "data.mdb"
    size = target.stat().st_size
    if damage == "truncated":
        os.truncate(target, size // 2)
    else:
        rng = random.Random(7)
        with open(target, "r+b") as f:
            for quarter in (1, 2, 3):
                f.seek(size * quarter // 4 + rng.randrange(4096))
                f.write(rng.randbytes(4096))
    return data


@pytest.mark.parametrize("damage", ["truncated", "scribbled"])
def test_a_damaged_log_is_one_line_and_exit_2_never_sigbus(stopped_log: Path, tmp_path: Path,
                                                           damage: str) -> None:
    data = damaged_copy(stopped_log, tmp_path, damage)
    target = data / "eventlog" / "data.mdb"
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    run = run_node(data, "damaged")
    assert run.returncode != -signal.SIGBUS
    one_line_exit_2(run, f"{target} is damaged", "truncated" if damage == "truncated" else "",
                    f"prismatic --node {data} events salvage --to NEWDIR")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == before
    verify = events(data, "verify")
    assert verify.exit_code == 1 and "is damaged" in verify.output, verify.output
    salvage = events(data, "salvage", "--to", str(tmp_path / "new"))
    assert salvage.exit_code == 0 and "salvaged" in salvage.output, salvage.output
    # The recovery the output suggests: the salvaged log in place, the node starts on it.
    (data / "eventlog").rename(tmp_path / "damaged")
    (tmp_path / "new").rename(data / "eventlog")
    assert events(data, "verify").exit_code == 0
    if damage == "scribbled":  # one restart shows it (each costs a node start)
        assert start_node(tmp_path, APP, data_dir=data, name="damaged").stop() == 0


def _unwritable(tmp_path: Path, kind: str) -> tuple[Path, list[str] | None, str]:
    """A data directory the node cannot use, how to start the node on it, what it says."""
    if kind == "under a file":
        (tmp_path / "file").write_text("")
        return tmp_path / "file" / "data", None, "Not a directory"
    if kind == "another user's":
        if os.geteuid() != 0:
            pytest.skip("needs root to give a directory to another user")
        data = tmp_path / "theirs"
        data.mkdir(mode=0o700)
        os.chown(data, 65534, 65534)
        return data, None, "belongs to uid 65534"
    if kind == "shared":
        data = tmp_path / "shared"
        data.mkdir()
        os.chmod(data, 0o1777)
        return data, None, "shared directory"
    if kind == "read-only event log":  # the data dir is fine, its eventlog/ is not
        data = tmp_path / "data"
        ro = data / "eventlog"
        ro.mkdir(parents=True, mode=0o700)
        os.chmod(data, 0o700)
        os.chmod(ro, 0o700)
        says = "Read-only file system" if os.geteuid() == 0 else "ermission denied"
        if os.geteuid() != 0:
            os.chmod(ro, 0o500)
            return data, None, says
        return data, _read_only_mount(ro), says
    ro = tmp_path / "ro"
    (ro / "existing").mkdir(parents=True, mode=0o700)
    os.chmod(ro / "existing", 0o700)
    data = ro / ("existing" if kind == "read-only, existing" else "new")
    if os.geteuid() != 0:  # a directory the user cannot write stands in for the mount
        os.chmod(ro, 0o500)
        os.chmod(ro / "existing", 0o500)
        return data, None, "ermission denied" if kind.endswith("new") else "not writable"
    return data, _read_only_mount(ro), ("Read-only file system" if kind.endswith("new")
                                        else "not writable")


def _read_only_mount(ro: Path) -> list[str]:
    """A command prefix: run in a mount namespace of its own where ``ro`` is read-only."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{ro}" "{ro}" && exec "$@"', "-"]


@pytest.mark.parametrize("kind", ["under a file", "another user's", "shared",
                                  "read-only, existing", "read-only, new",
                                  "read-only event log"])
def test_an_unusable_data_dir_is_one_line_and_exit_2(tmp_path: Path, kind: str) -> None:
    data, wrap, says = _unwritable(tmp_path, kind)
    try:
        run = run_node(data, "unusable", wrap=wrap)
        if wrap and run.returncode != 2 and "mount" in run.stderr:
            pytest.skip(f"no read-only bind mount here: {run.stderr.strip()}")
        one_line_exit_2(run, says)
    finally:
        for p in (tmp_path / "ro", tmp_path / "ro" / "existing", tmp_path / "data" / "eventlog"):
            if p.exists():
                os.chmod(p, 0o700)
