"""Processes the chaos scenarios add to the tree under test, and a tree built for storms.

The crash-loop, hang, flood and resources scenarios need nothing special in the user's app:
they add what they break with ``start_child`` under the root (the cluster scenarios add
their watchers and claimants the same way, on every node) (as ``temporary`` children,
whose exit costs the root no restart) and take it away afterwards. ``storm_tree`` is a tree
for long kill storms (``--app prismatic.chaos._apps:storm_tree``): three levels of
supervisors of every strategy, restart intensities high enough for tens of kills a second.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .._childspec import ChildSpec, SupervisorSpec, SupFlags
from .._worker import Worker

__all__ = ["Crasher", "Sleeper", "Slowpoke", "Glutton", "Idle", "Watcher", "Claimant",
           "Listener", "crash_loop_tree", "CRASH_LOOP_INTENSITIES", "storm_tree"]

# The crash loop's supervisors, bottom-up: the crasher's own supervisor, then the one above.
CRASH_LOOP_INTENSITIES = (1, 3)
_PERIOD_S = 60.0


class Crasher(Worker):
    """Fails in ``init`` while the number in ``counter_file`` is above zero, counting it down
    (so a crash loop ends after exactly that many failed starts)."""

    def init(self, counter_file: str) -> None:
        path = Path(counter_file)
        left = int(path.read_text() or "0") if path.exists() else 0
        if left > 0:
            path.write_text(str(left - 1))
            raise RuntimeError(f"chaos crash loop: failing on start ({left - 1} more)")


def crash_loop_tree(counter_file: str) -> SupervisorSpec:
    """``outer`` (intensity 3) > ``inner`` (intensity 1) > ``crasher``, one_for_one."""
    inner = SupervisorSpec(
        flags=SupFlags(intensity=CRASH_LOOP_INTENSITIES[0], period=_PERIOD_S),
        children=[ChildSpec(id="crasher", start=Crasher, args=(counter_file,))])
    return SupervisorSpec(
        flags=SupFlags(intensity=CRASH_LOOP_INTENSITIES[1], period=_PERIOD_S),
        children=[ChildSpec(id="inner", start=inner)])


class Sleeper(Worker):
    """Registered as ``name``. ``ping`` -> ``pong``; ``slow`` answers after 0.3 s (time to
    freeze it mid-call); ``hang`` never answers (a handler that never returns)."""

    def init(self, name: str) -> None:
        self.register(name)

    def handle_call(self, msg: object, caller: object) -> object:
        if msg == "slow":
            time.sleep(0.3)
        elif msg == "hang":
            while True:
                time.sleep(1.0)
        return "pong"


class Idle(Worker):
    """Does nothing; a storm's target."""

    def handle_call(self, msg: object, caller: object) -> object:
        return msg


def _leaf(strategy: str, prefix: str) -> SupervisorSpec:
    return SupervisorSpec(
        flags=SupFlags(strategy=strategy, intensity=200, period=1.0),
        children=[ChildSpec(id=f"{prefix}{i}", start=Idle) for i in range(3)])


def storm_tree() -> SupervisorSpec:
    """root (one_for_one) > 3 branches (one_for_one, one_for_all, rest_for_one) > 2 leaf
    supervisors each > 3 workers each, plus a worker on the two upper levels: 32 processes."""
    branches = []
    for b, strategy in enumerate(("one_for_one", "one_for_all", "rest_for_one")):
        branches.append(ChildSpec(id=f"b{b}", start=SupervisorSpec(
            flags=SupFlags(strategy=strategy, intensity=200, period=1.0),
            children=[ChildSpec(id="s0", start=_leaf("one_for_one", "w")),
                      ChildSpec(id="s1", start=_leaf("rest_for_one", "w")),
                      ChildSpec(id="solo", start=Idle)])))
    return SupervisorSpec(flags=SupFlags(intensity=500, period=1.0),
                          children=[*branches, ChildSpec(id="solo", start=Idle)])


class Slowpoke(Worker):
    """Registered as ``name``; a small mailbox (``mailbox_limit`` 50) and a slow
    ``handle_cast`` (10 ms): a flood fills it. ``call(name, "handled")`` says how many casts
    it handled."""

    mailbox_limit = 50

    def init(self, name: str) -> None:
        self.handled = 0
        self.register(name)

    def handle_cast(self, msg: object) -> None:
        time.sleep(0.01)
        self.handled += 1

    def handle_call(self, msg: object, caller: object) -> object:
        return self.handled


