"""Trees the chaos tests break: one that leaks a process outside the tree on purpose."""

from __future__ import annotations

import os
import time

import prismatic as p
from prismatic._tree_cgroup import own_cgroup_dir


class Leaker(p.Worker):
    """Leaves a daemon behind (a double fork into a new session, no PDEATHSIG, and out of
    the node's cgroup, as root may leave it): a process the chaos runner must report when
    the node dies and it lives on."""

    def init(self) -> None:
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                _leave_node_cgroup()
                deadline = time.monotonic() + 60  # bounded, whatever happens to the test
                while time.monotonic() < deadline:
                    time.sleep(0.5)
            os._exit(0)


def _leave_node_cgroup() -> None:
    """Move this process out of its node's cgroup (prismatic._tree_cgroup) if it may."""
    here = own_cgroup_dir()
    if here is not None and here.name.startswith("prismatic-"):
        try:
            (here.parent / "cgroup.procs").write_text(f"{os.getpid()}\n")
        except OSError:
            pass  # not root: the node's sweeper will kill it (the run then holds)


def leaky_tree() -> p.SupervisorSpec:
    return p.SupervisorSpec(children=[p.ChildSpec(id="leaker", start=Leaker)])


class Idle(p.Worker):
    pass


def wide_tree() -> p.SupervisorSpec:
    """Restart intensity for a storm: 50 restarts a second at each level."""
    flags = p.SupFlags(intensity=50, period=1)
    inner = p.SupervisorSpec(flags=flags, children=[p.ChildSpec(id=f"w{i}", start=Idle)
                                                    for i in range(3)])
    return p.SupervisorSpec(flags=flags, children=[
        p.ChildSpec(id="a", start=inner), p.ChildSpec(id="b", start=inner),
        p.ChildSpec(id="solo", start=Idle)])


class Doomed(p.Worker):
    """Crashes 1 s after it starts: under OTP's default intensity (1 in 5 s) the root gives
    up at the second crash, about 2 s after the node started."""

    def init(self) -> None:
        self.send_after(1.0, "crash")

    def handle_info(self, msg: object) -> None:
        raise RuntimeError("doomed")


def doomed_tree() -> p.SupervisorSpec:
    return p.SupervisorSpec(children=[p.ChildSpec(id="doomed", start=Doomed),
                                      p.ChildSpec(id="idle", start=Idle)])
