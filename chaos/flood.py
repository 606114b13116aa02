"""Flood: a mailbox flooded past its limit.

Each fault adds a worker under the root (``chaos_flood_<n>``, temporary,
:class:`~._apps.Slowpoke`: a 50-message mailbox, 10 ms per cast) and casts 16 KiB messages
at it as fast as it takes them, each with a 2 ms timeout, until ``REFUSALS`` casts have been
refused (``MailboxFull``). The queue stops reading at its limit, the kernel's socket buffers
fill, and a sender is held back, then refused once its timeout passes: back-pressure.

Checks (:func:`~._invariants.flood_accounted`): every cast was either handed over or
refused with ``MailboxFull``, none silently lost: once the worker drained its mailbox it
handled exactly the casts that were handed over; the node counted each refusal as a dead
letter (``prismatic_dead_letters{reason="mailbox_full"}``); the flooded worker's private
memory grew by less than ``MEMORY_BOUND`` (the queue is bounded). The subscriber side is
``subscriber-flood`` (:mod:`.subscriber_flood`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .._errors import MailboxFull, PrismaticError
from .._process import uss_bytes
from ._invariants import flood_accounted, memory_bounded
from ._observe import metric_sum
from ._schedule import Fault, arrivals, scenario_rng

if TYPE_CHECKING:
    from ._runner import ScenarioContext
    from ._shape import TreeShape

NAME = "flood"
SUMMARY = ("floods a 50-message mailbox with casts; checks back-pressure (MailboxFull), "
           "every cast handled or refused and counted, memory bounded")
REQUIRES = frozenset({"node"})  # any single node, owned or not

REFUSALS = 5
MEMORY_BOUND = 32 << 20
_PAYLOAD = b"x" * 16384
_CAST_TIMEOUT_S = 0.002
_MAX_CASTS = 5_000
_MAX_RATE = 1.0


def plan(seed: int, duration: float, rate: float, shape: TreeShape) -> list[Fault]:
    rng = scenario_rng(seed, NAME)
    return [Fault(i + 1, round(t, 4), "flood", f"chaos_flood_{i + 1}", REFUSALS)
            for i, t in enumerate(arrivals(rng, duration, min(rate, _MAX_RATE)))]


def _mailbox_full_letters(ctx: ScenarioContext) -> float:
    return metric_sum(ctx.conn.metrics(), "prismatic_dead_letters_total",
                      'reason="mailbox_full"')


def run(ctx: ScenarioContext, faults: list[Fault]) -> None:
    conn = ctx.conn
    for fault in faults:
        if not ctx.wait_offset(fault.offset):
            break
        name = fault.target
        pid = ctx.start_subject(name, "Slowpoke", (name,),
                                lambda n: conn.call(n, "handled", timeout=5.0) == 0)
        if pid is None:
            continue
        letters_before = _mailbox_full_letters(ctx)
        memory_before = uss_bytes(pid)
        accepted = refused = other = 0
        while refused < REFUSALS and accepted + refused + other < _MAX_CASTS:
            try:
                if conn.cast(name, _PAYLOAD, timeout=_CAST_TIMEOUT_S):
                    accepted += 1
                else:
                    other += 1
            except MailboxFull:
                refused += 1
            except PrismaticError:
                other += 1
        ctx.injected(fault)
        memory_peak = uss_bytes(pid)
        handled = -1
        deadline = time.monotonic() + ctx.settings.deadline
        while time.monotonic() < deadline:  # until the mailbox is drained
            handled = conn.call(name, "handled", timeout=5.0)
            if handled >= accepted:
                break
            time.sleep(0.02)
        letters = _mailbox_full_letters(ctx) - letters_before
        deadline = time.monotonic() + 2.0
        while letters < refused and time.monotonic() < deadline:  # notes reach the hub async
            time.sleep(0.02)
            letters = _mailbox_full_letters(ctx) - letters_before
        ctx.tally.check("flood_accounted", flood_accounted(
            accepted, refused, other, handled, letters, REFUSALS))
        ctx.tally.check("memory_bounded", memory_bounded(memory_before, memory_peak,
                                                         MEMORY_BOUND))
        ctx.tally.notes.append(f"{name}: {accepted} casts handed over, {refused} refused "
                               f"(MailboxFull), worker memory {memory_before >> 20} -> "
                               f"{memory_peak >> 20} MiB")
        try:
            conn.terminate_child("", name)
        except PrismaticError as exc:
            ctx.tally.check("flood_cleanup", f"terminate {name}: {exc}")