class Glutton(Worker):
    """Registered as ``name``; exhausts a resource on request (a request is a list over the
    wire: msgpack has no tuples).

    * call ``("fds", limit)``: lowers its descriptor limit to ``limit`` and opens /dev/null
      until EMFILE, keeping them all; returns how many it holds;
    * call ``("fork", n)``: forks ``n`` children that sleep (a minute at most); their pids;
    * cast ``("memory", headroom)``: caps its address space (``RLIMIT_AS``) at what it maps
      now plus ``headroom`` bytes, then allocates until ``MemoryError``, which it lets
      through: it crashes;
    * cast ``("touch", 0)``: allocates and writes 1 MiB after 1 MiB until something stops
      it (a cgroup's memory cap: the kernel's OOM killer);
    * call ``"ping"``: ``"pong"``.
    """

    def init(self, name: str) -> None:
        self.held: list[object] = []
        self.register(name)

    def handle_call(self, msg: object, caller: object) -> object:
        import os
        import resource

        if msg == "ping":
            return "pong"
        if isinstance(msg, (list, tuple)) and msg[0] == "fds":
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(int(msg[1]), soft), hard))
            try:
                while True:
                    self.held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            return len(self.held)
        if isinstance(msg, (list, tuple)) and msg[0] == "fork":
            pids = []
            for _ in range(int(msg[1])):
                pid = os.fork()
                if pid == 0:
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        time.sleep(0.2)
                    os._exit(0)
                pids.append(pid)
            return pids
        raise ValueError(f"unknown request {msg!r}")

    def handle_cast(self, msg: object) -> None:
        import resource

        if isinstance(msg, (list, tuple)) and msg[0] == "touch":
            # Pages written, not just mapped: a cgroup charges what is resident.
            while True:
                self.held.append(bytearray(b"\x01") * (1 << 20))
        if isinstance(msg, (list, tuple)) and msg[0] == "memory":
            with open("/proc/self/statm") as f:
                mapped = int(f.read().split()[0]) * resource.getpagesize()
            limit = mapped + int(msg[1])
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            while True:
                self.held.append(bytearray(1 << 20))


class Watcher(Worker):
    """Monitors each process in ``targets`` (``[node, ospid]`` lists: other nodes'
    processes) and logs every ``Down`` it gets as a ``chaos.monitor`` event (``fault``,
    ``watcher``: its node, ``target``, ``reason`` as :func:`prismatic.describe` says it): the
    runner reads them back from the log, even after the watcher is gone."""

    def init(self, fault: int, targets: list[list[Any]]) -> None:
        from .._address import Pid

        self.fault = fault
        for node, ospid in targets:
            self.monitor(Pid(node, int(ospid)))

    def handle_info(self, msg: object) -> None:
        from .._exit import describe
        from .._notices import Down

        if isinstance(msg, Down):
            self.emit("chaos.monitor", {"fault": self.fault, "watcher": self.pid.node,
                                        "target": [msg.pid.node, msg.pid.ospid],
                                        "reason": describe(msg.reason)})


class Claimant(Worker):
    """Registers the global name ``name`` in ``init`` and logs what came of it as a
    ``chaos.global`` event (``registered``, or ``refused`` with the reason), and later a
    ``conflict`` naming the winner if a healed partition kept the other registration."""

    def init(self, name: str, fault: int) -> None:
        from .._errors import RegistryError

        self.name, self.fault = name, fault
        try:
            self.register_global(name)
            self._log("registered")
        except RegistryError as exc:
            self._log("refused", reason=exc.reason)

    def _log(self, event: str, **more: Any) -> None:
        self.emit("chaos.global", {"fault": self.fault, "name": self.name, "event": event,
                                   "pid": [self.pid.node, self.pid.ospid], **more})

    def handle_info(self, msg: object) -> None:
        from .._notices import GlobalNameConflict

        if isinstance(msg, GlobalNameConflict):
            self._log("conflict", winner=[msg.winner.node, msg.winner.ospid])


class Listener(Worker):
    """Registered as ``name``; subscribes to ``pattern`` and counts the events it gets (each
    payload ``[seq, padding]``), noting any seq that goes backwards (``out_of_order``) and the
    events missing where it jumps forward (``gaps``); a slow consumer on purpose (1 ms every
    16 events: under 16,000 a second). ``call(name, "count")`` -> ``[received,
    out_of_order, undecodable, lost, gaps, next_seq]`` (``lost``: the events the node
    dropped for it, as its pub/sub counted them)."""

    def init(self, name: str, pattern: str) -> None:
        self.received = 0
        self.out_of_order = 0
        self.gaps = 0
        self.next_seq = 0
        self.register(name)
        self.subscribe(pattern)

    def handle_info(self, msg: object) -> None:
        payload = getattr(msg, "payload", None)
        if not isinstance(payload, list) or not payload:
            return
        if payload[0] > self.next_seq:
            self.gaps += int(payload[0]) - self.next_seq
        elif payload[0] < self.next_seq:
            self.out_of_order += 1
        self.next_seq = int(payload[0]) + 1
        self.received += 1
        if self.received % 16 == 0:
            time.sleep(0.001)

    def handle_call(self, msg: object, caller: object) -> object:
        pubsub = self.context.pubsub
        return [self.received, self.out_of_order, pubsub.undecodable, pubsub.lost, self.gaps,
                self.next_seq]
