"""Property tests of ``add_restart``: OTP's restart intensity (``add_restart/1``), pure.

A supervisor may restart at most ``intensity`` times in any ``period`` seconds; the
``(intensity + 1)``-th restart within the window exceeds it. The window is OTP's, written
down here from ``supervisor.erl`` rather than from the code under test::

    add_restart(Restarts0, Now, Period) ->
        Threshold = Now - Period,
        Restarts1 = lists:takewhile(fun (R) -> R >= Threshold end, Restarts0),
        [Now | Restarts1].

so a restart exactly ``period`` seconds before ``now`` is still inside the window.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prismatic.supervisors import add_restart

intensities = st.integers(min_value=0, max_value=6)
periods = st.one_of(st.integers(min_value=1, max_value=20).map(float),
                    st.floats(min_value=0.001, max_value=100.0, allow_nan=False,
                              allow_infinity=False))
gaps = st.one_of(st.integers(min_value=0, max_value=10).map(float),
                 st.floats(min_value=0.0, max_value=30.0, allow_nan=False,
                           allow_infinity=False))


def times_from(start: float, deltas: list[float]) -> list[float]:
    """A non-decreasing sequence of monotonic times."""
    out, t = [], start
    for d in deltas:
        t += d
        out.append(t)
    return out


def in_otp_window(t: float, now: float, period: float) -> bool:
    """OTP's test: ``R >= Threshold`` with ``Threshold = Now - Period``."""
    threshold = now - period
    return t >= threshold


def reference(history: list[float], now: float, period: float) -> tuple[float, ...]:
    """Brute force: every restart so far (oldest first) plus ``now``, keep those inside
    OTP's window, newest first."""
    return tuple(t for t in reversed([*history, now]) if in_otp_window(t, now, period))


# ---- single call ----------------------------------------------------------------------------

@given(start=st.floats(min_value=0.0, max_value=1e6), deltas=st.lists(gaps, max_size=12),
       extra=gaps, intensity=intensities, period=periods)
def test_single_call_contract(start, deltas, extra, intensity, period):
    history = times_from(start, deltas)  # oldest first
    restarts = tuple(reversed(history))  # add_restart takes newest first
    now = (history[-1] if history else start) + extra
    kept, exceeded = add_restart(restarts, now, intensity, period)
    assert kept[0] == now  # the new restart is recorded, newest first
    assert all(in_otp_window(t, now, period) for t in kept)  # every kept one is inside
    assert list(kept) == sorted(kept, reverse=True)  # newest first
    assert kept[1:] == restarts[:len(kept) - 1]  # a prefix of the old ones: nothing reordered
    # nothing inside the window was dropped
    dropped = restarts[len(kept) - 1:]
    assert all(not in_otp_window(t, now, period) for t in dropped)
    assert exceeded == (len(kept) > intensity)
    assert kept == reference(history, now, period)


@given(restarts=st.lists(st.floats(min_value=0, max_value=100), max_size=8),
       intensity=intensities, period=periods)
def test_pure(restarts, intensity, period):
    restarts = tuple(sorted(restarts, reverse=True))
    now = (restarts[0] if restarts else 0.0) + 1.0
    a = add_restart(restarts, now, intensity, period)
    b = add_restart(restarts, now, intensity, period)
    assert a == b
    assert isinstance(a[0], tuple)


# ---- sequences of restarts ------------------------------------------------------------------

@settings(max_examples=300)
@given(start=st.floats(min_value=0.0, max_value=1e4), deltas=st.lists(gaps, min_size=1,
                                                                       max_size=40),
       intensity=intensities, period=periods)
def test_monotone_sequence_matches_brute_force(start, deltas, intensity, period):
    """Folding add_restart over a monotone sequence of restarts gives, at every step, exactly
    the brute-force window over the whole history, and exceeds iff that window holds more
    than ``intensity`` restarts."""
    times = times_from(start, deltas)
    restarts: tuple[float, ...] = ()
    for n, now in enumerate(times):
        restarts, exceeded = add_restart(restarts, now, intensity, period)
        expected = reference(times[:n], now, period)
        assert restarts == expected
        assert exceeded == (len(expected) > intensity)
        assert len(restarts) <= n + 1


@given(start=st.floats(min_value=0.0, max_value=1e4), intensity=intensities,
       period=st.integers(min_value=1, max_value=20).map(float),
       n=st.integers(min_value=1, max_value=12))
