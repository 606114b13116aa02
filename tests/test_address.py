"""A Pid names one process, forever: the codec, and stale Pids reaching nobody on real nodes.

Pid reuse is forced, not waited for: as root, ``/proc/sys/kernel/ns_last_pid`` is set so that
the next fork takes the ospid of a dead worker, and that fork starts a real worker runtime
(tests/pid_apps.py) of the same node and incarnation at it. A Pid given without its
discriminators (``Pid(node, ospid)``) then reaches the newcomer, which shows the reuse
took; the dead worker's exact Pid reaches nobody.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import prismatic as p
from prismatic._address import boot_ms, holder_matches, own_pid, process_start
from tests.conftest import REPO, start_node, wait_until

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")
APP = "tests.messaging_apps:agents"

# ---- the codec (pure) -------------------------------------------------------------------------

nodes = st.text(min_size=1, max_size=30).filter(lambda s: "<" not in s and ">" not in s)
pids = st.builds(p.Pid, nodes, st.integers(1, 2 ** 22), st.integers(0, 2 ** 53),
                 st.integers(0, 2 ** 40))


@given(pids)
def test_pid_round_trips_through_msgpack_and_json(pid):
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(pid), type=p.Pid) == pid
    assert msgspec.json.decode(msgspec.json.encode(pid), type=p.Pid) == pid
    # inside a message it is plain data: a list, which a Pid is made from again
    assert p.Pid(*msgspec.msgpack.decode(msgspec.msgpack.encode(pid))) == pid


@given(pids)
def test_the_string_form_is_node_and_ospid_only(pid):
    assert str(pid) == f"<{pid.node}.{pid.ospid}>"
    assert str(p.Pid(pid.node, pid.ospid)) == str(pid)


@given(nodes, st.integers(1, 2 ** 22))
def test_the_old_two_field_form_still_decodes(node, ospid):
    old = msgspec.msgpack.encode([node, ospid])
    assert msgspec.msgpack.decode(old, type=p.Pid) == p.Pid(node, ospid, 0, 0)


@given(pids, pids)
def test_a_pid_names_another_only_where_its_known_fields_agree(a, b):
    loose = p.Pid(a.node, a.ospid)
    assert a.names(a) and loose.names(a)
    assert a.names(b) == (a.node == b.node and a.ospid == b.ospid
                          and a.creation in (0, b.creation) and a.start in (0, b.start))
    if a.exact and a != b:
        assert not a.names(b)  # an exact Pid names one process only


def test_own_pid_and_the_holder_check():
    me = own_pid("n", 5)
    assert me.ospid == os.getpid() and me.start == process_start(os.getpid()) > 0
    assert holder_matches(me, os.getpid(), 5)
    assert not holder_matches(me, os.getpid(), 6)  # another incarnation of the node
    assert not holder_matches(p.Pid("n", me.ospid, 5, me.start + 1), os.getpid(), 5)
    assert not holder_matches(me, os.getppid(), 5)  # another process holds the address
    assert holder_matches(p.Pid("n", me.ospid), os.getppid(), 5)  # loose: whoever holds it
    # a node of unknown incarnation: a Pid from before this boot names nobody
    assert not holder_matches(p.Pid("n", me.ospid, boot_ms() - 1, me.start), me.ospid, 0)
    assert holder_matches(p.Pid("n", me.ospid, boot_ms() + 1, me.start), me.ospid, 0)
    assert process_start(2 ** 22 + 5) == 0


# ---- stale Pids on real nodes ------------------------------------------------------------------

def _fork_at(ospid: int, argv: list[str], pass_fds: tuple[int, ...]) -> subprocess.Popen | None:
    """Start ``argv`` as process ``ospid``: the next fork takes ns_last_pid + 1. Another
    fork on the machine may come first: then try again."""
    for _ in range(50):
        NS_LAST_PID.write_text(str(ospid - 1))
        proc = subprocess.Popen(argv, pass_fds=pass_fds, cwd=REPO,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
        if proc.pid == ospid:
            return proc
        proc.kill()
        proc.wait()
    return None


@contextlib.contextmanager
def impostor_at(stale: p.Pid, data_dir: Path) -> Iterator[p.Pid]:
    """A real worker of ``stale``'s node and incarnation, at ``stale``'s ospid; its Pid."""
    if not os.access(NS_LAST_PID, os.W_OK):
        pytest.skip("forcing pid reuse needs root (/proc/sys/kernel/ns_last_pid)")
    ours, theirs = socket.socketpair()
    try:
        proc = _fork_at(stale.ospid, [sys.executable, "-m", "tests.pid_apps", stale.node,
                                      str(data_dir), str(stale.creation), str(theirs.fileno())],
                        (theirs.fileno(),))
    finally:
        theirs.close()
    if proc is None:
        ours.close()
        pytest.skip(f"ospid {stale.ospid} could not be taken (other forks on the machine)")
    try:
        conn = p.connect(data_dir)
        loose = p.Pid(stale.node, stale.ospid)
        answer = wait_until(lambda: _try_call(conn, loose), 20, "the impostor to answer")
        yield p.Pid(*answer[1])
    finally:
        ours.close()  # its channel: the impostor stops
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _try_call(conn, pid):
    try:
        return conn.call(pid, "who", timeout=1)
    except (p.NoProcError, p.ProcessDown):
        return None


def _notices_about(node, watcher: str, ospid: int) -> list:
    return [n for n in node.conn.call(watcher, ["notices"]) if n[1][1] == ospid]


def _check_stale(node, stale: p.Pid, impostor: p.Pid) -> None:
    """``stale`` (dead) and ``impostor`` share an ospid: nothing sent to ``stale`` arrives."""
    assert impostor.ospid == stale.ospid and impostor != stale
    loose = p.Pid(stale.node, stale.ospid)
    assert node.conn.call(loose, "who")[0] == "impostor"  # the ospid really was reused
    with pytest.raises(p.NoProcError):
        node.conn.call(stale, ["echo", "hello"])
    assert node.conn.cast(stale, ["echo", "hello"]) is False  # a dead letter
    assert node.conn.send(stale, ["echo", "hello"]) is False
    # worker to worker too: alpha calls and casts to the stale Pid
    assert node.conn.call("alpha", ["call", W(stale), ["echo", "hello"], 2])[:2] == ["error",
                                                                              "NoProcError"]
    assert node.conn.call("alpha", ["cast", W(stale), ["echo", "hello"]]) is False
    # a monitor of it fires at once, a link to it sends Exit(noproc) (t traps exits)
    node.conn.call(_path_pid(node, "c"), ["monitor", W(stale)])
    node.conn.call(_path_pid(node, "t"), ["link", W(stale)])
    downs = wait_until(lambda: _notices_about(node, _path_pid(node, "c"), stale.ospid), 10,
                       "the DOWN")
    assert [d[0] for d in downs] == ["Down"] and downs[0][2] in ("noproc", "killed by SIGKILL")
    exits = wait_until(lambda: _notices_about(node, _path_pid(node, "t"), stale.ospid), 10,
                       "the EXIT")
    assert exits == [["Exit", [stale.node, stale.ospid], "noproc"]]
    # and a monitor of the loose Pid (the impostor, alive) does not fire
    node.conn.call(_path_pid(node, "c"), ["monitor", [loose.node, loose.ospid]])
    assert len(_notices_about(node, _path_pid(node, "c"), stale.ospid)) == 1
    # the impostor got nothing of what was sent to the stale Pid
    assert node.conn.call(loose, "who")[2] == []


def W(pid: p.Pid) -> list:
    """A Pid as it travels inside a message: a list of its fields."""
    return list(msgspec.structs.astuple(pid))


def _path_pid(node, path: str) -> p.Pid:
    ospid = wait_until(lambda: node.conn.pid_of(path), 10, f"{path} to run")
    return p.Pid(node.conn.status().node, ospid)


def test_a_stale_pid_reaches_nobody_once_its_ospid_is_reused(tmp_path):
    node = start_node(tmp_path, APP)
    try:
        stale = node.conn.whereis("beta")
        assert stale is not None and stale.exact
        assert node.conn.call(stale, ["echo", 1]) == 1
        with node.events() as ev:
            os.kill(stale.ospid, signal.SIGKILL)
            ev.wait_for(lambda e: e.key == "b" and e.kind == "child_started", 10)
        with impostor_at(stale, node.data_dir) as impostor:
            _check_stale(node, stale, impostor)
            # a Pid of the right ospid and incarnation but another start names nobody either
            never = p.Pid(stale.node, stale.ospid, stale.creation, impostor.start + 1)
            with pytest.raises(p.NoProcError):
                node.conn.call(never, ["echo", "hello"])
            # no exit of it is remembered: the hub asks the holder of its ospid who it is
            node.conn.call(_path_pid(node, "c"), ["monitor", W(never)])
            downs = wait_until(lambda: _notices_about(node, _path_pid(node, "c"), never.ospid)[1:],
                               10, "the second DOWN")
            assert downs == [["Down", [never.node, never.ospid], "noproc"]]
    finally:
        node.stop()
        wait_until(lambda: not node.pids(), 10, "the node's processes to exit")


def test_a_pid_of_a_node_restarted_under_its_name_reaches_nobody(tmp_path):
    name = f"restarted{os.getpid()}"
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = start_node(tmp_path / "one", APP, name=name)
    try:
        old = first.conn.whereis("beta")
        assert old is not None and old.exact
    finally:
        first.stop()
        wait_until(lambda: not first.pids(), 10, "the first node's processes to exit")
    node = start_node(tmp_path / "two", APP, name=name, data_dir=first.data_dir)
    try:
        new = node.conn.whereis("beta")
        assert new.node == old.node and new.creation > old.creation
        # The old incarnation with the ospid and start of a live process (forged: within one
        # boot those two alone are unique): a worker of the node knows its creation, and so
        # does the hub; a client outside checks only that the Pid is of this boot.
        forged = p.Pid(name, new.ospid, old.creation, new.start)
        assert node.conn.call("alpha", ["call", W(forged), ["echo", 1], 2])[:2] == [
            "error", "NoProcError"]
        node.conn.call(_path_pid(node, "c"), ["monitor", W(forged)])
        downs = wait_until(lambda: _notices_about(node, _path_pid(node, "c"), new.ospid), 10,
                           "the DOWN")
        assert downs == [["Down", [name, new.ospid], "noproc"]]
        # the old Pid itself, its ospid taken by a process of the new incarnation
        reborn = p.Pid(name, old.ospid, new.creation, old.start)
        with impostor_at(reborn, node.data_dir) as impostor:
            assert impostor.creation == new.creation
            _check_stale(node, old, impostor)
    finally:
        node.stop()
        wait_until(lambda: not node.pids(), 10, "the node's processes to exit")
