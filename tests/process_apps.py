"""Workers that make child processes of their own, for the tests of a worker's subtree."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import prismatic as p


def _forked(body: Any) -> int:
    """Fork a child that runs ``body()`` and never returns into the worker's frames."""
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid


def _sleep_forever() -> None:
    while True:
        time.sleep(60)


class Spawner(p.Worker):
    """Makes child processes on request and answers with their pids.

    ``["fork", n]`` os.fork children; ``["popen", n]`` subprocess children (exec'd
    ``sleep``); ``["session"]`` a subprocess in a new session (it leaves the worker's process
    group); ``["daemon"]`` a double-forked grandchild in a new session whose parent exits
    (orphaned while the worker lives); ``["daemon_in_cgroup"]`` such a daemon moved into a
    cgroup of its own below the worker's (as a nested node, or a container runtime, puts
    what it starts); ``["mailbox_in_fork"]`` whether a forked child still holds this
    worker's mailbox descriptors.
    """

    def init(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def handle_call(self, msg: Any, caller: p.Caller) -> Any:
        op, *args = msg
        if op == "fork":
            return [_forked(_sleep_forever) for _ in range(args[0])]
        if op == "popen":
            made = [subprocess.Popen(["sleep", "600"]) for _ in range(args[0])]
            self.children += made
            return [c.pid for c in made]
        if op == "session":
            c = subprocess.Popen(["sleep", "600"], start_new_session=True)
            self.children.append(c)
            return c.pid
        if op == "daemon":
            return self._daemon()
        if op == "daemon_in_cgroup":
            return self._daemon_in_cgroup()
        if op == "mailbox_in_fork":
            return self._mailbox_in_fork()
        if op == "echo":
            return args[0]
        raise ValueError(f"unknown op {op!r}")

    def _daemon(self) -> int:
        r, w = os.pipe()

        def middle() -> None:
            os.setsid()
            os.write(w, str(_forked(_sleep_forever)).encode())

        mid = _forked(middle)
        os.close(w)
        pid = int(os.read(r, 64))  # one write; no EOF to wait for: the daemon holds w
        os.close(r)
        os.waitpid(mid, 0)
        return pid

    def _daemon_in_cgroup(self) -> list[Any]:
        """[the daemon's pid, the cgroup it is in now (below this worker's)]."""
        from prismatic._tree_cgroup import own_cgroup_dir  # noqa: PLC0415

        own = own_cgroup_dir()
        assert own is not None
        inner = own / f"inner-{os.getpid()}"
        inner.mkdir()
        daemon = self._daemon()
        (inner / "cgroup.procs").write_text(f"{daemon}\n")
        return [daemon, str(inner)]

    def _mailbox_in_fork(self) -> list[Any]:
        """[fds of the mailbox open in the worker, of those open in a forked child]."""
        box = self.context.mailbox
        fds = [box.listener.fileno(), *box.conns]
        r, w = os.pipe()

        def probe() -> None:
            still = []
            for fd in fds:
                try:
                    os.fstat(fd)
                    still.append(fd)
                except OSError:
                    pass
            os.write(w, json.dumps(still).encode())

        child = _forked(probe)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            still = json.loads(f.read())
        os.waitpid(child, 0)
        return [fds, still]


def spawners() -> p.SupervisorSpec:
    return p.SupervisorSpec(
        flags=p.SupFlags(intensity=20, period=5),
        children=[p.ChildSpec(id="s", start=Spawner),
                  p.ChildSpec(id="mid", type="supervisor", start=p.SupervisorSpec(
                      children=[p.ChildSpec(id="s2", start=Spawner)]))])
