"""The ``prismatic`` CLI, through click's CliRunner, against real nodes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from click.testing import CliRunner

import prismatic as p
from prismatic.cli import cli
from tests.conftest import wait_until


def run(node, *args: str, code: int = 0):
    result = CliRunner().invoke(cli, ["--node", str(node.data_dir), *args])
    assert result.exit_code == code, (result.exit_code, result.output)
    return result


def as_json(node, *args: str):
    return json.loads(run(node, *args, "--json").stdout)


def test_status_tree_and_children_read(node_factory):
    n = node_factory("tests.apps:nested")
    st = as_json(n, "status")
    assert st["ready"] and st["processes"] == len(n.conn.tree())
    rows = as_json(n, "tree")
    assert rows[0]["path"] == "root" and rows[0]["state"] == "running"
    assert all(r["uss_bytes"] > 0 for r in rows)
    text = run(n, "tree").stdout
    assert text.splitlines()[0].split()[:5] == ["PATH", "PID", "TYPE", "STATE", "RESTARTS"]
    which = as_json(n, "children", "which")
    assert {c["id"] for c in which} == {c.id for c in n.conn.which_children()}
    assert as_json(n, "children", "count") == n.conn.count_children()
    assert "node" in run(n, "status").stdout


def test_children_lifecycle_and_exit_codes(node_factory):
    n = node_factory("tests.apps:one_for_one")
    out = as_json(n, "children", "start", "--id", "extra", "--start", "tests.apps:Idle",
                  "--args", '["extra"]', "--restart", "transient")
    assert out["pid"] == n.conn.pid_of("extra")
    run(n, "children", "terminate", "extra")
    assert n.conn.pid_of("extra") is None
    assert "restarted extra" in run(n, "children", "restart", "extra").stdout
    # refused by the supervisor (OTP's running): exit 1, one line, no traceback
    bad = run(n, "children", "delete", "extra", code=1)
    assert bad.stderr.startswith("prismatic: error: running") and "Traceback" not in bad.output
    run(n, "children", "terminate", "extra")
    assert "extra" in {r.path for r in n.conn.tree()}  # terminated: its spec is kept
    run(n, "children", "delete", "extra")
    assert "extra" not in {c.id for c in n.conn.which_children()}
    # the node's picture follows the supervisor's table (issue 12.5)
    wait_until(lambda: "extra" not in {r.path for r in n.conn.tree()}, 5, "extra to go")
    assert "extra" not in run(n, "tree").stdout
    assert run(n, "children", "which", "no/such", code=1).stderr.count("\n") == 1
    run(n, "children", "start", "--args", "not json", code=2)
    run(n, "children", "start", "--id", "x", "--start", "tests.apps:FailInit", code=1)
    # a child that cannot start: one short line; the traceback only with --verbose
    bad = run(n, "children", "start", "--id", "bad", "--start", "nosuch:thing", code=1)
    assert bad.stderr.count("\n") == 1 and len(bad.stderr) < 200, bad.stderr
    assert "No module named 'nosuch'" in bad.stderr
    verbose = run(n, "--verbose", "children", "start", "--id", "bad", "--start",
                  "nosuch:thing", code=1)
    assert "Traceback" in verbose.stderr and "the child's traceback" in verbose.stderr


def test_events_and_metrics(node_factory):
    n = node_factory("tests.apps:one_for_one")
    n.conn.terminate_child("", "w1")
    n.conn.restart_child("", "w1")
    # the log commits in groups, shortly after the event: wait for the restart to be there
    tail = wait_until(lambda: (lines := run(n, "events", "tail", "-n", "2").stdout.splitlines())
                      and lines[-1].split()[2] == "supervisor.root.w1.child_started" and lines,
                      10, "the restart in the event log")
    assert len(tail) == 2
    got = [json.loads(line) for line in run(
        n, "events", "query", "--pattern", "supervisor.root.w1.#", "--json").stdout.splitlines()]
    assert [e["topic"].rsplit(".", 1)[1] for e in got] == [
        "child_started", "child_stopped", "child_started"]
    assert run(n, "events", "query", "--since", "1h", "--source", "root",
               "--limit", "1").stdout.count("\n") == 1
    replay = run(n, "events", "replay", "--from", "1", "--to", "2")
    assert replay.stdout.count("#") == 2 and '"kind": "child_started"' in replay.stdout
    with _restarting(n) as restarts:
        followed = run(n, "events", "tail", "-n", "0", "-f", "--max-events", "1",
                       "--pattern", "supervisor.root.w1.child_started")
    assert "w1.child_started" in followed.stdout and restarts
    run(n, "events", "query", "--pattern", "a*b", code=2)
    samples = as_json(n, "metrics", "--filter", "prismatic_processes_up")
    assert {s["labels"]["type"]: s["value"] for s in samples} == {"supervisor": 1, "worker": 3}


@contextmanager
def _restarting(n) -> Iterator[list[int]]:
    """Restart w1 over and over from another thread until the block ends: ``tail -f``
    snapshots the log's last seq when it starts, so only a restart after that is seen, and
    no fixed delay can promise one lands after it. Yields the restarts' pids so far."""
    stop = threading.Event()
    pids: list[int] = []

    def loop() -> None:
        with p.connect(n.data_dir) as conn:
            while not stop.wait(0.05):
                conn.terminate_child("", "w1")
                pids.append(conn.restart_child("", "w1"))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield pids
    finally:
        stop.set()
        t.join(10)


