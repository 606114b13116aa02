"""OTP conformance against a real node: the cases of OTP's supervisor_SUITE where Prismatic
used to diverge, and the supervisor API OTP users reach for (issue 15)."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

import prismatic as p
from prismatic.cli import cli
from tests.conftest import alive, module_node

node = module_node("tests.otp_apps:tree")


def _stopped(ev, key: str) -> p.ExitReason | None:
    frame = ev.wait_for(lambda f: f.key == key and f.kind in ("child_stopped",
                                                              "shutdown_error"), 10)
    assert frame.kind == "child_stopped", frame  # no shutdown_error before it
    return frame.reason


def test_a_supervisor_that_ignores_starts_as_ignore(node):
    """OTP: init returning ignore gives {ok, undefined}: the parent keeps the spec with no
    process, and the tree around it starts."""
    c = node.conn
    quiet = [i for i in c.which_children() if i.id == "quiet"]
    assert quiet == [p.ChildInfo("quiet", None, False, "supervisor")]
    assert c.pid_of("quiet") is None
    assert not any("prism-sup:quiet" in _cmdline(pid) for pid in node.pids())
    assert c.restart_child("", "quiet") is None  # ignores again: ok, no pid
    spec = p.ChildSpec(id="quiet2", start="tests.otp_apps:ignoring_sup", type="supervisor")
    assert c.start_child("", spec) is None
    assert c.which_children()[0] == p.ChildInfo("quiet2", None, False, "supervisor")
    c.delete_child("", "quiet2")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def test_every_restart_shutdown_and_type_combination_is_valid():
    for restart in p.RestartType:
        for shutdown in (0, 1.0, "infinity", "brutal_kill"):
            for ctype in ("worker", "supervisor"):
                spec = p.ChildSpec(id="c", start="m:f", restart=restart, shutdown=shutdown,
                                   type=ctype)
                assert spec.shutdown == (shutdown if isinstance(shutdown, float) or
                                         shutdown == 0 else p.ShutdownKind(shutdown))


def test_shutdown_0_is_sigterm_then_sigkill_at_once(node):
    """OTP's timeout 0: exit(Child, shutdown), then kill at once; a child that takes its
    time over terminate is killed, reported as a timed-out shutdown is."""
    c = node.conn
    pid = c.pid_of("sudden")
    with node.events() as ev:
        began = time.monotonic()
        c.terminate_child("", "sudden")
        took = time.monotonic() - began
        frame = ev.wait_for(lambda f: f.key == "sudden" and f.kind == "child_stopped", 10)
    assert took < 5 and not alive(pid)  # its terminate sleeps 30 s
    assert frame.reason == p.Killed(9)
    assert c.restart_child("", "sudden") == c.pid_of("sudden")


def test_stop_in_terminate_sets_the_exit_reason(node):
    """supervisor_SUITE: a child may exit {shutdown, test} from terminate; Stop means the
    same there as in every other handler."""
    c = node.conn
    with node.events() as ev:
        c.terminate_child("", "polite")
        assert _stopped(ev, "polite") == p.Shutdown("test")
    assert c.restart_child("", "polite") == c.pid_of("polite")


def test_simple_one_for_one_with_auto_shutdown_is_refused(node):
    for mode in ("any_significant", "all_significant"):
        with pytest.raises(p.ChildSpecError, match="bad_combination"):
            p.SupFlags(strategy="simple_one_for_one", auto_shutdown=mode)
        with pytest.raises(p.ChildSpecError, match="bad_combination"):
            p.check_child_specs([], mode, strategy="simple_one_for_one")
    p.check_child_specs([], "never", strategy="simple_one_for_one")
    # a start callable that builds one fails to start, never runs a supervisor
    spec = p.ChildSpec(id="bad_pool", start="tests.otp_apps:auto_shutdown_pool", type="supervisor")
    with pytest.raises(p.StartError) as info:
        node.conn.start_child("", spec)
    assert "bad_combination" in p.describe(info.value.exit_reason)
    assert "bad_pool" not in [i.id for i in node.conn.which_children()]


def test_get_childspec_and_which_child(node):
    c = node.conn
    assert c.get_childspec("", "polite") == p.ChildSpec(id="polite",
                                                        start="tests.otp_apps:ShutdownTest")
    assert c.get_childspec("", "sudden").shutdown == 0
    jobs = c.get_childspec("", "jobs")  # a nested spec comes back whole
    assert isinstance(jobs.start, p.SupervisorSpec) and jobs.type is p.ChildType.SUPERVISOR
    assert jobs.start.flags.strategy is p.Strategy.SIMPLE_ONE_FOR_ONE
    assert jobs.start.children[0].start == "tests.otp_apps:WithInfo"
    rows = {i.id: i for i in c.which_children()}
    for cid in ("quiet", "sudden", "polite", "pool", "jobs", "opaque"):
        assert c.which_child("", cid) == rows[cid]
    for call in (c.get_childspec, c.which_child):
        with pytest.raises(p.SupervisorError) as info:
            call("", "nobody")
        assert info.value.reason == "not_found"
    # a spec whose args cannot cross the wire is refused with a reason, never lost
    with pytest.raises(p.SupervisorError) as info:
        c.get_childspec("", "opaque")
    assert info.value.reason == "unencodable" and c.which_child("", "opaque").pid
    # simple_one_for_one children are named by pid, as in OTP
    pid, info = c.start_child_info("jobs", ["dyn"])
    assert info == {"started": "dyn"}
    assert c.which_child("jobs", pid) == p.ChildInfo(None, pid, False, "worker")
    assert c.get_childspec("jobs", pid).args == ("dyn",)
    with pytest.raises(p.SupervisorError):
        c.which_child("jobs", "job")
    c.terminate_child("jobs", pid)


def test_a_start_returns_the_info_init_returned(node):
    """OTP's {ok, Pid, Info}: start_child_info and restart_child_info give what the
    worker's init returned (plain or async) beside the pid; start_child gives the pid."""
    c = node.conn
    spec = p.ChildSpec(id="informed", start="tests.otp_apps:WithInfo", args=([1, "a"],))
    pid, info = c.start_child_info("", spec)
    assert pid == c.pid_of("informed") and info == {"started": [1, "a"]}
    c.terminate_child("", "informed")
    pid2, info2 = c.restart_child_info("", "informed")
    assert pid2 not in (None, pid) and info2 == info
    c.terminate_child("", "informed")
    c.delete_child("", "informed")
    spec = p.ChildSpec(id="async_informed", start="tests.otp_apps:AsyncWithInfo",
                       restart="temporary")
    pid, info = c.start_child_info("", spec)
    assert alive(pid) and info == ["async", 1]
    assert c.start_child_info("", p.ChildSpec(id="plain", start="tests.apps:Idle",
                                              restart="temporary"))[1] is None
    for cid in ("async_informed", "plain"):
        c.terminate_child("", cid)
    with pytest.raises(p.StartError) as err:
        c.start_child("", p.ChildSpec(id="bad_info", start="tests.otp_apps:Unsendable"))
    assert "cannot be sent as the start's info" in str(err.value)


