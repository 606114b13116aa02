"""``prismatic node start|stop`` for real: detached nodes, the app import path, the node's
log (crashes, SIGHUP, level), event-log retention options, and what the CLI says about a
node that is not there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import prismatic as p
from prismatic._cookie import CookieRefused
from prismatic._nodelock import lock_holder
from prismatic.cli import cli
from tests.conftest import REPO, SESSION_TAG, alive, tagged_pids, wait_until


def node_env(tmp_path: Path) -> tuple[dict[str, str], str]:
    tag = f"{SESSION_TAG}-{uuid.uuid4().hex[:8]}"
    return {"PRISMATIC_TEST_TAG": tag, "PRISMATIC_TEST_LOG": str(tmp_path / "test.log"),
            "PYTHONPATH": str(REPO), "PRISMATIC_NO_PROGRESS": "1"}, tag


def cli_run(env: dict[str, str], *args: str):
    return CliRunner().invoke(cli, list(args), env=env)


def kill_tagged(tag: str) -> None:
    for pid in tagged_pids(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not tagged_pids(tag), 10, "the test's processes to exit")


def test_detach_start_refuse_second_stop_and_no_node(tmp_path):
    env, tag = node_env(tmp_path)
    data = tmp_path / "data"
    name = f"detach-{tag[-8:]}"
    start = ["node", "start", "--detach", "--app", "tests.apps:one_for_one", "--name", name,
             "--data-dir", str(data), "--metrics-port", "auto"]
    try:
        first = cli_run(env, *start)
        assert first.exit_code == 0, first.output
        pid = lock_holder(data)
        assert pid and f"node {name} started (pid {pid}," in first.stdout
        # the node's output is as private as its data directory
        assert (data.stat().st_mode & 0o777, (data / "node.out").stat().st_mode & 0o777) \
            == (0o700, 0o600)
        with p.connect(data) as conn:
            st = conn.status()
            assert st.pid == pid and st.ready and st.metrics_url  # options reach the node
        # a second start on the running node's data dir: its own error, exit 2, no false
        # "started", and the first node untouched
        second = cli_run(env, *start)
        assert second.exit_code == 2, second.output
        assert "another node is running" in second.stderr and "started" not in second.stdout
        assert second.stderr.startswith("prismatic: error: ") and second.stderr.count("\n") == 1
        assert lock_holder(data) == pid
        stop = cli_run(env, "--node", str(data), "node", "stop")
        assert stop.exit_code == 0 and f"node (pid {pid}) stopped" in stop.stdout
        assert not alive(pid)
        wait_until(lambda: not tagged_pids(tag), 10, "the tree to exit with its node")
        # a stopped node with its data dir left behind: told at once, from the lock
        for args in (["status"], ["tree"], ["children", "which"], ["node", "stop"]):
            t0 = time.monotonic()
            gone = cli_run(env, "--node", str(data), *args)
            assert gone.exit_code == 3, (args, gone.output)
            assert f"no node is running in {data.resolve()}" in gone.stderr
            assert time.monotonic() - t0 < 2.0, args
    finally:
        kill_tagged(tag)


def test_detach_reports_a_root_that_fails_to_start(tmp_path):
    env, tag = node_env(tmp_path)
    try:
        out = cli_run(env, "node", "start", "--detach", "--app", "tests.apps:failing_start",
                      "--name", f"fail-{tag[-8:]}", "--data-dir", str(tmp_path / "data"))
        assert out.exit_code == 1, out.output  # as the docs say: the root failed
        assert "exited with code 1" in out.stderr and "failed to start" in out.stderr
        assert "bad" in out.stderr and out.stderr.count("\n") == 1
    finally:
        kill_tagged(tag)


def test_app_from_the_current_directory_and_app_path(tmp_path, monkeypatch):
    """``node start --app`` imports from the current directory (as ``python -m`` does) and
    from each ``--app-path``: here the tree's module is on --app-path and its worker's
    module in the current directory."""
    env, tag = node_env(tmp_path)
    here, apps = tmp_path / "here", tmp_path / "apps"
    here.mkdir()
    apps.mkdir()
    (here / "cwdworker.py").write_text(
        "import prismatic as p\n\nclass W(p.Worker):\n    pass\n")
    (apps / "myapp.py").write_text(
        "import prismatic as p\nimport cwdworker\n\n"
        "tree = p.SupervisorSpec(children=[p.ChildSpec(id='w', start=cwdworker.W)])\n")
    monkeypatch.chdir(here)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI runs in this process
    data = tmp_path / "data"
    try:
        out = cli_run(env, "node", "start", "--detach", "--app", "myapp:tree", "--app-path",
                      str(apps), "--name", f"app-{tag[-8:]}", "--data-dir", str(data))
        assert out.exit_code == 0, out.output
        with p.connect(data) as conn:
            assert conn.pid_of("w")
        assert cli_run(env, "--node", str(data), "node", "stop").exit_code == 0
        missing = cli_run(env, "node", "start", "--app", "nosuch:tree", "--data-dir",
                          str(data))
        assert missing.exit_code == 2 and missing.stderr.startswith("prismatic: error: ")
    finally:
        kill_tagged(tag)


def test_closed_stdout_is_a_normal_end(tmp_path):
    env, tag = node_env(tmp_path)
    data = tmp_path / "data"
    try:
        assert cli_run(env, "node", "start", "--detach", "--app", "tests.apps:one_for_one",
                       "--name", f"pipe-{tag[-8:]}", "--data-dir",
                       str(data)).exit_code == 0
        for args in (["status"], ["tree"], ["events", "query"]):
            proc = subprocess.Popen([sys.executable, "-m", "prismatic.cli", "--node",
                                     str(data), *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env=dict(os.environ, **env))
            proc.stdout.close()  # the reader is gone before the first line is written
            err = proc.stderr.read().decode()
            assert proc.wait(10) == 0 and err == "", (args, err)
        assert cli_run(env, "--node", str(data), "node", "stop").exit_code == 0
    finally:
        kill_tagged(tag)


def test_node_log_crashes_sighup_level_and_retention(tmp_path):
    """One node with --log-file, --log-level error and a short --eventlog-max-age: crashes
    reach the log with path and summary; a renamed log is reopened on SIGHUP; warnings stay
    out at level error; old events are deleted."""
    env, tag = node_env(tmp_path)
    data, log = tmp_path / "data", tmp_path / "node.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prismatic.node", "--app", "tests.apps:one_for_one", "--name",
         f"log-{tag[-8:]}", "--data-dir", str(data), "--log-file", str(log), "--log-level",
         "error", "--eventlog-max-age", "1", "--quiet"],
        env=dict(os.environ, **env), cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: lock_holder(data) == proc.pid and (data / "control.sock").exists(),
                   20, "the node to start")
        conn = wait_until(lambda: _ready(data), 20, "the tree to start")
        with pytest.raises(p.StartError):
            conn.start_child("", p.ChildSpec(id="bad", start="tests.apps:FailInit"))
        with pytest.raises(CookieRefused):
            p.connect(data, cookie="wrong").status()  # a WARNING: below --log-level error
        wait_until(lambda: "bad failed to start: ValueError: init refuses"
                   in log.read_text(), 10, "the failed start in the log")
        log.rename(tmp_path / "node.log.1")
        os.kill(proc.pid, signal.SIGHUP)
        conn.terminate_child("", "w1")
        pid = conn.restart_child("", "w1")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: log.exists() and "w1 crashed: killed by SIGKILL" in log.read_text(),
                   10, "the crash in the reopened log")
        assert proc.poll() is None  # SIGHUP did not stop the node
        text = (tmp_path / "node.log.1").read_text() + log.read_text()
        assert "refused" not in text and "WARNING" not in text
        # retention: every event is over a second old soon, and then deleted
        wait_until(lambda: not _events(env, data), 10, "retention to delete old events")
        conn.close()
    finally:
        proc.terminate()
        proc.wait(20)
        kill_tagged(tag)


def _ready(data: Path):
    conn = p.connect(data)
    if conn.status().ready:
        return conn
    conn.close()
    return None


def _events(env: dict[str, str], data: Path) -> str:
    out = cli_run(env, "--node", str(data), "events", "query", "--pattern", "supervisor.#")
    assert out.exit_code == 0, out.output
    return out.stdout


def test_root_give_up_names_the_child(tmp_path):
    env, tag = node_env(tmp_path)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "prismatic.node", "--app", "tests.cli_apps:doomed",
             "--name", f"doom-{tag[-8:]}", "--data-dir", str(tmp_path / "data"), "--quiet"],
            env=dict(os.environ, **env), cwd=REPO, capture_output=True, text=True, timeout=30)
        text = out.stdout + out.stderr
        assert out.returncode == 1, text
        assert "crasher crashed: RuntimeError: crash loop" in text
        assert ("root supervisor exited: shutdown (reached_max_restart_intensity); child "
                "crasher broke the restart intensity (last exit: RuntimeError: crash loop)"
                in text), text
        assert "supervisor root gave up" in text
    finally:
        kill_tagged(tag)


def test_python_m_node_help_and_error_prefix(tmp_path):
    env, _ = node_env(tmp_path)
    full = dict(os.environ, **env)
    h = subprocess.run([sys.executable, "-m", "prismatic.node", "-h"], env=full,
                       capture_output=True, text=True, timeout=30)
    assert h.returncode == 0 and "--app-path" in h.stdout and "--eventlog-max-bytes" in h.stdout
    bad = subprocess.run([sys.executable, "-m", "prismatic.node", "--app", "nosuch:x",
                          "--data-dir", str(tmp_path / "d")], env=full, capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.startswith("prismatic: error: --app 'nosuch:x'")
    usage = subprocess.run([sys.executable, "-m", "prismatic.node", "--nosuch"], env=full,
                           capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and usage.stderr == (
        "prismatic: error: No such option '--nosuch'. (see 'python -m prismatic.node --help')\n")
    # the same one line for the prismatic command's usage errors
    out = CliRunner().invoke(cli, ["children", "start", "--restart", "sometimes"],
                             prog_name="prismatic")
    assert out.exit_code == 2 and out.stderr.startswith("prismatic: error: Invalid value for "
                                                        "'--restart'")
    assert out.stderr.count("\n") == 1 and "(see 'prismatic children start --help')" in out.stderr


def test_metrics_port_takes_a_port_0_or_auto():
    from prismatic.cli._node import _MetricsPort

    t = _MetricsPort()
    assert [t.convert(v, None, None) for v in ("9100", "0", "auto", "AUTO")] == [9100, 0, -1, -1]
    for bad in ("70000", "-1", "http"):
        with pytest.raises(click.BadParameter):
            t.convert(bad, None, None)


def test_node_given_as_a_relative_path_that_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(cli, ["--node", "./data", "status"])
    assert out.exit_code == 3
    assert out.stderr == (f"prismatic: error: no node is running in {tmp_path / 'data'} "
                          f"(no such directory)\n")
