"""Restart intensity: OTP's ``add_restart/1`` as a pure function.

A supervisor may restart children at most ``intensity`` times in any window of ``period``
seconds. One deliberate difference from OTP: times are float seconds of the monotonic clock,
where OTP truncates to whole seconds, so the window is exact rather than rounded.
"""

from __future__ import annotations

__all__ = ["add_restart"]


def add_restart(restarts: tuple[float, ...], now: float, intensity: int,
                period: float) -> tuple[tuple[float, ...], bool]:
    """Record a restart at ``now``; return the restarts still in the window and whether the
    intensity is exceeded.

    ``restarts`` is newest first. Invariant of the result: every kept time ``t`` has
    ``now - t < period``, and exceeded is ``len(kept) > intensity``.
    """
    kept = [now]
    for t in restarts:
        if now - t < period:
            kept.append(t)
        else:
            break  # newest first: everything after this one is older still
    return tuple(kept), len(kept) > intensity