def test_a_supervisor_that_registered_a_name_is_addressed_by_it(node):
    c = node.conn
    assert c.which_children("@pool_sup") == c.which_children("pool")
    assert c.which_child("@pool_sup", "w").pid == c.pid_of("pool/w")
    with pytest.raises(p.SupervisorError) as info:
        c.which_children("@nobody")
    assert info.value.reason == "noproc"
    # the name is unique on the node: a second holder fails to start, as in OTP
    spec = p.ChildSpec(id="pool2", start="tests.otp_apps:named_pool", type="supervisor")
    with pytest.raises(p.StartError) as err:
        c.start_child("", spec)
    assert "already_started" in str(err.value) and str(c.pid_of("pool")) in str(err.value)
    # and it follows the supervisor: gone while stopped, back once restarted
    c.terminate_child("", "pool")
    with pytest.raises(p.SupervisorError):
        c.which_children("@pool_sup")
    new = c.restart_child("", "pool")
    assert c.which_child("@pool_sup", "w").pid == c.pid_of("pool/w") != new
    assert c.count_children("@pool_sup")["active"] == 1


def test_the_cli_shows_a_spec_a_child_and_a_start_info(node):
    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--node", str(node.data_dir), *args])
        assert result.exit_code == 0, result.output
        return result.output

    spec = json.loads(run("children", "spec", "polite", "--json"))
    assert spec["start"] == "tests.otp_apps:ShutdownTest" and spec["shutdown"] == 5.0
    assert "shutdown:    0.0" in run("children", "spec", "sudden")
    assert "start:       tests.otp_apps:named_pool" in run("children", "spec", "pool")
    assert "supervisor simple_one_for_one, children job" in run("children", "spec", "jobs")
    row = json.loads(run("children", "which-child", "@pool_sup/w", "--json"))
    assert row["pid"] == node.conn.pid_of("pool/w")
    out = json.loads(run("children", "start", "--id", "cli_info", "--start",
                         "tests.otp_apps:WithInfo", "--restart", "temporary", "--json"))
    assert out["info"] == {"started": "hello"} and out["pid"] == node.conn.pid_of("cli_info")
    assert ", info {\"started\": [2]}" in run("children", "start", "jobs", "--args", "[[2]]")
    run("children", "terminate", "cli_info")
    bad = CliRunner().invoke(cli, ["--node", str(node.data_dir), "children", "spec", "nobody"])
    assert bad.exit_code == 1 and "not_found" in bad.output


def test_unknown_keys_are_an_error_and_an_invalid_spec_never_reaches_a_supervisor(node):
    """OTP ignores unknown keys of a child spec map; here they are an error. A spec is
    validated when built, and again when a supervisor decodes one: an invalid spec sent
    raw is answered badarg and nothing starts."""
    with pytest.raises(TypeError, match="modules"):
        p.ChildSpec(id="a", start="tests.apps:Idle", modules=["x"])  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="foo"):
        p.SupFlags(foo=1)  # type: ignore[call-arg]
    raw = {"type": "StartChild", "spec": {"id": "raw", "start": "tests.apps:Idle",
                                          "shutdown": -1}}
    with pytest.raises(p.SupervisorError) as info:
        node.conn._sup("", raw)
    assert info.value.reason == "badarg" and "shutdown" in str(info.value)
    assert "raw" not in [i.id for i in node.conn.which_children()]
