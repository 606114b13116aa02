"""Network namespaces for the partition scenario: one host namespace per node, their veth
links on one bridge in a namespace of its own, so the machine's own network is never
touched. A partition is a node's link taken down on the bridge's side: nothing resets,
packets just vanish, as with a pulled cable. Needs root and iproute2's ``ip``;
:func:`netns_unavailable` says why not where they cannot be made.

A node's mailboxes (and its hub) are abstract ``AF_UNIX`` sockets, scoped to its network
namespace: the runner reaches them from a thread that has entered the namespace
(:class:`NamespaceThread`; ``setns`` moves only the calling thread). Its control endpoint
and event log are files, reachable from anywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .._errors import ChaosError

__all__ = ["netns_unavailable", "Namespaces", "NamespaceThread"]

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    try:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)
    except subprocess.CalledProcessError as exc:
        err = exc.stderr.decode(errors="replace").strip()
        raise ChaosError(f"ip {' '.join(args)}: {err or exc}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ChaosError(f"ip {' '.join(args)}: {exc}") from None


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here (one line), or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"cxprobe{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except ChaosError as exc:
        return f"cannot create a network namespace: {exc}"
    return None


class Namespaces:
    """``hosts`` namespaces (``cx<run>h<i>``, address ``<subnet>.<i>``, i from 1) on a bridge
    in ``cx<run>br``. :meth:`close` deletes them all (a node still running in one keeps
    it alive until it exits; nothing else is left)."""

    def __init__(self, hosts: int) -> None:
        run = uuid.uuid4().hex[:6]
        # A random /24 in 10.200-249.x: two runs (or test modules) on one machine never share
        # one, and nothing is routed there from the host namespace anyway.
        self.subnet = f"10.{200 + int(run[:2], 16) % 50}.{int(run[2:4], 16)}"
        self.bridge = f"cx{run}br"
        self.hosts = [f"cx{run}h{i}" for i in range(1, hosts + 1)]
        made: list[str] = []
        try:
            _ip("netns", "add", self.bridge)
            made.append(self.bridge)
            _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.bridge, "link", "set", "br0", "up")
            for i, ns in enumerate(self.hosts, 1):
                _ip("netns", "add", ns)
                made.append(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"v{i}",
                    "netns", self.bridge)
                _ip("-n", ns, "addr", "add", f"{self.address(i - 1)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", self.bridge, "link", "set", f"v{i}", "master", "br0")
                _ip("-n", self.bridge, "link", "set", f"v{i}", "up")
        except ChaosError:
            for ns in made:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
            raise

    def address(self, index: int) -> str:
        """The address of host ``index`` (0-based)."""
        return f"{self.subnet}.{index + 1}"

    def prefix(self, index: int) -> tuple[str, ...]:
        """The command prefix that runs a program in host ``index``'s namespace (``ip netns
        exec`` execs it: the pid is the program's)."""
        return ("ip", "netns", "exec", self.hosts[index])

    def link(self, index: int, up: bool) -> None:
        """Take host ``index``'s link down (cut it off from every other host) or up."""
        _ip("-n", self.bridge, "link", "set", f"v{index + 1}", "up" if up else "down")

    def close(self) -> None:
        for ns in (*self.hosts, self.bridge):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


class NamespaceThread:
    """One thread inside a network namespace (``None``: the runner's own); :meth:`run`
    calls a function there and returns its result. A node's client connection must be
    made and used on the thread of that node's namespace."""

    def __init__(self, namespace: str | None) -> None:
        self.namespace = namespace
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"chaos-ns-{namespace}",
                                        initializer=self._enter)

    def _enter(self) -> None:
        if self.namespace is None:
            return
        import ctypes  # os.setns is Python 3.12's; libc's setns(2) does the same

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.namespace}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise ChaosError(f"cannot enter network namespace {self.namespace}: "
                                 f"{os.strerror(err)}")
        finally:
            os.close(fd)

    def run(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        return self._pool.submit(fn).result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