def test_unreachable_and_auth_exit_codes(node_factory, tmp_path):
    result = CliRunner().invoke(cli, ["--node", str(tmp_path / "nothing"), "status"])
    assert result.exit_code == 3 and "no node is running" in result.stderr
    n = node_factory("tests.apps:one_for_one")
    cookie = n.data_dir / "cookie"
    good = cookie.read_text()
    cookie.write_text("f" * 64)
    try:
        refused = run(n, "status", code=4)
        assert "wrong cookie" in refused.stderr
    finally:
        cookie.write_text(good)
    run(n, "status")


def test_node_start_usage_errors(tmp_path):
    runner = CliRunner()
    bad_app = runner.invoke(cli, ["node", "start", "--app", "no_such_module:tree",
                                  "--data-dir", str(tmp_path / "d")])
    assert bad_app.exit_code == 2 and "no_such_module" in bad_app.stderr
    (tmp_path / "bad.toml").write_text('[tree]\nflags = { intensity = -1 }\n')
    bad_config = runner.invoke(cli, ["node", "start", "--config", str(tmp_path / "bad.toml"),
                                     "--data-dir", str(tmp_path / "d")])
    assert bad_config.exit_code == 2 and "tree.flags.intensity" in bad_config.stderr


def test_node_selection_from_prismatic_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISMATIC_HOME", str(tmp_path))
    monkeypatch.delenv("PRISMATIC_NODE", raising=False)
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 3 and "no running node" in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["children", "--help"], ["events", "--help"]])
def test_help(args):
    assert CliRunner().invoke(cli, args).exit_code == 0


def test_each_command_is_registered_by_the_modules_its_lookup_imports():
    """A command is looked up by importing only its modules (``_COMMAND_MODULES``), so each
    registered command, and each of its subcommands, must come from those."""
    from prismatic.cli import _main

    _main.load_commands()
    found = {}
    for name, command in _main.cli.commands.items():
        parts = [command, *getattr(command, "commands", {}).values()]
        found[name] = {c.callback.__module__.rsplit(".", 1)[1] for c in parts if c.callback}
    assert found.pop("status") == {"_main"}
    assert found == {n: set(ms) for n, ms in _main._COMMAND_MODULES.items()}


def test_prismatic_node_start_keeps_the_other_commands_out_of_the_trees_image():
    """``prismatic node start`` forks the tree from the CLI's process: looking the command up
    must not import the event log (LMDB) or the other command groups."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, click\nfrom prismatic.cli import cli\n"
            "cli.get_command(click.Context(cli), 'node')\n"
            "print(' '.join(m for m in ('lmdb', 'prismatic.eventlog', 'prismatic.cli._chaos',"
            " 'prismatic.cli._messaging') if m in sys.modules))")
    repo = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd="/", env=dict(os.environ, PYTHONPATH=str(repo)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [], f"imported with the node command: {out.stdout}"
