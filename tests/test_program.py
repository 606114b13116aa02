"""Program children: real executables under a real node (readiness, stop, exit reasons,
process groups, captured output), and the Program spec's validation."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

import prismatic as p
from prismatic._config import ConfigError, load_config
from prismatic.cli import cli
from prismatic.supervisors._events import Op, StartChild
from prismatic.supervisors._logfile import RotatingLog, log_path
from tests.conftest import alive, module_node, wait_until
from tests.program_apps import HTTP_SERVER, NOTIFIER, PY

node = module_node("tests.program_apps:basic")


# ---- the spec ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "named"), [
    ({"argv": []}, "program.argv"),
    ({"argv": ["x"], "env": {"A=B": "1"}}, "program.env"),
    ({"argv": ["x"], "umask": 0o1000}, "program.umask"),
    ({"argv": ["x"], "stop_signal": "NOPE"}, "program.stop_signal"),
    ({"argv": ["x"], "start_timeout": 0}, "program.start_timeout"),
    ({"argv": ["x"], "ready": {"check": "tcp"}}, "program.ready.check"),
    ({"argv": ["x"], "ready": {"check": "port", "port": 70000}}, "program.ready.port"),
    ({"argv": ["x"], "ready": {"check": "line", "pattern": "("}}, "program.ready.pattern"),
    ({"argv": ["x"], "ready": {"check": "http", "url": "ftp://x"}}, "program.ready.url"),
])
def test_a_bad_program_names_its_field(fields, named):
    with pytest.raises(p.ChildSpecError) as info:
        p.Program(**fields)
    assert info.value.field == named


def test_a_program_spec_crosses_the_wire_and_reads_from_toml(tmp_path):
    spec = p.ChildSpec(id="web", start=p.Program(
        argv=["sleep", "1"], env={"A": "1"}, stop_signal="INT",
        ready=p.PortCheck(port=8000), alive=p.HttpCheck(url="http://127.0.0.1:8000/health"),
        alive_every=5), restart="transient")
    assert spec.start.stop_signal == signal.SIGINT
    wire = msgspec.msgpack.encode(StartChild(spec))
    assert msgspec.msgpack.Decoder(Op).decode(wire) == StartChild(spec)
    with pytest.raises(p.ChildSpecError, match="type must be worker"):
        p.ChildSpec(id="web", start=spec.start, type="supervisor")
    toml = tmp_path / "node.toml"
    toml.write_text('[[tree.children]]\nid = "web"\nrestart = "transient"\n'
                    '[tree.children.program]\nargv = ["sleep", "1"]\nenv = { A = "1" }\n'
                    'stop_signal = "INT"\nready = { check = "port", port = 8000 }\n'
                    'alive = { check = "http", url = "http://127.0.0.1:8000/health" }\n'
                    'alive_every = 5\n')
    assert load_config(toml).tree.children == (spec,)
    toml.write_text('[[tree.children]]\nid = "web"\n[tree.children.program]\n'
                    'argv = ["x"]\nready = { check = "port", port = 0 }\n')
    with pytest.raises(ConfigError, match=r"tree.children\[0\].program.ready.port: 0"):
        load_config(toml)


def test_the_log_rotates_by_size_and_keeps_n(tmp_path):
    file = log_path(tmp_path, ("sup", "web"))
    assert file == tmp_path / "logs" / "sup.web.log"
    rl = RotatingLog(file, max_bytes=1024, keep=2)
    for i in range(10):
        rl.write(bytes([65 + i]) * 600)
    rl.close()
    names = sorted(f.name for f in file.parent.iterdir())
    assert names == ["sup.web.log", "sup.web.log.1", "sup.web.log.2"]
    assert file.read_bytes() == b"J" * 600  # the newest chunk
    assert file.with_name("sup.web.log.2").read_bytes() == b"H" * 600


# ---- readiness --------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(node, cid: str, program: p.Program | str, **kw):
    return node.conn.start_child("", p.ChildSpec(id=cid, start=program, **kw), timeout=15)


def _drop(node, cid: str) -> None:
    node.conn.terminate_child("", cid)
    node.conn.delete_child("", cid)


def test_ready_when_the_port_accepts_and_the_url_answers(node):
    for cid, check in (("by-port", lambda port: p.PortCheck(port=port)),
                       ("by-http", lambda port: p.HttpCheck(url=f"http://127.0.0.1:{port}/"))):
        port = _free_port()
        pid = _start(node, cid, p.Program(argv=[PY, "-c", HTTP_SERVER, str(port), "0.3"],
                                          ready=check(port), start_timeout=10))
        # Started only now: the server listens 0.3 s after exec, so a start at exec would
        # have returned before it.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
            assert answer.status == 200
        assert alive(pid)
        _drop(node, cid)
        wait_until(lambda pid=pid: not alive(pid), 5, "the program to stop")


def test_ready_when_a_file_appears_or_sd_notify_says_so(node, tmp_path):
    marker = tmp_path / "warm"
    _start(node, "by-file", p.Program(
        argv=["sh", "-c", f"sleep 0.3; touch {marker}; exec sleep 300"],
        ready=p.FileCheck(path="warm"), cwd=str(tmp_path), start_timeout=10))
    assert marker.exists()
    _drop(node, "by-file")
    marker2 = tmp_path / "notified"
    _start(node, "by-notify", p.Program(argv=[PY, "-c", NOTIFIER, str(marker2)],
                                        ready=p.NotifyCheck(), start_timeout=10))
    assert marker2.exists()  # written just before READY=1
    _drop(node, "by-notify")


def test_ready_on_a_stdout_line_which_goes_to_its_log(node):
    _start(node, "by-line", p.Program(argv=[PY, "-c", HTTP_SERVER, "0", "0.3"],
                                      ready=p.LineCheck(pattern=r"listening on (\d+)"),
                                      start_timeout=10))
    file = log_path(node.data_dir, ("by-line",))
    line = file.read_text().strip()  # written before the start was reported
    assert line.startswith("listening on ")
    port = int(line.split()[-1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as answer:
        assert answer.status == 200
    wait_until(lambda: "GET / HTTP" in file.read_text(), 5, "stderr in the log too")
    out = CliRunner().invoke(cli, ["--node", str(node.data_dir), "logs", "by-line",
                                   "--lines", "1"])
    assert out.exit_code == 0, out.output
    assert out.output.count("\n") == 1 and "GET / HTTP" in out.output
    _drop(node, "by-line")


def test_ready_at_exec_is_the_programs_own_exec_not_setprivs(node):
    # setpriv (which arms PDEATHSIG, then execs the program) made slow to start by its
    # dynamic loader's tracing: a start reported at setpriv's exec would return while the
    # process is still setpriv
    for i in range(3):
        pid = _start(node, f"at-exec-{i}", p.Program(argv=["sleep", "302"],
                                                     env={"LD_DEBUG": "all"}))
        assert _cmdline(pid) == "sleep\x00302\x00"
        _drop(node, f"at-exec-{i}")


def test_a_check_that_never_passes_or_an_exec_that_fails_is_a_start_failure(node, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(p.StartError, match=r"readiness check file never did not pass "
                                           r"within 0.5 s"):
        _start(node, "never", p.Program(argv=["sleep", "301"], ready=p.FileCheck(
            path="never"), cwd=str(tmp_path), start_timeout=0.5))
    assert 0.5 <= time.monotonic() - t0 < 5
    assert not [pid for pid in node.pids() if _cmdline(pid) == "sleep\x00301\x00"]
    with pytest.raises(p.StartError, match="FileNotFoundError"):
        _start(node, "nothing", p.Program(argv=["/nonexistent/program"]))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


# ---- exit reasons, stop -----------------------------------------------------------------------

def test_exit_codes_are_reasons_under_transient(node, tmp_path):
    runs = tmp_path / "runs"
    script = f"echo x >> {runs}; [ $(wc -l < {runs}) -ge 3 ] && exit 0; exit 3"
    with node.events() as events:
        _start(node, "counter", p.Program(argv=["sh", "-c", script]), restart="transient")
        exits = [events.wait_for(lambda e: e.key == "counter" and e.kind == "child_exited",
                                 10).reason for _ in range(3)]
    assert exits == [p.ExitCode(3), p.ExitCode(3), p.Normal()]
    kid = next(c for c in node.conn.which_children("") if c.id == "counter")
    assert kid.pid is None  # transient, normal exit: not restarted, spec kept
    assert runs.read_text().count("x") == 3
    node.conn.delete_child("", "counter")


def test_the_stop_signal_then_sigkill_of_the_group_after_the_shutdown_time(node, tmp_path):
    polite = "trap 'echo got INT; exit 0' INT; echo up; while :; do sleep 0.05; done"
    _start(node, "polite", p.Program(argv=["sh", "-c", polite], stop_signal="INT",
                                     ready=p.LineCheck(pattern="up")))
    t0 = time.monotonic()
    node.conn.terminate_child("", "polite")
    assert time.monotonic() - t0 < 2
    assert "got INT" in log_path(node.data_dir, ("polite",)).read_text()
    node.conn.delete_child("", "polite")

    # Ignores SIGTERM and has a child of its own: both are SIGKILLed at 0.5 s.
    stubborn = "trap '' TERM; sleep 300 & echo up; while :; do sleep 0.05; done"
    with node.events() as events:
        pid = _start(node, "stubborn", p.Program(argv=["sh", "-c", stubborn],
                                                 ready=p.LineCheck(pattern="up")),
                     shutdown=0.5)
        group = [q for q in node.pids() if os.getpgid(q) == pid]
        assert len(group) >= 2
        t0 = time.monotonic()
        node.conn.terminate_child("", "stubborn")
        took = time.monotonic() - t0
        stopped = events.wait_for(lambda e: e.key == "stubborn" and e.kind == "shutdown_error",
                                  5)
    assert 0.5 <= took < 3
    assert stopped.reason == p.Killed(signal.SIGKILL)
    wait_until(lambda: not any(alive(q) for q in group), 5, "the whole group to die")
    node.conn.delete_child("", "stubborn")


# ---- no orphans -------------------------------------------------------------------------------

def test_a_programs_children_die_when_its_supervisor_is_sigkilled(node):
    def grandchildren() -> list[int]:
        return [q for q in node.pids() if _cmdline(q) == "sleep\x00300\x00"
                and _cmdline(_ppid(q)).startswith("sh\x00-c\x00sleep")]  # the forker's

    mid = next(c.pid for c in node.conn.which_children("") if c.id == "mid")
    forker = next(c.pid for c in node.conn.which_children("mid") if c.id == "forker")
    sleeps = wait_until(lambda: len(grandchildren()) == 3 and grandchildren(), 5,
                        "three grandchildren")
    os.kill(mid, signal.SIGKILL)
    # The program dies by PDEATHSIG (armed before exec); its children, the one in a session
    # of its own too, are orphans the root supervisor adopts and kills.
    wait_until(lambda: not alive(forker) and not any(alive(q) for q in sleeps), 5,
               "the program and its children to die")
    # mid is restarted, with a new program and new grandchildren
    wait_until(lambda: len(grandchildren()) == 3, 10, "the restarted program's children")


# ---- operator verbs ---------------------------------------------------------------------------

def _cli(node, *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, ["--node", str(node.data_dir), *args])
    assert result.exit_code == code, (result.exit_code, result.output)
    return result.output


def test_signal_restart_and_scale_from_the_cli(node):
    script = "trap 'echo got USR1' USR1; echo up; while :; do sleep 0.05; done"
    out = _cli(node, "children", "start", "--id", "sig", "--program", f"sh -c \"{script}\"",
               "--ready", "line:^up$")
    pid = int(out.split()[-1])
    assert "sent SIGUSR1" in _cli(node, "children", "signal", "sig", "USR1")
    wait_until(lambda: "got USR1" in log_path(node.data_dir, ("sig",)).read_text(), 5,
               "the program to get SIGUSR1")
    assert "not a signal" in _cli(node, "children", "signal", "sig", "NOPE", code=2)
    assert "a liveness check is port, http or file" in _cli(
        node, "children", "start", "--id", "x", "--program", "sleep 1", "--alive", "line:x",
        code=2)
    assert "need --program" in _cli(node, "children", "start", "--alive", "port:1", code=2)
    # restart of a running child: terminated, then started again
    new = int(_cli(node, "children", "restart", "sig", "--timeout", "10").split()[-1])
    assert new != pid and not alive(pid) and alive(new)
    _drop(node, "sig")
    # a simple_one_for_one pool of programs, each `sleep` + the template's args
    assert "started 3" in _cli(node, "children", "scale", "pool", "3")
    pids = [c.pid for c in node.conn.which_children("pool")]
    assert len(pids) == 3
    # spawned through setpriv (which arms PDEATHSIG, then execs the program): started (at
    # exec) once the program itself runs, not setpriv
    assert [_cmdline(q) for q in pids] == ["sleep\x00300\x00"] * 3
    assert "stopped 2" in _cli(node, "children", "scale", "pool", "1")
    assert [c.pid for c in node.conn.which_children("pool")] == [pids[-1]]  # oldest kept
    _cli(node, "children", "scale", "pool", "0")


def test_logs_follow_prints_what_the_program_writes_next(node):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    _start(node, "ticker", p.Program(argv=["sh", "-c", "i=0; while :; do i=$((i+1)); "
                                                       "echo tick $i; sleep 0.05; done"]))
    wait_until(lambda: "tick 3" in log_path(node.data_dir, ("ticker",)).read_text(), 5,
               "a few ticks")
    follow = subprocess.Popen([sys.executable, "-m", "prismatic.cli", "--node",
                               str(node.data_dir), "logs", "ticker", "-f", "-n", "1"],
                              stdout=subprocess.PIPE, text=True)
    guard = threading.Timer(10, follow.kill)  # a read that never comes fails, not hangs
    guard.start()
    try:
        first = int(follow.stdout.readline().split()[-1])
        later = [int(follow.stdout.readline().split()[-1]) for _ in range(5)]
        assert later == list(range(first + 1, first + 6))  # followed, nothing lost
    finally:
        guard.cancel()
        follow.kill()
        follow.wait()
    _drop(node, "ticker")


def test_a_python_workers_print_goes_to_its_log_too(node):
    init_lines = ["printed in init", "to stderr", "from a subprocess"]
    # a worker forked for its spec (the file opened before init), and pool workers made
    # from spares (init's output spooled, then moved to the file once ready)
    _start(node, "printer", "tests.program_apps:Printer")
    node.conn.start_child("", p.ChildSpec(id="printers", start="tests.program_apps:printers",
                                          type="supervisor"))
    pids = [node.conn.start_child("printers", ()) for _ in range(2)]
    for path, pid in [(("printer",), _pid_of(node, "", "printer")),
                      (("printers", "printer-0"), pids[0]),
                      (("printers", "printer-1"), pids[1])]:
        assert node.conn.call(p.Pid(node.conn.status().node, pid), "hi") == "ok", path
        file = log_path(node.data_dir, path)
        wait_until(lambda file=file: file.exists() and file.read_text().splitlines()
                   == [*init_lines, "called with 'hi'"], 5, f"{path}'s output in its log")
    assert _cli(node, "logs", "printers/printer-1", "-n", "2").splitlines() == [
        "from a subprocess", "called with 'hi'"]
    _drop(node, "printer")
    _drop(node, "printers")


def test_a_workers_log_is_rotated_by_its_supervisor(node):
    from prismatic.supervisors._logfile import WORKER_LOG_MAX_BYTES  # noqa: PLC0415

    pid = _start(node, "flood", "tests.program_apps:Printer")
    dest = p.Pid(node.conn.status().node, pid)
    assert node.conn.call(dest, ["flood", WORKER_LOG_MAX_BYTES + (1 << 20)],
                          timeout=30) == "flooded"
    file = log_path(node.data_dir, ("flood",))
    old = file.with_name("flood.log.1")
    # looked at every WORKER_LOG_CHECK_S (5 s): copied to .1, then truncated under the
    # worker's open descriptor, which goes on writing at the file's new start
    wait_until(lambda: old.exists() and file.stat().st_size < WORKER_LOG_MAX_BYTES, 15,
               "the worker's log rotated")  # copied, then truncated: a line between is lost
    assert old.stat().st_size > WORKER_LOG_MAX_BYTES
    assert node.conn.call(dest, "after") == "ok"
    wait_until(lambda: file.read_text().endswith("called with 'after'\n"), 5, "a new line")
    assert file.stat().st_size < 1 << 20
    _drop(node, "flood")


def _pid_of(node, sup: str, cid: str) -> int:
    return next(c.pid for c in node.conn.which_children(sup) if c.id == cid)


def test_a_program_with_a_user_is_forked_and_runs_as_that_user(node):
    import pwd  # noqa: PLC0415

    me = pwd.getpwuid(os.getuid())
    # A user switch takes the fork+exec path (posix_spawn cannot switch users here).
    pid = _start(node, "as-me", p.Program(argv=["sh", "-c", "echo $USER $HOME; exec sleep 300"],
                                          user=me.pw_name, umask=0o077))
    wait_until(lambda: log_path(node.data_dir, ("as-me",)).read_text().strip()
               == f"{me.pw_name} {me.pw_dir}", 5, "the program's line")
    status = Path(f"/proc/{pid}/status").read_text()
    assert "Umask:\t0077" in status
    assert os.getpgid(pid) == pid  # leads its own group
    _drop(node, "as-me")


def test_a_loud_program_is_logged_and_rotated_without_stalling_the_supervisor(node):
    # 3 MiB as fast as the pipe takes it, in 1 KiB lines, into a 1 MiB log keeping 3 more.
    loud = "yes $(head -c 1023 /dev/zero | tr '\\0' x) | head -c 3145728; exec sleep 300"
    _start(node, "loud", p.Program(argv=["sh", "-c", loud], log_max_bytes=1 << 20,
                                   log_keep=3))
    t0 = time.monotonic()
    _start(node, "after", p.Program(argv=["sleep", "300"]))  # served meanwhile
    assert time.monotonic() - t0 < 5
    file = log_path(node.data_dir, ("loud",))
    olds = [file.with_name(f"loud.log.{i}") for i in (1, 2, 3)]

    def size(f: Path) -> int:
        try:
            return f.stat().st_size
        except FileNotFoundError:  # renamed by a rotation between two looks
            return 0

    def total() -> int:
        return sum(size(f) for f in (file, *olds))

    wait_until(lambda: total() == 3 << 20, 10, "all 3 MiB logged")
    # .3 exists or not, as the last rotation fell: 3 MiB fill the log and .1, .2 exactly,
    # and whether the full log was rotated once more depends on when the write came.
    assert all(size(f) <= 1 << 20 for f in (file, *olds))
    assert olds[1].exists() and not file.with_name("loud.log.4").exists()
    assert set(file.read_bytes()) == {ord("x"), ord("\n")}
    _drop(node, "loud")
    _drop(node, "after")


def test_a_failing_liveness_check_kills_and_restarts_the_program(node, tmp_path):
    # Listens for 0.4 s, then stops listening but keeps running (a hung server).
    port = _free_port()
    hangs = ("import socket, time\n"
             "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
             f"s.bind(('127.0.0.1', {port})); s.listen(); print('up', flush=True)\n"
             "time.sleep(0.4); s.close(); time.sleep(300)\n")
    file_gone = f"touch {tmp_path}/ok; echo up; sleep 0.4; rm {tmp_path}/ok; exec sleep 300"
    cases = [("alive-port", [PY, "-c", hangs], p.PortCheck(port=port),
              f"port 127.0.0.1:{port}"),
             ("alive-file", ["sh", "-c", file_gone], p.FileCheck(path="ok"), "file ok")]
    with node.events() as events:
        for cid, argv, check, what in cases:
            pid = _start(node, cid, p.Program(argv=argv, ready=p.LineCheck(pattern="up"),
                                              cwd=str(tmp_path), alive=check,
                                              alive_every=0.1, alive_failures=2))
            t0 = time.monotonic()
            exit_ = events.wait_for(lambda e, cid=cid: e.key == cid
                                    and e.kind == "child_exited", 10)
            assert 0.4 < time.monotonic() - t0 < 3
            assert exit_.pid == pid and exit_.reason == p.Crashed(
                type="prismatic.LivenessFailed",
                message=f"liveness check {what} failed 2 times in a row")
            restarted = events.wait_for(lambda e, cid=cid: e.key == cid
                                        and e.kind == "child_started", 10)
            assert restarted.pid != pid  # permanent: restarted as after any crash
            _drop(node, cid)
    with pytest.raises(p.ChildSpecError, match="program.alive"):
        p.Program(argv=["x"], alive=p.LineCheck(pattern="x"))


def test_a_workers_log_is_rotated_under_its_open_descriptor(tmp_path):
    from prismatic.supervisors._logfile import copy_truncate  # noqa: PLC0415

    file = tmp_path / "w.log"
    writer = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # as a worker's fd 1
    try:
        for n in range(3):
            os.write(writer, f"run {n}\n".encode())
            assert copy_truncate(str(file), keep=2)
        os.write(writer, b"after\n")
        assert file.read_text() == "after\n"  # written at the new end, not after a hole
        assert [file.with_name(f"w.log.{i}").read_text() for i in (1, 2)] == ["run 2\n",
                                                                             "run 1\n"]
        assert not file.with_name("w.log.3").exists()
    finally:
        os.close(writer)
