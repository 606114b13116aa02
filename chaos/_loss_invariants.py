"""The invariants of a node under load, killed or short of a resource: nothing is lost
silently, and what a flood costs stays bounded.

Each returns ``None`` when it held or one line saying how it was broken, from what the
runner observed (see :mod:`._invariants`, the catalogue of all of them, which re-exports
these): acknowledged emits against the event log, casts and events against what arrived
and what the node counted, memory against its bound, a full disk's refusals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "acked_events_intact", "flood_accounted", "memory_bounded", "subscriber_flood_accounted",
    "drops_counted_exactly", "memory_cap_enforced", "disk_full_reported",
]


def acked_events_intact(acked: Mapping[str, int],
                        logged: Sequence[tuple[str, int]]) -> str | None:
    """``acked`` maps each acknowledged event's key to the seq its ack returned; ``logged``
    is every (key, seq) the log holds for the run. Each acked key must be logged once at
    its seq; an unacknowledged emit may or may not be there (the node died before the ack)
    but never twice."""
    seqs: dict[str, list[int]] = {}
    for key, seq in logged:
        seqs.setdefault(key, []).append(seq)
    missing = [k for k in acked if k not in seqs]
    duplicated = [k for k, s in seqs.items() if len(s) > 1]
    moved = [k for k, seq in acked.items() if k in seqs and seqs[k][0] != seq]
    problems = []
    if missing:
        problems.append(f"{len(missing)} acked event(s) missing (e.g. {sorted(missing)[:3]})")
    if duplicated:
        problems.append(f"{len(duplicated)} event(s) logged more than once "
                        f"(e.g. {sorted(duplicated)[:3]})")
    if moved:
        problems.append(f"{len(moved)} acked event(s) logged at another seq than acked "
                        f"(e.g. {sorted(moved)[:3]})")
    return "; ".join(problems) or None


def flood_accounted(accepted: int, refused: int, other: int, handled: int,
                    refusals_counted: float, wanted_refusals: int) -> str | None:
    """A flooded mailbox pushed back (``MailboxFull``) instead of queueing without end;
    every cast handed over was handled, none lost; each refusal counted by the node as a
    ``mailbox_full`` dead letter; no cast ended any other way."""
    problems = []
    if refused < wanted_refusals:
        problems.append(f"only {refused} of {wanted_refusals} refusals after {accepted} "
                        f"casts: no back-pressure")
    if handled != accepted:
        problems.append(f"{accepted} casts handed over, {handled} handled")
    if refusals_counted != refused:
        problems.append(f"{refused} casts refused, {refusals_counted:.0f} counted as "
                        f"mailbox_full dead letters")
    if other:
        problems.append(f"{other} casts ended otherwise (dead letter or error)")
    return "; ".join(problems) or None


def memory_bounded(before: int, peak: int, bound: int) -> str | None:
    """A process's private memory grew by less than ``bound`` bytes under the fault."""
    if peak - before >= bound:
        return f"memory grew by {(peak - before) >> 20} MiB (bound {bound >> 20} MiB)"
    return None


def subscriber_flood_accounted(published: int, received: int, out_of_order: int,
                               dropped_counted: float) -> str | None:
    """Every event published to a flooded subscriber either reached it, in publish order,
    or was counted as dropped (by the forwarder or the subscriber): none lost silently."""
    problems = []
    if received + dropped_counted < published:
        problems.append(f"{published - received - dropped_counted:.0f} of {published} "
                        f"events lost without being counted ({received} received, "
                        f"{dropped_counted:.0f} counted dropped)")
    if received > published:
        problems.append(f"{received} events received for {published} published")
    if out_of_order:
        problems.append(f"{out_of_order} events out of publish order")
    return "; ".join(problems) or None


def drops_counted_exactly(published: int, received: int, lost: int, gaps: int) -> str | None:
    """A subscriber the node dropped events for (it fell its high-water mark behind)
    counted exactly the events it lost: ``received`` + ``lost`` is every event published,
    and ``lost`` is what the subscriber itself finds missing from the payloads' sequence
    (``gaps``)."""
    problems = []
    if received + lost != published:
        problems.append(f"{received} received + {lost} counted lost != {published} published")
    if gaps != lost:
        problems.append(f"{gaps} events missing from the sequence, {lost} counted lost")
    return "; ".join(problems) or None


def memory_cap_enforced(reason: str | None, oom_kills: int, peak: int | None,
                        limit: int) -> str | None:
    """A worker that allocates past its cgroup's memory cap is SIGKILLed by the kernel's
    OOM killer (reported ``killed``, counted as an ``oom_kill`` of its cgroup), and the
    cgroup never held more than the cap."""
    problems = []
    if reason != "killed":
        problems.append(f"the worker over its memory cap ended {reason or 'not at all'!s}, "
                        f"not killed")
    if oom_kills < 1:
        problems.append("its cgroup counts no OOM kill")
    if peak is not None and peak > limit:
        problems.append(f"its cgroup held {peak >> 20} MiB, over the {limit >> 20} MiB cap")
    return "; ".join(problems) or None


def disk_full_reported(errors: Sequence[str], recovered_s: float | None,
                       deadline_s: float) -> str | None:
    """While the disk under the event log was full, emits were refused (it did fill) and
    every refusal said so (``disk full``), none a timeout or another error; once space was
    freed an emit was acknowledged again within ``deadline_s`` (``recovered_s``: the time
    to the first ack after the space came back, None if none came)."""
    problems = []
    if not errors:
        problems.append("no emit was refused: the disk never filled")
    unclear = [e for e in errors if "disk full" not in e]
    if unclear:
        problems.append(f"{len(unclear)} of {len(errors)} refusals did not say the disk is "
                        f"full, e.g. {unclear[0][:200]!r}")
    if recovered_s is None:
        problems.append(f"no emit acknowledged within {deadline_s:.0f}s after space was freed")
    return "; ".join(problems) or None
