"""The program-children half of :class:`~._runtime.SupervisorRuntime` (a mixin, as
:class:`~._procs.SpareKeeping` is): starting a program child, reading its output, and
carrying its readiness check to ``Started``. What each step does to the program, and why
the checks run where they do, is :mod:`._program_run`'s doc.
"""

from __future__ import annotations

import heapq
import logging
import os
import selectors
import signal
import time
from typing import Any

import msgspec

from .._childspec import ChildType
from .._exit import reason_from_exception
from .._nodeinfo import current
from .._process import kill_group, send_signal
from .._program import Program
from ..transports._channel import open_channel_pair
from ._events import Started
from ._logfile import (
    WORKER_LOG_CHECK_S, WORKER_LOG_KEEP, WORKER_LOG_MAX_BYTES, copy_truncate, log_file,
)
from ._procs import Proc, fork_with_channel
from ._program_exec import exec_program, own_comm, shim_path, spawn_program
from ._program_run import ProgramRun

__all__ = ["ProgramKeeping"]

log = logging.getLogger(__name__)


class ProgramKeeping:
    """Works on the runtime's selector, process table and ``starting`` child."""

    sel: selectors.BaseSelector
    procs: dict[int, Proc]
    probes: dict[int, Proc]
    starting: Proc | None
    path: tuple[str, ...]
    alive_timers: list[tuple[float, int, int]]  # (due, pid, generation): liveness rounds
    log_check_at: float
    # each worker's log file by child key, as last checked (replaced, never changed in place)
    _worker_log_files: dict[str, str] = {}

    def name(self) -> str:
        raise NotImplementedError

    def watch(self, proc: Proc) -> None:
        raise NotImplementedError

    def feed(self, event: Any) -> None:
        raise NotImplementedError

    def fork_program(self, key: str, program: Program, args: tuple[Any, ...]) -> Proc:
        path = (*self.path, key)
        if args:  # a child's args (a pool's per-child args) follow the program's argv
            program = msgspec.structs.replace(program,
                                              argv=(*program.argv, *map(str, args)))
        run = ProgramRun(program, path)
        try:
            pid = spawn_program(program, run.out_w, run.err_w, run.notify_address)
            if pid is None:
                try:
                    pid, mine = fork_with_channel(
                        lambda theirs: exec_program(program, theirs, run.out_w, run.err_w,
                                                    run.notify_address),
                        "prism:" + key, keep=run.child_fds())
                except OSError:
                    run.close()  # no program: its pipes, checks and log go (its ends below)
                    raise
            else:  # setpriv exec'd: the channel's EOF (theirs closed), then the program's comm
                mine, theirs = open_channel_pair()
                theirs.close()
                shim = os.path.basename(shim_path())[:15].encode()  # a comm: 15 bytes
                if os.path.basename(program.argv[0])[:15].encode() != shim:  # else: setpriv's
                    run.shim = (shim, own_comm())
        finally:
            run.forked()
        proc = Proc(pid, mine, key, ChildType.WORKER)
        proc.program = run
        self.watch(proc)
        self.sel.register(run.out_r, selectors.EVENT_READ, ("on_output", (proc, run.out_r)))
        self.sel.register(run.err_r, selectors.EVENT_READ, ("on_output", (proc, run.err_r)))
        if run.notify is not None:
            self.sel.register(run.notify, selectors.EVENT_READ, ("on_notify", proc))
        return proc

    def on_output(self, what: tuple[Proc, int]) -> None:
        proc, fd = what
        run = proc.program
        if run is None or fd not in run.open_fds:
            return  # its program was forgotten earlier in this batch
        ready, eof = run.read(fd)  # one chunk per event: a loud program cannot starve others
        if eof:
            self.sel.unregister(fd)
            os.close(fd)
        if ready:
            self.program_ready(proc)

    def on_notify(self, proc: Proc) -> None:
        if proc.program is not None and proc.program.notified_ready():
            self.program_ready(proc)

    def on_probe(self, proc: Proc) -> None:
        run = proc.program
        assert run is not None
        self.sel.unregister(run.probe_fd)
        self.probes.pop(run.probe_pid, None)
        if run.probe_passed():
            self.program_ready(proc)
        else:
            log.error("supervisor %s: the readiness probe of %r died; the start fails at its "
                      "timeout", self.name(), proc.key)

    def program_exec_done(self, proc: Proc) -> None:
        """A program child's channel closed without a reason: exec succeeded (for a program
        spawned through setpriv, setpriv's; the program's is looked for until it comes)."""
        run = proc.program
        assert run is not None
        if run.exec_done or proc is not self.starting:
            return
        if not run.execed(proc.pid):
            run.exec_retry()
            return
        run.retry_at = 0.0
        run.exec_done = True
        if run.program.ready is None:
            self.program_ready(proc)
        elif run.checks_port_here():
            self.try_port(proc)
        elif run.needs_probe():
            try:
                fd = run.start_probe()
            except OSError as exc:  # the process limit: the start cannot be checked
                log.error("supervisor %s: child %r: cannot fork its readiness probe: %s; "
                          "killing it", self.name(), proc.key, exc)
                proc.reason = reason_from_exception(exc)  # a start failure, at its exit
                self.end_program_checks(run)
                send_signal(proc.pidfd, signal.SIGKILL)
                kill_group(proc.pid)
                return
            self.probes[run.probe_pid] = proc
            self.sel.register(fd, selectors.EVENT_READ, ("on_probe", proc))

    def retry_check(self, proc: Proc) -> None:
        """The starting program's timer: look for its exec again, or retry its port."""
        run = proc.program
        assert run is not None
        if run.exec_done:
            self.try_port(proc)
        else:
            self.program_exec_done(proc)

    def try_port(self, proc: Proc) -> None:
        run = proc.program
        assert run is not None
        run.retry_at = 0.0
        outcome = run.connect()
        if outcome is True:
            self.program_ready(proc)
        elif outcome is not False:
            self.sel.register(outcome, selectors.EVENT_WRITE, ("on_connect", proc))

    def on_connect(self, proc: Proc) -> None:
        run = proc.program
        assert run is not None and run.conn is not None
        self.sel.unregister(run.conn)
        if run.connected():
            self.program_ready(proc)

    def program_ready(self, proc: Proc) -> None:
        run = proc.program
        assert run is not None
        self.end_program_checks(run)
        if proc is self.starting:
            proc.ready = True
            self.starting = None
            if run.liveness is not None:
                self.alive_after(proc, run.liveness.every)
            self.feed(Started(proc.key, proc.pid, time.monotonic()))  # type: ignore[arg-type]

    # ---- liveness (see _liveness) -----------------------------------------------------------

    def alive_after(self, proc: Proc, delay: float) -> None:
        live = proc.program.liveness  # type: ignore[union-attr]
        assert live is not None
        live.gen += 1
        heapq.heappush(self.alive_timers, (time.monotonic() + delay, proc.pid, live.gen))

    def fire_alive(self, now: float) -> None:
        while self.alive_timers and self.alive_timers[0][0] <= now:
            _, pid, gen = heapq.heappop(self.alive_timers)
            proc = self.procs.get(pid)
            run = proc.program if proc is not None else None
            live = run.liveness if run is not None else None
            if proc is None or live is None or live.gen != gen or proc.reason is not None \
                    or run.stopping:  # type: ignore[union-attr]
                continue  # gone, being stopped, or a stale timer
            if live.busy:  # no answer by the round's deadline
                self.end_alive_round(proc)
                self.alive_outcome(proc, False)
                continue
            try:
                outcome = live.begin()
            except OSError as exc:  # the process limit: this round is not judged
                live.busy = False
                log.error("supervisor %s: child %r: cannot fork its liveness probe: %s; "
                          "next round in %.1f s", self.name(), proc.key, exc, live.every)
                self.alive_after(proc, live.every)
                continue
            if isinstance(outcome, bool):
                self.alive_outcome(proc, outcome)
                continue
            if live.probe_pid:
                self.probes[live.probe_pid] = proc
            self.sel.register(outcome, selectors.EVENT_READ if isinstance(outcome, int)
                              else selectors.EVENT_WRITE, ("on_alive", proc))
            self.alive_after(proc, live.round_time())

    def on_alive(self, proc: Proc) -> None:
        live = proc.program.liveness  # type: ignore[union-attr]
        assert live is not None
        for fd in live.watched():
            self.sel.unregister(fd)
        self.probes.pop(live.probe_pid, None)
        self.alive_outcome(proc, live.finish())

    def end_alive_round(self, proc: Proc) -> None:
        live = proc.program.liveness  # type: ignore[union-attr]
        if live is None:
            return
        for fd in live.watched():
            self.sel.unregister(fd)
        self.probes.pop(live.probe_pid, None)
        live.abandon()

    def alive_outcome(self, proc: Proc, ok: bool) -> None:
        live = proc.program.liveness  # type: ignore[union-attr]
        assert live is not None
        if not live.outcome(ok):
            self.alive_after(proc, live.every)
            return
        proc.reason = live.reason()
        log.error("supervisor %s: child %r: %s; killing it", self.name(), proc.key,
                  proc.reason.message)  # type: ignore[union-attr]
        send_signal(proc.pidfd, signal.SIGKILL)
        kill_group(proc.pid)

    # ---- the workers' log files (see _logfile) -------------------------------------------

    def check_worker_logs(self, now: float) -> None:
        """Rotate a worker's log past its size (the worker appends to it and never rotates);
        look again in WORKER_LOG_CHECK_S while workers run."""
        info = current()
        workers = [p.key for p in self.procs.values() if p.program is None and p.ready
                   and p.ctype is ChildType.WORKER and p.key is not None]
        self.log_check_at = now + WORKER_LOG_CHECK_S if workers else 0.0
        if info is None:
            return
        # Each file's name is worked out once (pathlib: ~40 us a name, most of a 5,000-worker
        # supervisor's idle CPU); only the current workers' are kept.
        known = self._worker_log_files
        self._worker_log_files = files = {
            key: known.get(key) or log_file(info.data_dir, (*self.path, key))
            for key in workers}
        for file in files.values():
            # Most workers never print, so have no file: asked without the exception a failed
            # stat raises (each one costs a quiet supervisor copy-on-write pages).
            if not os.access(file, os.F_OK):
                continue
            try:
                big = os.stat(file).st_size > WORKER_LOG_MAX_BYTES
            except OSError:
                continue  # it printed nothing yet
            if big:
                copy_truncate(file, WORKER_LOG_KEEP)

    def end_program_checks(self, run: ProgramRun) -> None:
        self.probes.pop(run.probe_pid, None)
        for fd in run.end_checks():
            self.sel.unregister(fd)
        run.close_checks()