def test_burst_at_one_instant(start, intensity, period, n):
    """n restarts at the same instant: the (intensity+1)-th one exceeds, not earlier."""
    restarts: tuple[float, ...] = ()
    first_exceeded = None
    for k in range(1, n + 1):
        restarts, exceeded = add_restart(restarts, start, intensity, period)
        assert len(restarts) == k
        if exceeded and first_exceeded is None:
            first_exceeded = k
    if n > intensity:
        assert first_exceeded == intensity + 1
    else:
        assert first_exceeded is None


@given(intensity=intensities, period=st.integers(min_value=1, max_value=20).map(float),
       n=st.integers(min_value=1, max_value=30))
def test_evenly_spaced_slower_than_period_never_exceeds(intensity, period, n):
    """Restarts spaced by more than ``period`` each see an empty window: only intensity 0
    (no restart allowed at all) is ever exceeded."""
    restarts: tuple[float, ...] = ()
    for k in range(n):
        now = k * (period + 0.5)
        restarts, exceeded = add_restart(restarts, now, intensity, period)
        assert restarts == (now,)
        assert exceeded == (intensity == 0)


@given(intensity=intensities, period=st.integers(min_value=1, max_value=20).map(float),
       n=st.integers(min_value=2, max_value=30))
def test_evenly_spaced_by_exactly_period_keeps_two(intensity, period, n):
    """OTP's boundary: the restart exactly ``period`` ago is still in the window (the one
    before it is not), so each restart after the first sees two."""
    restarts: tuple[float, ...] = ()
    for k in range(n):
        restarts, exceeded = add_restart(restarts, k * period, intensity, period)
        want = (k * period,) if k == 0 else (k * period, (k - 1) * period)
        assert restarts == want
        assert exceeded == (len(want) > intensity)


@given(restarts=st.lists(st.floats(min_value=0, max_value=50), max_size=10),
       extra=gaps, intensity=intensities, period=periods)
def test_monotone_in_intensity(restarts, extra, intensity, period):
    """Raising the intensity never turns a tolerated restart into an exceeded one."""
    restarts = tuple(sorted(restarts, reverse=True))
    now = (restarts[0] if restarts else 0.0) + extra
    _, lo = add_restart(restarts, now, intensity, period)
    _, hi = add_restart(restarts, now, intensity + 1, period)
    assert not (hi and not lo)


# ---- examples -------------------------------------------------------------------------------

def test_otp_default_second_restart_within_period_exceeds():
    # OTP's defaults: intensity 1, period 5 s.
    r, exceeded = add_restart((), 100.0, 1, 5.0)
    assert (r, exceeded) == ((100.0,), False)
    r, exceeded = add_restart(r, 104.9, 1, 5.0)
    assert (r, exceeded) == ((104.9, 100.0), True)


def test_otp_default_second_restart_exactly_period_later_exceeds():
    # OTP keeps R >= Now - Period: 100.0 >= 105.0 - 5.0, so two restarts in the window.
    r, _ = add_restart((), 100.0, 1, 5.0)
    r, exceeded = add_restart(r, 105.0, 1, 5.0)
    assert (r, exceeded) == ((105.0, 100.0), True)


def test_otp_default_second_restart_after_period_is_fine():
    r, _ = add_restart((), 100.0, 1, 5.0)
    r, exceeded = add_restart(r, 105.25, 1, 5.0)  # just past the window
    assert (r, exceeded) == ((105.25,), False)
    r, exceeded = add_restart(r, 111.0, 1, 5.0)
    assert (r, exceeded) == ((111.0,), False)


def test_intensity_zero_first_restart_exceeds():
    assert add_restart((), 0.0, 0, 5.0) == ((0.0,), True)


def test_three_in_ten():
    r: tuple[float, ...] = ()
    results = []
    for t in (0.0, 3.0, 6.0, 9.0, 13.5):
        r, exceeded = add_restart(r, t, 3, 10.0)
        results.append(exceeded)
    # 0,3,6,9 are four restarts within 10 s -> the fourth exceeds; at 13.5 only 6,9,13.5 remain
    assert results == [False, False, False, True, False]
    assert r == (13.5, 9.0, 6.0)


def test_old_entries_are_pruned_even_if_not_exceeded():
    r = (10.0, 9.0, 1.0, 0.5)
    kept, exceeded = add_restart(r, 12.0, 5, 5.0)
    assert kept == (12.0, 10.0, 9.0)
    assert not exceeded
