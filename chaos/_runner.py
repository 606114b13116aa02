"""The chaos runner: for each scenario, plan its faults from the seed, set up the node,
inject the faults at their offsets while the probe watches, then let the tree settle and
check what every scenario checks (convergence, orphans, control latency, and, for a node
the runner owns, that a stop leaves nothing behind).

Scenario modules see the node through :class:`ScenarioContext` (kill a path, wait for an
offset, read the log and the metrics, look for orphans) and record their own checks in the
tally. The CLI (``prismatic chaos run``) only parses options, shows progress and prints the
report; Ctrl-C sets ``stop``: injection stops, the tree settles, the checks run, the report
says the run stopped early.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from .._childspec import ChildSpec, SupervisorSpec
from .._client import NodeConnection
from .._errors import ChaosError, PrismaticError
from ._invariants import ExitSeen, Kill, control_answered, no_orphans, nothing_left, tree_converged
from ._observe import exits_in_log, parent_pid
from ._probe import Probe
from ._report import RunReport, ScenarioReport, ScenarioTally
from ._scenarios import SCENARIOS, Scenario
from ._schedule import Fault, parent_path
from ._shape import TreeShape, shape_of_rows, shape_of_spec
from ._target import ClusterTarget, ExistingNode, OwnedNode, Target

__all__ = ["RunSettings", "ScenarioContext", "run", "scenarios_for", "scenarios_skipped"]

DEMO_APP = "prismatic._demo:demo_tree"


class RunSettings(msgspec.Struct, frozen=True, kw_only=True):
    app: str | None = None  # module:attr; None: the demo tree
    node: str | None = None  # an already running node (name or data dir) instead
    scenarios: tuple[str, ...] = ()  # () = every scenario that applies
    duration: float = 10.0  # seconds of injection per scenario
    seed: int = 0
    rate: float = 5.0  # faults per second (each scenario scales it to what it does)
    deadline: float = 10.0  # seconds a fault's tree may take to converge
    latency_limit: float = 5.0  # seconds a control request may take (a loaded machine: seconds)
    workdir: str | None = None  # where owned nodes' data dirs go (default: a temp dir)
    cluster: int = 0  # > 1: each scenario runs on that many owned nodes in one mesh


def _offers(settings: RunSettings) -> tuple[frozenset[str], dict[str, str]]:
    """What the settings' target offers, and why it lacks what it could offer on another
    machine (``netns``: network namespaces; ``tmpfs``: a disk to fill; both need root)."""
    from ._netns import netns_unavailable
    from ._tmpfs import tmpfs_unavailable

    if settings.node:
        return ExistingNode.OFFERS, {}
    if settings.cluster:
        offers = ClusterTarget.offers()
        return offers, {} if "netns" in offers else {"netns": netns_unavailable() or "?"}
    offers = OwnedNode.offers()
    return offers, {} if "tmpfs" in offers else {"tmpfs": tmpfs_unavailable() or "?"}


# What each requirement asks of the user, where the machine is not the reason it is missing.
_MEANS = {"owned": "a node the runner starts with --app, not --node",
          "cluster": "--cluster N", "node": "a single node, not --cluster",
          "netns": "a cluster in network namespaces (root)",
          "tmpfs": "a node the runner starts on a tmpfs (root)"}


def scenarios_for(settings: RunSettings) -> list[Scenario]:
    """The scenarios to run, in the registry's order: those named (an unknown name is a
    ChaosError, and so is one the target cannot host), else every one the target can host
    (:data:`Scenario.REQUIRES` within what the target offers)."""
    unknown = [n for n in settings.scenarios if n not in SCENARIOS]
    if unknown:
        raise ChaosError(f"no scenario {unknown[0]!r} (known: {', '.join(SCENARIOS)})")
    offers, lacking = _offers(settings)
    if settings.scenarios:
        chosen = [SCENARIOS[n] for n in SCENARIOS if n in settings.scenarios]
        refused = [s for s in chosen if not s.REQUIRES <= offers]
        if refused:
            missing = sorted(refused[0].REQUIRES - offers)
            why = "; ".join(f"{m}: {lacking.get(m) or _MEANS.get(m, '?')}" for m in missing)
            raise ChaosError(f"scenario {refused[0].NAME} needs a target that is "
                             f"{', '.join(missing)} ({why})")
        return chosen
    return [s for s in SCENARIOS.values() if s.REQUIRES <= offers]


def scenarios_skipped(settings: RunSettings) -> dict[str, str]:
    """The scenarios that would apply to the target but cannot run on this machine, each
    with the reason (a partition needs network namespaces, a full disk a tmpfs: root)."""
    if settings.scenarios:
        return {}  # a named one that cannot run is refused instead (scenarios_for)
    offers, lacking = _offers(settings)
    out = {}
    for s in SCENARIOS.values():
        missing = s.REQUIRES - offers
        if missing and missing <= lacking.keys():
            out[s.NAME] = "; ".join(lacking[m] for m in sorted(missing))
    return out


class ScenarioContext:
    """What a scenario may do to the node, and where it records what it found."""

    def __init__(self, target: Target, shape: TreeShape, tally: ScenarioTally,
                 probe: Probe, settings: RunSettings, stop: threading.Event,
                 progress: Callable[[str], None]) -> None:
        self.target = target
        self.shape = shape
        self.tally = tally
        self.probe = probe
        self.settings = settings
        self.stop = stop
        self._progress = progress
        self.started = time.monotonic()
        self.started_ns = time.time_ns()
        self.kills: list[Kill] = []
        self._suspects: set[int] = set()
        self._orphans: set[int] = set()
        self.conn: NodeConnection = target.connect(timeout=settings.latency_limit + 1.0)

    # ---- time -------------------------------------------------------------------------------

    def wait_offset(self, offset: float) -> bool:
        """Sleep until ``offset`` seconds after the scenario started; False on Ctrl-C, or
        once the node has exited (nothing left to break: the runner reports it)."""
        while True:
            left = self.started + offset - time.monotonic()
            if self.stop.is_set() or not self.target.running():
                return False
            if left <= 0:
                return True
            self.show()
            self.stop.wait(min(left, 0.25))

    def show(self) -> None:
        t = self.tally
        self._progress(f"[{t.scenario}] {time.monotonic() - self.started:5.1f}s/"
                       f"{self.settings.duration:.0f}s  faults {t.faults_injected}/"
                       f"{t.faults_planned}  violations {len(t.violations)}")

    # ---- faults -----------------------------------------------------------------------------

    def injected(self, fault: Fault) -> None:
        self.tally.faults_injected += 1
        self.tally.last_fault = fault.describe()

    def start_subject(self, name: str, app: str, args: tuple[Any, ...],
                      answers: Callable[[str], bool], **spec: Any) -> int | None:
        """Start a temporary worker of :mod:`prismatic.chaos._apps` (class ``app``) under the
        root for one fault; its pid once ``answers(name)`` says it works. A worker that does not
        start or answer is a ``<scenario>_setup`` violation (and None): a fault injected into
        it would prove nothing."""
        pid = self.conn.start_child("", ChildSpec(
            id=name, start=f"prismatic.chaos._apps:{app}", args=args, restart="temporary",
            **spec))
        if pid is None or not answers(name):
            self.tally.check(f"{self.tally.scenario}_setup", f"{name} did not start and answer")
            return None
        return pid

    def kill(self, fault: Fault, sig: int = signal.SIGKILL) -> Kill | None:
        """Signal the process at the fault's path (as the probe last saw it); None if nothing
        runs there now (the fault is then not injected).

        The pid is pinned with a pidfd and checked to be a child of the supervisor above the
        path before the signal goes: the probe's view is a few ms old, and on a busy machine
        a dead worker's pid can belong to an unrelated process moments later."""
        pid = self.probe.rows.get(fault.target)
        parent = self.probe.rows.get(parent_path(fault.target))
        if pid is None or parent is None:
            self.tally.skipped += 1
            return None
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.tally.skipped += 1
            return None
        try:
            if parent_pid(pid) != parent:  # not the process the probe saw there any more
                self.tally.skipped += 1
                return None
            sent_at = time.monotonic()  # before the signal: its exit cannot be stamped earlier
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            self.tally.skipped += 1
            return None
        finally:
            os.close(fd)
        k = Kill(pid=pid, path=fault.target, mono=sent_at)
        if sig == signal.SIGKILL:
            self.kills.append(k)
            self.probe.expect(fault.describe(), k.mono, fault.target, pid)
        self.injected(fault)
        return k

    # ---- observing --------------------------------------------------------------------------

    def log(self, pattern: str, since_ns: int | None = None) -> list[Any]:
        records: list[Any] = []
        self.conn.replay(records.append, pattern=pattern,
                         since_ns=self.started_ns if since_ns is None else since_ns)
        return records

    def exits(self) -> list[ExitSeen]:
        """Every exit the node logged since the scenario started."""
        return exits_in_log(self.log("supervisor.#"))

    def exits_since(self, since_ns: int) -> list[ExitSeen]:
        return exits_in_log(self.log("supervisor.#", since_ns))

    def check_orphans(self, grace_s: float = 1.0) -> int:
        """Look for processes of the node outside its tree; one is an orphan only if it is
        still there ``grace_s`` later (a killed supervisor's children die by PDEATHSIG a
        moment after it). Returns how many were found."""
        problem, pids = no_orphans(self.target.processes(), self.target.node_pids())
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            procs = self.target.processes()
            problem, pids = no_orphans({p: procs[p] for p in pids if p in procs},
                                       self.target.node_pids())
        self.tally.check("no_orphans", problem)
        self.tally.orphans += len(pids)
        return len(pids)

    def look_for_orphans(self) -> None:
        """The non-blocking look a storm takes every second: a process outside the tree
        now that was already outside at the previous look (a second ago, far past any
        PDEATHSIG) is an orphan; one seen outside for the first time is only a suspect."""
        _, pids = no_orphans(self.target.processes(), self.target.node_pids())
        confirmed = sorted(set(pids) & self._suspects - self._orphans)
        self._suspects = set(pids)
        self._orphans.update(confirmed)  # each reported once, however long it lives
        self.tally.check("no_orphans", f"{len(confirmed)} process(es) outside the node's "
                                       f"tree for over a second: {confirmed[:10]}"
                         if confirmed else None)
        self.tally.orphans += len(confirmed)

    def reconnect(self) -> None:
        """After the scenario restarted the node."""
        self.conn.close()
        self.conn = self.target.connect(timeout=self.settings.latency_limit + 1.0)

    def exits_until(self, since_ns: int, done: Callable[[list[ExitSeen]], object],
                    timeout: float = 3.0) -> list[ExitSeen]:
        """The exits logged since ``since_ns``, once ``done`` says they include what the
        scenario waits for (records reach the log a group commit after the event), or at
        the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            exits = self.exits_since(since_ns)
            if done(exits) or time.monotonic() > deadline:
                return exits
            time.sleep(0.02)

    def close(self) -> None:
        self.conn.close()


def _load_shape(settings: RunSettings, target: Target,
                conn: NodeConnection) -> TreeShape:
    if isinstance(target, ExistingNode):
        return shape_of_rows(conn.tree())
    from .._node import load_app

    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # as the node imports --app: the working directory first (python -m)
        sys.path.insert(0, cwd)
    try:
        spec: SupervisorSpec = load_app(settings.app or DEMO_APP)
    finally:
        if added:
            sys.path.remove(cwd)
    return shape_of_spec(spec)


def _settle_and_check(ctx: ScenarioContext, probe: Probe) -> None:
    """What every scenario checks once its faults are over: the tree settles into its
    shape, each fault converged within the deadline, no orphan, the node kept answering."""
    tally, settings = ctx.tally, ctx.settings
    settled = probe.wait_converged(settings.deadline)
    with ctx.target.connect() as conn:
        tally.check("converged", None if settled else
                    f"the tree did not settle within {settings.deadline:.0f}s: "
                    f"{tree_converged(ctx.shape, conn.tree())}")
    for _ in probe.converged:
        tally.check("converged", None)
    for fault, what in probe.late:
        tally.check("converged", f"not converged {settings.deadline:.0f}s after the "
                                 f"fault: {what}", fault)
    if not tally.convergence_s:  # a scenario may time convergence more finely itself
        tally.convergence_s.extend(probe.converged)
    ctx.check_orphans()
    probe.close()
    tally.check("control_answered",
                control_answered(probe.failures, probe.max_latency_s, settings.latency_limit))


def _run_one(scenario: Scenario, settings: RunSettings, workdir: Path,
             existing: ExistingNode | None, stop: threading.Event,
             progress: Callable[[str], None]) -> ScenarioReport:
    """One scenario on a target of its own (unless --node): a fresh node (or cluster),
    its data directory on a small tmpfs if the scenario fills the disk."""
    with contextlib.ExitStack() as mounts:
        data_dir = None
        if "tmpfs" in scenario.REQUIRES and existing is None:
            from ._tmpfs import open_tmpfs

            disk = getattr(scenario, "DISK_BYTES", 32 << 20)
            data_dir = mounts.enter_context(
                open_tmpfs(workdir / scenario.NAME / "disk", disk)) / "data"
        return _run_on(scenario, settings, workdir, existing, stop, progress, data_dir)


def _run_on(scenario: Scenario, settings: RunSettings, workdir: Path,
            existing: ExistingNode | None, stop: threading.Event,
            progress: Callable[[str], None], data_dir: Path | None) -> ScenarioReport:
    tally = ScenarioTally(scenario.NAME, settings.seed)
    began = time.monotonic()
    target: Target
    if existing is not None:
        target = existing
    else:
        sub = workdir / scenario.NAME
        sub.mkdir(parents=True, exist_ok=True)
        target = ClusterTarget(settings.app, sub, settings.cluster,
                               netns="netns" in scenario.REQUIRES) if settings.cluster \
            else OwnedNode(settings.app, sub, f"chaos-{uuid.uuid4().hex[:8]}",
                           data_dir=data_dir)
        progress(f"[{scenario.NAME}] starting {target.describe()}")
        try:
            target.start()
        except BaseException:  # a cluster half started: its nodes and namespaces go too
            target.stop()
            target.reap_leftovers()
            raise
    probe: Probe | None = None
    ctx: ScenarioContext | None = None
    try:
        with target.connect() as conn:
            shape = _load_shape(settings, target, conn)
        faults = scenario.plan(settings.seed, settings.duration, settings.rate, shape)
        tally.faults_planned = len(faults)
        probe = Probe(lambda: target.connect(timeout=settings.latency_limit + 1.0), shape,
                      settings.deadline, alive=target.running).start()
        if not probe.wait_converged(settings.deadline):
            raise ChaosError(f"the tree is not in its spec shape before any fault: "
                             f"{probe.last_problem}")
        ctx = ScenarioContext(target, shape, tally, probe, settings, stop, progress)
        ctx.show()
        try:
            scenario.run(ctx, faults)
        except PrismaticError as exc:
            # The node stopped answering, or refused what the scenario asked: a finding.
            tally.check("scenario_completed", f"{type(exc).__name__}: {exc}")
        tally.stopped_early = stop.is_set()
        try:
            if target.running():
                _settle_and_check(ctx, probe)
        except PrismaticError as exc:
            if target.running():
                tally.check("checks_completed", f"{type(exc).__name__}: {exc}")
        if not target.running():
            tally.check("node_alive", f"the node exited ({target.exit_code()}) under the "
                                      f"faults")
    finally:
        if probe is not None:
            probe.close()
            tally.max_latency_s = probe.max_latency_s
            tally.control_requests = probe.requests
        if ctx is not None:
            ctx.close()
        if not isinstance(target, ExistingNode):
            was_running = target.running()  # if not, node_alive has said so already
            code = target.stop()
            left = target.reap_leftovers()
            tally.check("nothing_left", nothing_left(left))
            tally.orphans += len(left)
            if was_running and code not in (0, None):
                tally.check("node_stopped", f"the node exited {code} when stopped")
    return tally.freeze(time.monotonic() - began)


def run(settings: RunSettings, *, stop: threading.Event | None = None,
        progress: Callable[[str], None] = lambda line: None) -> RunReport:
    """Run the chosen scenarios one after another; each on a fresh node of its own when the
    runner owns the node."""
    stop = stop or threading.Event()
    chosen = scenarios_for(settings)
    skipped = scenarios_skipped(settings)
    existing: ExistingNode | None = None
    if settings.node:
        from .._client import resolve_node

        try:
            existing = ExistingNode(resolve_node(settings.node))
        except PrismaticError as exc:
            raise ChaosError(f"--node {settings.node}: {exc}") from None
    reports = []
    with tempfile.TemporaryDirectory(prefix="chaos-",
                                     dir=settings.workdir) as tmp:
        for scenario in chosen:
            if stop.is_set():
                break
            reports.append(_run_one(scenario, settings, Path(tmp), existing, stop, progress))
    target = existing.describe() if existing else f"app {settings.app or DEMO_APP}" + (
        f" on a cluster of {settings.cluster} nodes" if settings.cluster else "")
    return RunReport.of(settings.seed, target, tuple(reports), skipped)
