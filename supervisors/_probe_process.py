"""The probe process: a program's readiness or liveness check, tried with blocking calls.

An ``http`` check, a ``file`` readiness check, or a ``port`` check on a host name (whose
lookup would block) cannot run in the supervisor's loop: the supervisor forks a probe, a
child of the tree (PDEATHSIG, own group) that it watches by pidfd like a child. For
readiness the probe tries until the check passes (:func:`probe_main`, 2 ms growing to
20 ms between tries) and exits 0; for liveness it tries once (:func:`probe_once`, see
:mod:`._liveness`).
"""

from __future__ import annotations

import os
import socket
import time

from .._program import FileCheck, HttpCheck, PortCheck, ReadyCheck

__all__ = ["probe_main", "probe_once"]


def _passes(check: ReadyCheck, cwd: str | None) -> bool:
    if isinstance(check, PortCheck):
        try:
            socket.create_connection((check.host, check.port), timeout=1.0).close()
            return True
        except OSError:
            return False
    if isinstance(check, HttpCheck):
        import urllib.error  # noqa: PLC0415 - only a probe process needs it
        import urllib.request  # noqa: PLC0415

        try:
            with urllib.request.urlopen(check.url, timeout=2.0) as answer:
                return 200 <= int(answer.status) < 300
        except (OSError, urllib.error.URLError, ValueError):
            return False
    if isinstance(check, FileCheck):
        return os.path.exists(os.path.join(cwd or ".", check.path))
    raise TypeError(f"not a probe check: {check!r}")


def probe_main(check: ReadyCheck, cwd: str | None) -> int:
    """Runs in a probe process: try ``check`` until it passes, then exit 0."""
    delay = 0.002
    while not _passes(check, cwd):
        time.sleep(delay)
        delay = min(delay * 1.5, 0.02)  # a refused connect or a stat costs microseconds
    return 0


def probe_once(check: ReadyCheck, cwd: str | None) -> int:
    """Runs in a liveness probe process: one try; exit 0 if it passes."""
    return 0 if _passes(check, cwd) else 1

