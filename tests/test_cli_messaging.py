"""``prismatic call|cast|send|whereis|publish|subscribe`` through click's CliRunner (and one
real subprocess for subscribe), against a real node running ``tests.messaging_apps:agents``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import prismatic as p
from prismatic.cli import cli
from tests.conftest import module_node, wait_until

GHOST_OSPID = 2 ** 22 + 17  # above pid_max's default: no such process


node = module_node("tests.messaging_apps:agents")


def run(node, *args: str, code: int = 0):
    result = CliRunner().invoke(cli, ["--node", str(node.data_dir), *args])
    assert result.exit_code == code, (result.exit_code, result.output)
    if code:  # one error line, no traceback
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("prismatic: error: ") and \
            "Traceback" not in result.output, result.stderr
    return result


def whereis(node, name: str) -> p.Pid:
    return wait_until(lambda: node.conn.whereis(name), 10, f"{name!r} to be registered")


def test_call_echo_round_trip(node):
    out = run(node, "call", "alpha", '["echo", {"k": [1, 2.5, null, true]}]').stdout
    assert json.loads(out) == {"k": [1, 2.5, None, True]}
    # a non-JSON argument travels as a plain string (here inside a JSON array it is JSON)
    assert json.loads(run(node, "call", "alpha", '["echo", "plain text"]').stdout) == \
        "plain text"


def test_call_by_pid_syntax_and_whereis(node):
    beta = whereis(node, "beta")
    assert run(node, "whereis", "beta").stdout.strip() == str(beta) == \
        f"<{beta.node}.{beta.ospid}>"
    assert json.loads(run(node, "call", str(beta), '["whoami"]').stdout)[:2] == \
        [beta.node, beta.ospid]
    # a bare integer is an ospid on the selected node
    assert json.loads(run(node, "call", str(beta.ospid), '["echo", 7]').stdout) == 7


def test_cast_then_call_sees_it(node):
    alpha = whereis(node, "alpha")
    assert run(node, "cast", "alpha", '{"note": 1}').stdout.strip() == f"delivered to {alpha}"
    run(node, "cast", str(alpha), "not json")  # taken as the string "not json"
    casts = json.loads(run(node, "call", "alpha", '["casts"]').stdout)
    assert casts[-2:] == [{"note": 1}, "not json"]


def test_send_reaches_handle_info(node):
    run(node, "send", "beta", "ping")
    assert "ping" in json.loads(run(node, "call", "beta", '["infos"]').stdout)


def test_noproc_exit_code(node):
    err = run(node, "call", "nobody", "1", code=1).stderr
    assert err == "prismatic: error: no process registered as 'nobody'\n"
    ghost = p.Pid(node.conn.node, GHOST_OSPID)
    assert f"no such process {ghost}" in run(node, "call", str(ghost), "1", code=1).stderr
    assert run(node, "whereis", "nobody", code=1).stdout == ""
    assert json.loads(run(node, "whereis", "nobody", "--json", code=1).stdout) == \
        {"name": "nobody", "pid": None}


def test_timeout_exit_code(node):
    err = run(node, "call", "alpha", '["sleep", 1]', "--timeout", "0.1", code=5).stderr
    assert "'alpha': no reply within 0.1s" in err
    # the late reply is not mistaken for the next call's (a new connection anyway)
    assert json.loads(run(node, "call", "alpha", '["echo", "after"]').stdout) == "after"


def test_callee_exit_prints_its_reason(node):
    old = whereis(node, "alpha")
    err = run(node, "call", "alpha", '["crash"]', code=1).stderr
    assert err == "prismatic: error: 'alpha' exited before replying: ValueError: asked to crash\n"
    wait_until(lambda: node.conn.whereis("alpha") not in (None, old), 10, "alpha to restart")


def test_dead_letter_cast_and_send(node):
    ghost = f"<{node.conn.node}.{GHOST_OSPID}>"
    with node.conn.subscribe("deadletter.#") as sub:
        err = run(node, "cast", "nobody", '"lost"', code=1).stderr
        assert err.startswith("prismatic: error: dead letter: no process registered as "
                              "'nobody'")
        out = run(node, "send", ghost, "lost", "--json", code=1)
        assert json.loads(out.stdout) == {"dest": ghost, "pid": None, "delivered": False}
        assert "dead letter: no such process" in out.stderr
        got = [sub.next(10), sub.next(10)]
    assert [(e.topic, e.payload["dest"], e.payload["kind"]) for e in got] == [
        ("deadletter.not_registered", "nobody", "cast"), ("deadletter.noproc", ghost, "info")]


def test_a_full_mailbox_is_a_timeout(node):
    small = whereis(node, "small")
    run(node, "cast", "small", '["block", 1.5]')  # its handler sleeps: the queue fills
    big = json.dumps("x" * 300_000)  # more than a socket buffer: the send blocks when paused
    for _ in range(100):
        result = CliRunner().invoke(cli, ["--node", str(node.data_dir), "cast", str(small),
                                          big, "--timeout", "0.2"])
        if result.exit_code != 0:
            break
    assert result.exit_code == 5, result.output
    assert "mailbox stayed full for 0.2s" in result.stderr
    assert json.loads(run(node, "call", "small", '["echo", "back"]', "--timeout", "10")
                      .stdout) == "back"


def test_bad_dest_is_a_usage_error(node):
    assert "is not a pid" in run(node, "call", "<nope", "1", code=2).stderr
    assert "is not a pid" in run(node, "cast", "<node.x>", "1", code=2).stderr
    run(node, "send", "", "1", code=2)


def test_json_output_shape(node):
    alpha = whereis(node, "alpha")
    out = json.loads(run(node, "call", "alpha", '["echo", [1, "two"]]', "--json").stdout)
    assert set(out) == {"dest", "pid", "reply", "rtt_ms"}
    assert (out["dest"], out["pid"], out["reply"]) == ("alpha", str(alpha), [1, "two"])
    assert 0 < out["rtt_ms"] < 5000
    by_ospid = json.loads(run(node, "call", str(alpha.ospid), '["echo", 1]', "--json")
                          .stdout)
    assert (by_ospid["dest"], by_ospid["pid"]) == (str(alpha.ospid), str(alpha))
    assert json.loads(run(node, "cast", "alpha", "1", "--json").stdout) == \
        {"dest": "alpha", "pid": str(alpha), "delivered": True}
    assert json.loads(run(node, "whereis", "alpha", "--json").stdout) == \
        {"name": "alpha", "pid": str(alpha)}


@pytest.mark.parametrize("as_json", [False, True])
def test_publish_then_subscribe_count_1(node, as_json):
    """A real ``prismatic subscribe`` process: once it says it subscribed, publish."""
    cmd = [sys.executable, "-c", "from prismatic.cli import main; main()",
           "--node", str(node.data_dir), "subscribe", "cli.#", "--count", "1",
           "--timeout", "30", *(["--json"] if as_json else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr.readline() == "prismatic: subscribed to cli.#\n"
        run(node, "publish", "other.topic", "1")  # does not match
        assert run(node, "publish", "cli.test", '{"n": [1, 2]}').stdout == \
            "published on cli.test\n"
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    if as_json:
        assert [json.loads(line) for line in out.splitlines()] == [
            {"topic": "cli.test", "payload": {"n": [1, 2]}}]
    else:
        assert out == 'cli.test {"n":[1,2]}\n'


def test_subscribe_timeout_and_bad_pattern(node):
    assert run(node, "subscribe", "quiet.#", "--timeout", "0.1").stdout == ""
    err = run(node, "subscribe", "quiet.#", "--count", "1", "--timeout", "0.1", code=5).stderr
    assert "0 of 1 events on quiet.# within 0.1s" in err
    run(node, "subscribe", "a*b", code=2)
    run(node, "publish", "bad..topic", "1", code=2)


def test_shell_completion_knows_the_commands():
    result = CliRunner().invoke(cli, [], prog_name="prismatic", env={
        "_PRISMATIC_COMPLETE": "bash_complete", "COMP_WORDS": "prismatic ", "COMP_CWORD": "1"})
    offered = {line.split(",", 1)[1] for line in result.stdout.splitlines()}
    assert {"call", "cast", "send", "whereis", "publish", "subscribe", "status"} <= offered
    result = CliRunner().invoke(cli, [], prog_name="prismatic", env={
        "_PRISMATIC_COMPLETE": "bash_complete", "COMP_WORDS": "prismatic call --",
        "COMP_CWORD": "2"})
    assert {"plain,--timeout", "plain,--json"} <= set(result.stdout.splitlines())


def test_emit_logs_durably_and_prints_the_seq(node):
    out = run(node, "emit", "ops.deploy", '{"v": 2}', "--correlation-id", "c-7", "--json")
    seq = json.loads(out.stdout)["seq"]
    queried = run(node, "events", "query", "--pattern", "ops.#", "--json").stdout
    assert str(seq) in queried and "c-7" in queried
    run(node, "emit", "bad topic", "1", code=2)


def test_events_replay_republish(node):
    seq = node.conn.emit("audit.login", {"user": "ada"})
    with node.conn.subscribe("replay.audit.#") as sub:
        out = run(node, "events", "replay", "--pattern", "audit.#", "--from", str(seq),
                  "--republish", "--json")
        assert json.loads(out.stdout) == {"republished": 1, "prefix": "replay"}
        event = sub.next(10)
    assert (event.topic, event.payload) == ("replay.audit.login", {"user": "ada"})
