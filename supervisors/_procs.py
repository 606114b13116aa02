"""The processes a supervisor keeps: a record per child process (:class:`Proc`), and its
spares (:class:`SpareKeeping`).

Spares are processes made ahead of need, idle until told which child to become, so a start or
a restart waits only for the child's ``init``. They come from the supervisor's zygote
(:mod:`._zygote`) when the raw clone works here, otherwise the supervisor forks them itself.
The policy, all in this module: one spare waits at all times; ``_AHEAD`` are in the making
while starts follow one another (the next is made while the current child runs ``init``); a
lone restart asks for its successor only once it is done (made during the restart it would
take a CPU from the replacement's ``init``); a start waits at most ``PARK_MAX_S`` for a spare
in the making; a zygote that no longer knows every static spec is renewed once the supervisor
is idle; a zygote that keeps dying is given up, with a log line; a clone that fails (the
process limit, a pids cgroup) is asked for again only after a backoff (0.1 s doubling to
5 s), one log line each time, starts meanwhile forking their child directly.

Dormancy (what a spare costs where nothing restarts): a supervisor that has started nothing
for :func:`spare_idle_s` (default 60 s, ``PRISMATIC_SPARE_IDLE`` in the node's environment)
kills its spare and its zygote: two processes and their memory, which a tree of many small
supervisors would otherwise pay for each of them. Its next start forks the child directly
(the fork-after-death path, no slower than a plain supervisor's), and once that start is done
it makes a zygote and a spare again, so restarts that follow within the idle time are fast.
Forking that zygote shares every page of the supervisor with it again, so the supervisor
first lists the pages its waking restart wrote and copies them back right after the fork
(:mod:`._working_set`): the next restart writes the same pages and would otherwise copy each
on its path (measured: ~190 faults in the supervisor -> ~30).
A child supervisor of at most ``FEW_CHILDREN`` static children (not a ``simple_one_for_one``
pool) starts dormant: it forks those few itself, and its children then share their pages
with it rather than with a zygote that would soon go (measured: ~0.45 MiB less private
memory per supervisor, the difference between the many-small-supervisors tree and a flat
one of the same workers). The root keeps its zygote from the start. It forks them before
its first decision (:meth:`SpareKeeping.fork_first_children`: processes that wait to be
told which child to become, as spares do, but prepare nothing), not from that decision:
what a process writes after a fork is copied, and its original stays with the other alone.
Forked by the decision, a child shared every page the decision code and the start had just
written, and the supervisor wrote most of them again at once (the child's ``ready`` goes
through the same code, then its reports): ~65 pages the worker kept alone (measured with
the pages' frame numbers, /proc/PID/pagemap). Forked before, that code's pages are copied
once, into the supervisor. A spare of these it did not use (a program child takes the fork
path) is let go as soon as the supervisor is idle.

What that first direct fork costs (measured with ``bench/bench_supervisors.py``: 1,000
dormant supervisors on 2 CPUs, p50): the death is seen once the kernel has unmapped the dead
worker (~2.5 ms), the fork takes ~2.5 ms, the new child's set-up before ``init`` (its group,
signals, descriptors, mailbox) ~1.3 ms, the supervisor's own decision and reports ~1 ms. The
first two are the kernel's, per page mapped and per level of the tree's fork chain, and
several times a hot process's in one idle for long (cold page tables and page structs); a
bare watcher of the same image, as idle, pays about half of each (a shallower fork chain,
fewer processes sharing its pages). Hence fewer pages: the node gives back ``malloc``'s free
pages before it forks the tree, and keeps the command line out of its image. And the two
share a CPU better: the supervisor yields it to the child it has just forked, the child
yields it back once it has sent ``ready``. Tried and measured, no gain: the supervisor
waiting for the new child's ``ready`` before its own post-fork work, or holding its reports
until then. Traced part by part (kernel tracepoints, 1,000 dormant supervisors, 2 CPUs
shared with other load, p50 of 30): kill -> the worker's exit seen 1.6-2.4 ms (the flat
supervisor's worker alike), the decision 0.35-0.7 ms (~45 copy-on-write faults), the fork
1.7-3.3 ms, the child to its first statement ~1 ms (~290 faults: CPython's after-fork hooks,
``threading``'s alone ~90), its set-up to ``ready`` 1.4-1.9 ms (~200 faults), the
supervisor's reports after it ~0.45 ms (~75 faults). A spare has paid all but the first two
ahead of time. A prototype (``bench/proto_first_restart.py``, bare processes) found a
node-level spare handed to the supervisor 35-45% quicker than its own fork, and a fork by a
freshly exec'd node-level forker no quicker; neither near the bare loop's hot floor.

Orphans: every process of the tree is a child subreaper (``prismatic/_process.py``), so a
process orphaned below a live child is reparented to that child, and one whose child is
gone (a worker's own child processes when the worker died, the children of a child
supervisor that was killed) is reparented to the supervisor. So the supervisor's children
are the tree's children, its zygote, the zygote's spares in the making (which stay in the
zygote's process group until they become a child), the probe processes of its program
children's checks (``probes``), and orphans, which it kills:
:meth:`SpareKeeping.sweep_orphans`, on every SIGCHLD (a death of any child, known or
adopted: a death reparents the dead process's children before it is reported; a sweep
waits 20 times the CPU the previous one took, at most 0.25 s: ``_runtime.SWEEP_DUTY``). Each child
also leads its own process group, killed whole the moment the child is found dead, so its
descendants that stayed in the group die at once. "No process outlives its supervisor"
holds for the whole subtree of each child, not just the processes the supervisor forked.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from .._childspec import ChildSpec, ChildType
from .._clone import sibling_support
from .._exit import ExitReason
from .._program import Program
from .._process import child_pids, fork_child, process_name, send_signal
from ..transports._channel import Channel, open_channel_pair
from ..transports._frames import Become, TroubleFrame
from ._child import knows, may_become_a_worker, spare_main
from ._events import Phase, StartStep
from ._program_run import ProgramRun
from ._trouble import Trouble
from ._working_set import exclusive_runs, populate_write
from ._zygote import Zygote

if TYPE_CHECKING:  # imported by the root alone, when it starts the lender (_borrowing)
    from ._lender import LenderHandle

__all__ = ["Proc", "SpareKeeping", "PARK_MAX_S", "fork_with_channel", "spare_idle_s",
           "check_spare_idle", "SPARE_IDLE_DEFAULT_S", "FEW_CHILDREN"]

log = logging.getLogger(__name__)

_ZYGOTE_DEATHS_TOLERATED = 3  # then the supervisor forks its spares itself, and says so
_CLONE_BACKOFF_S = (0.1, 5.0)  # after a failed clone, ask again after this, doubling to max
PARK_MAX_S = 0.05  # a start waits this long at most for a spare in the making, then forks
_AHEAD = 2  # spares in the making while starts follow one another
SPARE_IDLE_DEFAULT_S = 60.0
FEW_CHILDREN = 4  # a supervisor of at most this many static children starts dormant


def spare_idle_s(environ: dict[str, str] | None = None) -> float:
    """Seconds without a start after which a supervisor lets its spare and zygote go
    (``PRISMATIC_SPARE_IDLE``: a number of seconds, or ``never``). The node checks the value
    before it forks its tree (:func:`check_spare_idle`), so a bad one never gets here."""
    text = (os.environ if environ is None else environ).get("PRISMATIC_SPARE_IDLE", "")
    if not text.strip():
        return SPARE_IDLE_DEFAULT_S
    if text.strip().lower() == "never":
        return float("inf")
    return float(text)


def check_spare_idle(environ: dict[str, str] | None = None) -> str | None:
    """None if ``PRISMATIC_SPARE_IDLE`` is usable, else why not (one line)."""
    try:
        value = spare_idle_s(environ)
    except ValueError:
        value = -1.0
    if value >= 0 and value == value:  # not NaN
        return None
    text = (os.environ if environ is None else environ).get("PRISMATIC_SPARE_IDLE")
    return (f"PRISMATIC_SPARE_IDLE={text!r}: expected seconds (>= 0) without a start after "
            f"which a supervisor lets its spare and zygote go, or 'never'")


def fork_with_channel(main: Callable[[Channel], int], name: str,
                      keep: tuple[int, ...] = ()) -> tuple[int, Channel]:
    """Fork a child that runs ``main(its end of a new channel)``, keeping ``keep`` open in
    it too; return its pid and our end (the child's end is closed here, so its EOF means
    the child is gone, or for a program, that it exec'd)."""
    mine, theirs = open_channel_pair()
    try:
        pid = fork_child((theirs.fileno(), *keep), lambda: main(theirs), name)
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    return pid, mine


class Proc:
    """A child process as the loop sees it. ``key`` is None for an unassigned spare."""

    __slots__ = ("pid", "pidfd", "channel", "key", "ctype", "ready", "ignored", "reason",
                 "specs", "reading", "program", "lent")

    def __init__(self, pid: int, channel: Channel, key: str | None, ctype: ChildType) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.channel = channel
        self.key = key
        self.ctype = ctype
        self.ready = False
        self.ignored = False
        self.reason: ExitReason | None = None
        self.specs: dict[str, ChildSpec] = {}
        self.reading = True  # the channel is registered with the selector
        self.program: ProgramRun | None = None  # a program child's pipes, checks, stop
        # Lent by the node's shared spare, started from this spec: the lender's child, not
        # ours; it reaps it and tells us its status (see _lending).
        self.lent: ChildSpec | None = None


class SpareKeeping:
    """The spare-keeping half of :class:`~._runtime.SupervisorRuntime` (a mixin: it works on
    the runtime's selector, process table and decision state)."""

    sel: selectors.BaseSelector
    procs: dict[int, Proc]
    probes: dict[int, Proc]  # a program's readiness probe process -> the program's Proc
    spares: collections.deque[Proc]
    zygote: Zygote | None
    zygote_specs: dict[str, ChildSpec]
    zygote_stale: bool
    zygote_deaths: int
    lender: LenderHandle | None  # the root's: the node's shared spare (see _lender)
    # The Borrowing mixin's (declared, not defined: a stub here would shadow it in the MRO).
    stop_lender: Callable[[], None]
    use_zygote: bool
    use_spares: bool
    parked: tuple[str, ChildSpec] | None
    parked_until: float
    starting: Proc | None
    exit_reason: ExitReason | None
    spares_after: float  # monotonic time before which no spare is asked for (0: none)
    busy_at: float  # monotonic time of the last start, or of spares made (dormancy counts from it)
    dormant: bool  # spare and zygote let go after spare_idle of no start
    woken: bool  # a start woke it from dormancy; its zygote is not made again yet
    idle_limit: float  # spare_idle_s(), read once
    clone_backoff: float
    state: Any
    path: tuple[str, ...]
    node: str
    parent: Channel

    def name(self) -> str:
        raise NotImplementedError

    def trouble(self, what: Trouble) -> None:
        """Count what was just logged at the node (sent up the tree; see :mod:`._trouble`)."""
        self.parent.try_send(TroubleFrame(self.path, what.value))

    def watch(self, proc: Proc) -> None:
        raise NotImplementedError

    def forget(self, proc: Proc) -> None:
        raise NotImplementedError

    def start_proc(self, key: str, spec: ChildSpec) -> None:
        raise NotImplementedError

    def take_spare(self, key: str, spec: ChildSpec) -> Proc | None:
        while self.spares:
            spare = self.spares[0]
            if not knows(spare.specs, key, spec):
                self.zygote_stale = True  # renewed when idle, so the next restart is fast
                return None
            self.spares.popleft()
            dynamic = key != spec.id
            try:
                spare.channel.send(Become(key, spec.id, spec.args if dynamic else ()))
            except (TypeError, msgspec.EncodeError):
                self.spares.appendleft(spare)
                return None  # args that do not encode take the fork path
            except OSError:
                continue  # a dead spare: reaped when its pidfd says so; try the next
            spare.key = key
            spare.ctype = spec.type  # type: ignore[assignment]
            return spare
        return None

    def static_specs(self) -> dict[str, ChildSpec]:
        return {c.spec.id: c.spec for c in self.state.children if not c.dynamic}

    # ---- spares -----------------------------------------------------------------------------

    def start_zygote(self) -> None:
        why = sibling_support()
        if why is not None:
            # The operator's choice needs no line per supervisor; a platform without it does.
            level = logging.DEBUG if "PRISMATIC_ZYGOTE" in why else logging.INFO
            log.log(level, "supervisor %s forks its own spares (no zygote: %s)", self.name(), why)
            self.use_zygote = False
            return
        self.zygote_specs = self.static_specs()
        specs = self.zygote_specs
        # Woken from dormancy: what the restart that woke it wrote, it writes again at the
        # next one; copied back now, not then (see _working_set).
        runs = exclusive_runs() if self.woken else []
        prepare = may_become_a_worker(specs)
        try:
            self.zygote = Zygote(lambda channel: spare_main(channel, specs, self.path,
                                                            self.node, prepare),
                                 "prism:zygote")
        except OSError as exc:  # the process limit: go on forking children directly
            self.fork_failed("its zygote", exc)
            return
        self.woken = False
        populate_write(runs)
        self.sel.register(self.zygote.sock, selectors.EVENT_READ, ("on_zygote", None))
        self.sel.register(self.zygote.pidfd, selectors.EVENT_READ, ("on_zygote_exit", None))
        self.zygote_stale = False

    def request_spares(self) -> None:
        """Keep one spare waiting, two while starts follow one another (the next is made
        while the current one runs ``init``)."""
        if self.spares_after:
            if time.monotonic() < self.spares_after:
                return  # the last clone failed: not again before the backoff is over
            self.spares_after = 0.0
        zygote = self.zygote
        if zygote is None or self.exit_reason is not None or self.dormant \
                or self.state.phase in (Phase.STOPPING, Phase.STOPPED):
            return
        if self.starting is not None or self.parked is not None:
            job = self.state.job
            more = job is not None and any(isinstance(s, StartStep) for s in job.steps)
            # A lone restart gets its successor spare once it is done: made now, it would
            # take a CPU from the replacement's init.
            want = _AHEAD if more else 0
        else:
            want = 1
        while len(self.spares) + len(zygote.pending) < want:
            if not zygote.request():
                return  # the zygote is dead; its pidfd reports it

    def on_zygote(self, _: Any) -> None:
        if self.zygote is None:
            return  # dropped earlier in this same batch of events (its death came first)
        self.adopt(self.zygote.answers(), self.zygote_specs)

    def adopt(self, answers: list[tuple[Channel, int]], specs: dict[str, ChildSpec]) -> None:
        for channel, pid in answers:
            if pid < 0:
                channel.close()
                if self.spares_after:
                    continue  # one line per backoff: the others failed alike
                lo, hi = _CLONE_BACKOFF_S
                self.clone_backoff = min(max(lo, self.clone_backoff * 2), hi)
                self.spares_after = time.monotonic() + self.clone_backoff
                log.error("supervisor %s: its zygote could not make a spare: %s (children "
                          "are forked directly; asking again in %.1f s)", self.name(),
                          os.strerror(-pid), self.clone_backoff)
                self.trouble(Trouble.ZYGOTE_SPARE_FAILED)
                continue
            self.clone_backoff = 0.0
            self.add_spare(pid, channel, specs)
        if self.parked is not None and (self.spares or not self.zygote
                                        or not self.zygote.pending):
            key, spec = self.parked
            self.parked = None
            self.start_proc(key, spec)

    def fork_failed(self, what: str, exc: OSError) -> None:
        """A fork of a spare or of the zygote failed (EAGAIN: the process limit, a pids
        cgroup): children are forked directly until the backoff is over, then it is tried
        again; one log line each time. The supervisor itself must not die of it."""
        lo, hi = _CLONE_BACKOFF_S
        self.clone_backoff = min(max(lo, self.clone_backoff * 2), hi)
        self.spares_after = time.monotonic() + self.clone_backoff
        log.error("supervisor %s could not fork %s: %s (children are forked directly; trying "
                  "again in %.1f s)", self.name(), what, exc.strerror or exc,
                  self.clone_backoff)
        self.trouble(Trouble.FORK_FAILED)

    def backing_off(self) -> bool:
        """A fork or clone for spares failed not long ago: not again yet."""
        return bool(self.spares_after) and time.monotonic() < self.spares_after

    def on_zygote_exit(self, _: Any) -> None:
        """The zygote died (it never exits by itself while we live): adopt what it answered,
        kill the spares it made but never answered for, and make a new one."""
        zygote = self.zygote
        if zygote is None:
            return  # already dropped (renewed) earlier in this batch
        answered = zygote.answers()
        self.drop_zygote()
        self.adopt(answered, self.zygote_specs)
        self.zygote_deaths += 1
        log.warning("supervisor %s: zygote %d died (%d so far)", self.name(), zygote.pid,
                    self.zygote_deaths)
        self.trouble(Trouble.ZYGOTE_DIED)
        self.sweep_orphans()  # the spares it made but never answered for
        if self.zygote_deaths >= _ZYGOTE_DEATHS_TOLERATED:
            log.error("supervisor %s: zygote died %d times; forking spares here from now on",
                      self.name(), self.zygote_deaths)
            self.trouble(Trouble.ZYGOTE_GIVEN_UP)
            self.use_zygote = False

    def detach_zygote(self) -> Zygote | None:
        """Stop watching the zygote and forget it; the caller closes or kills it."""
        zygote, self.zygote = self.zygote, None
        if zygote is not None:
            self.sel.unregister(zygote.sock)
            self.sel.unregister(zygote.pidfd)
        return zygote

    def drop_zygote(self) -> None:
        zygote = self.detach_zygote()
        if zygote is not None:
            zygote.kill()

    def wants_new_zygote(self) -> bool:
        return (self.use_spares and self.use_zygote and not self.dormant and self.idle()
                and (self.zygote is None or self.zygote_stale) and not self.backing_off())

    def renew_zygote(self) -> None:
        """Replace a zygote whose specs are out of date (or that died): its spares go too."""
        self.busy_at = time.monotonic()  # made now: kept for idle_limit from here
        self.let_spares_go()
        self.start_zygote()
        self.request_spares()

    def let_spares_go(self) -> None:
        """Stop the zygote in order (the spares it answered for are adopted) and kill every
        spare; the supervisor goes on without them."""
        zygote = self.detach_zygote()
        if zygote is not None:
            self.adopt(zygote.close(), self.zygote_specs)
            if zygote.hung:
                self.trouble(Trouble.ZYGOTE_HUNG)
        for spare in list(self.spares):
            self.kill_spare(spare)

    def idle(self) -> bool:
        return (self.state.job is None and self.exit_reason is None and self.parked is None
                and self.starting is None and self.state.phase is Phase.RUNNING)

    def wants_fork_spare(self) -> bool:
        """Without a zygote, the supervisor forks its one spare itself, when idle."""
        return (self.use_spares and not self.use_zygote and not self.dormant
                and not self.spares and self.idle() and not self.backing_off())

    # ---- dormancy ---------------------------------------------------------------------------

    def dormant_at(self) -> float:
        """When this supervisor lets its spare and zygote go, if nothing starts before
        (inf: never, or it has none to let go)."""
        if not (self.spares or self.zygote is not None):
            return float("inf")
        if self.dormant:  # spares forked for its first starts and left unused
            return 0.0 if self.idle() else float("inf")
        return self.busy_at + self.idle_limit

    def go_dormant(self) -> None:
        """Let the spares and the zygote go (the module doc says why); a start wakes it."""
        if not self.idle():
            self.busy_at = time.monotonic()  # busy now: counted again from its end
            return
        self.let_spares_go()
        self.dormant = True
        log.debug("supervisor %s: no start for %.0f s; spare and zygote let go", self.name(),
                  self.idle_limit)

    def wake(self) -> None:
        """A start: it forks directly if dormant; spares come back once it is done."""
        self.busy_at = time.monotonic()
        self.woken = self.woken or self.dormant
        self.dormant = False

    def fork_spare(self) -> None:
        self.busy_at = time.monotonic()  # made now: kept for idle_limit from here
        specs = self.static_specs()
        runs = exclusive_runs() if self.woken else []  # as for the zygote (start_zygote)
        if not self.fork_one_spare(specs, may_become_a_worker(specs)):
            return
        self.woken = False
        populate_write(runs)

    def fork_one_spare(self, specs: dict[str, ChildSpec], prepare: bool) -> bool:
        """Fork a spare that knows ``specs`` (``prepare``: ready to become a worker); False
        when the fork failed (logged and backed off by :meth:`fork_failed`)."""
        try:
            pid, mine = fork_with_channel(
                lambda theirs: spare_main(theirs, specs, self.path, self.node, prepare),
                "prism:spare")
        except OSError as exc:
            self.fork_failed("a spare", exc)
            return False
        self.add_spare(pid, mine, specs)
        return True

    def fork_first_children(self) -> None:
        """A small supervisor starting dormant: fork one process for each of its first
        starts (not a program's), before it decides on them (the module doc says why)."""
        specs = self.static_specs()
        for spec in specs.values():
            if not isinstance(spec.start, Program) and not self.fork_one_spare(specs, False):
                return

    def add_spare(self, pid: int, channel: Channel, specs: dict[str, ChildSpec]) -> None:
        proc = Proc(pid, channel, None, ChildType.WORKER)
        proc.specs = specs
        self.watch(proc)
        self.spares.append(proc)

    def kill_spare(self, spare: Proc) -> None:
        self.spares.remove(spare)
        send_signal(spare.pidfd, signal.SIGKILL)
        os.waitpid(spare.pid, 0)
        self.forget(spare)

    def sweep_orphans(self) -> None:
        """Kill and reap this process's children that are neither a child of the tree, nor
        the zygote, nor a spare in the making (the module doc says why every other one is an
        orphan). Never blocks: one killed now is reaped on the SIGCHLD of its death."""
        try:
            kids = child_pids(os.getpid())
        except OSError as exc:
            log.error("supervisor %s: cannot list its child processes to sweep orphans: %s",
                      self.name(), exc)
            self.trouble(Trouble.SWEEP_FAILED)
            return
        zygote = self.zygote.pid if self.zygote is not None else 0
        lender = self.lender.pid if self.lender is not None else 0
        # Usually every one is known (reaped through its pidfd): a dict lookup each, so a
        # supervisor of 1,000 children stopping them pays little for each SIGCHLD.
        unknown = [k for k in kids if k not in self.procs and k != zygote
                   and k not in self.probes and k != lender]
        if not unknown:
            return
        live = {*self.procs, *self.probes, zygote}
        killed = []
        for pid in unknown:
            try:
                group = os.getpgid(pid)
            except ProcessLookupError:
                continue
            if zygote and group == zygote:
                continue  # a spare in the making: the zygote answers for it
            try:
                if os.waitpid(pid, os.WNOHANG)[0] or group in live:
                    continue  # it had died: reaped now; or a live child's own (defensive)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except (ChildProcessError, ProcessLookupError):
                pass
        if killed:
            log.warning("supervisor %s: killed %d orphan process(es) of children that are "
                        "gone: %s", self.name(), len(killed),
                        ", ".join(f"{k} ({process_name(k) or '?'})" for k in killed[:5]))
            self.trouble(Trouble.ORPHANS_KILLED)

    def kill_spares(self) -> None:
        """On the way out: spares and the zygote go first (spares the zygote has not
        answered for die by PDEATHSIG with this process)."""
        for spare in list(self.spares):
            self.kill_spare(spare)
        self.drop_zygote()
        self.stop_lender()  # last: every child, lent ones too, is gone by now
