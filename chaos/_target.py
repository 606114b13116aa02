"""The node under test: one the runner starts and reaps (:class:`OwnedNode`), or one that
already runs and that the runner may break but not restart (:class:`ExistingNode`).

An owned node runs ``python -m prismatic.node`` in a private data directory, in the
runner's working directory (so ``--app myapp:tree`` imports as the node would for the
user), with ``PRISMATIC_CHAOS_TAG`` in its environment so that every process of its tree can
be found in /proc (:mod:`._observe`). The runner owns it: it is stopped, or killed, and its
processes checked gone, before the runner returns.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .._client import NodeConnection, connect
from .._errors import ChaosError, PrismaticError
from ._netns import Namespaces, NamespaceThread, netns_unavailable
from ._observe import (
    TAG_VAR, boot_ticks, tagged_processes, tagged_processes_of, tree_named_processes,
)

__all__ = ["OwnedNode", "ExistingNode", "ClusterTarget", "Target"]

T = TypeVar("T")


def _kill_if_tagged(pid: int, tag: str) -> None:
    """SIGKILL ``pid`` if it still carries the tag: pinned by a pidfd first, so a pid
    handed to another process meanwhile is never signalled."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if pid in tagged_processes_of([pid], tag):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


class OwnedNode:
    """A node the runner started and will reap."""

    # What a scenario may require of its target (Scenario.REQUIRES); a cluster target (a
    # set of nodes in a mesh) offers {"cluster", ...} and hosts the cluster scenarios.
    OFFERS = frozenset({"node", "owned"})

    @classmethod
    def offers(cls) -> frozenset[str]:
        """What an owned node can host here: ``tmpfs`` (a small disk to fill) only where
        one can be mounted."""
        from ._tmpfs import tmpfs_unavailable

        return cls.OFFERS | ({"tmpfs"} if tmpfs_unavailable() is None else set())

    def __init__(self, app: str | None, workdir: Path, name: str,
                 extra: tuple[str, ...] = (), prefix: tuple[str, ...] = (),
                 data_dir: Path | None = None) -> None:
        self.app = app
        self.extra = extra  # more node options (a cluster member's --listen, --join...)
        self.prefix = prefix  # what runs the node (``ip netns exec NS``: it execs the node)
        self.workdir = workdir
        self.data_dir = data_dir or workdir / "data"  # (a tmpfs for the disk-full scenario)
        self.name = name
        self.tag = f"chaos-{uuid.uuid4().hex[:12]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def describe(self) -> str:
        return f"app {self.app or 'demo'} (node {self.name} in {self.data_dir})"

    def start(self, timeout: float = 30.0) -> None:
        cmd = [*self.prefix, sys.executable, "-m", "prismatic.node", "--data-dir",
               str(self.data_dir), "--name", self.name, "--quiet"]
        if self.app:
            cmd += ["--app", self.app]
        cmd += self.extra
        env = dict(os.environ, **{TAG_VAR: self.tag})
        log = open(self.workdir / "node.out", "ab")
        # A process group of its own: a Ctrl-C at the terminal is the runner's to handle
        # (stop injecting, settle, check), not a stop request to the node under test.
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=os.getcwd(),
                                     process_group=0)
        log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = (self.workdir / "node.out").read_text(errors="replace")[-600:]
                raise ChaosError(f"the node exited with {self.proc.returncode} while "
                                 f"starting: {tail.strip().splitlines()[-1:]}")
            try:
                with connect(self.data_dir, timeout=2.0) as conn:
                    if conn.status().ready:
                        return
            except PrismaticError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise ChaosError(f"the node did not become ready within {timeout:.0f}s")
            time.sleep(0.05)

    @property
    def node_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def connect(self, timeout: float = 5.0) -> NodeConnection:
        return connect(self.data_dir, timeout=timeout)

    def processes(self) -> dict[int, int]:
        return tagged_processes(self.tag)

    def node_pids(self) -> list[int]:
        return [self.node_pid]

    def kill(self) -> None:
        """SIGKILL the node process itself (its tree dies by PDEATHSIG)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop in order (SIGTERM); SIGKILL if that takes over ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def reap_leftovers(self, timeout: float = 1.0) -> dict[int, int]:
        """Wait for the tree's processes to go; SIGKILL what is still there after
        ``timeout`` and return it (what was left behind, for the report)."""
        deadline = time.monotonic() + timeout
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in left:
            _kill_if_tagged(pid, self.tag)
        return left


class ExistingNode:
    """A node that already runs (``--node``): broken, never restarted or stopped."""

    OFFERS = frozenset({"node"})

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.since = boot_ticks()
        with connect(data_dir) as conn:
            st = conn.status()
        self.name = st.node
        self.pid = st.pid

    def describe(self) -> str:
        return f"node {self.name} ({self.data_dir})"

    @property
    def node_pid(self) -> int:
        return self.pid

    def running(self) -> bool:
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def exit_code(self) -> int | None:
        return None

    def connect(self, timeout: float = 5.0) -> NodeConnection:
        return connect(self.data_dir, timeout=timeout)

    def processes(self) -> dict[int, int]:
        return tree_named_processes(self.pid, self.since)

    def node_pids(self) -> list[int]:
        return [self.pid]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClusterTarget:
    """``size`` nodes the runner starts, one mesh: node 0 listens on a fixed port (the
    seed), the others join it; one cluster secret in the work directory. On loopback by
    default; with ``netns``, each node in a network namespace of its own on one bridge
    (:mod:`._netns`: links that can be cut, for partitions). The generic checks (probe,
    shape) look at node 0; the cluster scenarios look at every node."""

    BASE_OFFERS = frozenset({"cluster"})

    def __init__(self, app: str | None, workdir: Path, size: int,
                 netns: bool = False) -> None:
        from ..mesh._secret import init_secret

        self.secret = init_secret(workdir / "cluster.secret")
        self.net = net = Namespaces(size) if netns else None
        port = 4370 if net else _free_port()

        def host(i: int) -> str:
            return net.address(i) if net else "127.0.0.1"
        self.seed = f"{host(0)}:{port}"
        run = uuid.uuid4().hex[:6]
        self.nodes: list[OwnedNode] = []
        self.threads: list[NamespaceThread] = []
        for i in range(size):
            sub = workdir / f"n{i}"
            sub.mkdir(parents=True, exist_ok=True)
            listen = f"{host(i)}:{port}" if self.net else "127.0.0.1:0"
            mesh = ("--listen", self.seed) if i == 0 else \
                ("--listen", listen, "--join", self.seed)
            self.nodes.append(OwnedNode(app, sub, f"chaos{run}n{i}",
                                        (*mesh, "--cluster-secret", str(self.secret)),
                                        self.net.prefix(i) if self.net else ()))
            self.threads.append(NamespaceThread(self.net.hosts[i] if self.net else None))
        self.data_dir = self.nodes[0].data_dir

    @classmethod
    def offers(cls) -> frozenset[str]:
        """What a cluster target can host here: ``netns`` (partitions) only where network
        namespaces can be made."""
        return cls.BASE_OFFERS | ({"netns"} if netns_unavailable() is None else set())

    def describe(self) -> str:
        where = " in network namespaces" if self.net else ""
        return f"a cluster of {len(self.nodes)} nodes{where} of {self.nodes[0].describe()}"

    def start(self) -> None:
        """The seed first, then the others side by side (each retries its join until the
        seed answers; the node start is what takes time)."""
        self.nodes[0].start()
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            for f in [pool.submit(n.start) for n in self.nodes[1:]]:
                f.result()

    def index(self, name: str) -> int:
        return next(i for i, n in enumerate(self.nodes) if n.name == name)

    def on_node(self, index: int, fn: Callable[[NodeConnection], T],
                timeout: float = 5.0) -> T:
        """``fn`` applied to a fresh connection to node ``index``, made and used in that
        node's network namespace (its mailboxes are reachable only from there)."""
        node = self.nodes[index]

        def call() -> T:
            with node.connect(timeout) as conn:
                return fn(conn)
        return self.threads[index].run(call, timeout * 4)

    @property
    def node_pid(self) -> int:
        return self.nodes[0].node_pid

    def node_pids(self) -> list[int]:
        return [n.node_pid for n in self.nodes if n.proc is not None]

    def running(self) -> bool:
        return all(n.running() for n in self.nodes)

    def exit_code(self) -> int | None:
        return next((c for n in self.nodes if (c := n.exit_code()) is not None), None)

    def connect(self, timeout: float = 5.0) -> NodeConnection:
        return self.nodes[0].connect(timeout)

    def processes(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for n in self.nodes:
            out.update(n.processes())
        return out

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.net is not None:  # a node cut off would stop after its peers' timeouts
            for i in range(len(self.nodes)):
                self.net.link(i, up=True)
        for n in self.nodes:  # a stopped node cannot take a SIGTERM
            if n.running():
                os.kill(n.node_pid, signal.SIGCONT)
        with ThreadPoolExecutor(len(self.nodes)) as pool:  # each announces its leave
            codes = list(pool.map(lambda n: n.stop(timeout), self.nodes))
        return next((c for c in codes if c not in (0, None)), codes[0] if codes else None)

    def reap_leftovers(self, timeout: float = 1.0) -> dict[int, int]:
        out: dict[int, int] = {}
        for n in self.nodes:
            out.update(n.reap_leftovers(timeout))
        for t in self.threads:
            t.close()
        if self.net is not None:
            self.net.close()
        return out


Target = OwnedNode | ExistingNode | ClusterTarget
