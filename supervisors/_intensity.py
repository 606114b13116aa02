"""Restart intensity: OTP's ``add_restart/1`` as a pure function.

A supervisor may restart children at most ``intensity`` times in any window of ``period``
seconds. The window is OTP's, boundary included: ``supervisor.erl`` keeps every restart
``R`` with ``R >= Now - Period``, so a restart exactly ``period`` seconds ago still counts.
One deliberate difference from OTP: times are float seconds of the monotonic clock, where
OTP truncates to whole seconds (``erlang:monotonic_time(1)``), so the window is exact rather
than rounded.
"""

from __future__ import annotations

__all__ = ["add_restart"]


def add_restart(restarts: tuple[float, ...], now: float, intensity: int,
                period: float) -> tuple[tuple[float, ...], bool]:
    """Record a restart at ``now``; return the restarts still in the window and whether the
    intensity is exceeded.

    ``restarts`` is newest first. Invariant of the result: every kept time ``t`` has
    ``t >= now - period`` (OTP's threshold), and exceeded is ``len(kept) > intensity``.
    """
    threshold = now - period
    kept = [now]
    for t in restarts:
        if t >= threshold:
            kept.append(t)
        else:
            break  # newest first: everything after this one is older still
    return tuple(kept), len(kept) > intensity
