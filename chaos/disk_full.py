"""Disk full: the node's data directory on a small tmpfs, filled by clients emitting
acknowledged events, then given space again.

The runner mounts a 32 MiB tmpfs as the node's data directory (root; where it cannot, the
scenario is skipped with the reason). Two clients emit acknowledged ``chaos.diskfull``
events of 2 KiB each throughout (keys as in the durability scenario: never retried under
the same key). Each fault fills the disk: the runner takes all of the free space but
``HEADROOM`` with a ballast file, the clients' events fill the rest, the disk stays full
for ``FULL_S`` while they keep emitting, then the ballast is deleted.

Checks: the node survives a full disk and keeps answering (the probe, and the node still
running); every emit refused while the disk is full says so (``disk full``, an
``EventLogFullError``), not a timeout or an obscure error
(:func:`~._invariants.disk_full_reported`); emitting works again within the deadline once
space is freed; at the end every acknowledged event is in the log exactly once at its acked
seq (:func:`~._invariants.acked_events_intact`): an ack is never given for what the full
disk did not take.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._errors import ChaosError
from ._invariants import disk_full_reported
from ._schedule import Fault, arrivals, scenario_rng
from ._target import OwnedNode
from ._tmpfs import free_bytes
from .durability import Emitter, check_acked

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "disk-full"
SUMMARY = ("fills the node's data dir (a 32 MiB tmpfs) with acked events, then frees it; "
           "checks node survives, clear 'disk full' error, emits resume, no acked loss")
REQUIRES = frozenset({"node", "owned", "tmpfs"})

DISK_BYTES = 32 << 20  # the runner mounts a tmpfs of this size as the data directory
HEADROOM = 3 << 20  # what the ballast leaves for the events to fill
FULL_S = 0.5
TOPIC = "chaos.diskfull"
_CLIENTS = 2
_PAD = b"d" * 2048
_MAX_RATE = 0.5


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    rng = scenario_rng(seed, NAME)
    return [Fault(i + 1, round(t, 4), "disk_full", "node", f"headroom {HEADROOM >> 20} MiB")
            for i, t in enumerate(arrivals(rng, duration, min(rate, _MAX_RATE)))]


def _ballast(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if size > 0:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def _errors_since(emitters: list[Emitter], since: float, until: float) -> list[str]:
    return [e for em in emitters for t, e in list(em.errors) if since <= t <= until]


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    target = ctx.target
    if not isinstance(target, OwnedNode):
        raise ChaosError("the disk-full scenario needs a node the runner starts (--app)")
    disk = target.data_dir.parent
    stop_emitting = threading.Event()
    emitters = [Emitter(target.data_dir, i, stop_emitting, _PAD, TOPIC)
                for i in range(_CLIENTS)]
    for e in emitters:
        e.start()
    deadline_s = ctx.settings.deadline
    try:
        for fault in faults:
            if not ctx.wait_offset(fault.offset):
                break
            ballast = disk / "ballast"
            t0 = time.monotonic()
            _ballast(ballast, free_bytes(disk) - HEADROOM)
            while not _errors_since(emitters, t0, time.monotonic()) and \
                    time.monotonic() < t0 + deadline_s:
                time.sleep(0.02)
            ctx.injected(fault)
            filled = bool(_errors_since(emitters, t0, time.monotonic()))
            time.sleep(FULL_S)  # full: the clients keep emitting, and keep being refused
            ctx.tally.check("node_alive", None if target.running() else
                            f"the node exited ({target.exit_code()}) on a full disk")
            freed = time.monotonic()
            errors = _errors_since(emitters, t0, freed)
            ballast.unlink()
            while max(e.last_ack for e in emitters) <= freed and \
                    time.monotonic() < freed + deadline_s:
                time.sleep(0.01)
            recovered = max(e.last_ack for e in emitters)
            recovery_s = recovered - freed if recovered > freed else None
            ctx.tally.check("disk_full_reported", disk_full_reported(
                errors if filled else [], recovery_s, deadline_s))
            if recovery_s is not None:
                ctx.tally.convergence_s.append(recovery_s)
            sample = errors[0] if errors else "none"
            ctx.tally.notes.append(f"{fault.describe()}: full {time.monotonic() - t0:.1f}s "
                                   f"after the ballast, {len(errors)} emits refused "
                                   f"(e.g. {sample[:160]!r})")
        ctx.wait_offset(ctx.settings.duration)
    finally:
        stop_emitting.set()
        for e in emitters:
            e.join(timeout=40)
    check_acked(ctx, emitters, TOPIC)
