"""A small tmpfs as a node's data directory, for the disk-full scenario: a disk that fills
in seconds and can be emptied again, without touching any real filesystem. Needs root
(``mount``); :func:`tmpfs_unavailable` says why not where it cannot be made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .._errors import ChaosError

__all__ = ["tmpfs_unavailable", "open_tmpfs", "free_bytes"]


def _run(*cmd: str) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=10)
    except subprocess.CalledProcessError as exc:
        err = exc.stderr.decode(errors="replace").strip()
        raise ChaosError(f"{' '.join(cmd[:3])}: {err or exc}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ChaosError(f"{' '.join(cmd[:3])}: {exc}") from None


def tmpfs_unavailable() -> str | None:
    """Why a tmpfs cannot be mounted here (one line), or None if it can."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "no `mount` command"
    try:
        with tempfile.TemporaryDirectory(prefix="chaos-tmpfs-") as d, open_tmpfs(Path(d), 1 << 20):
            pass
    except ChaosError as exc:
        return f"cannot mount a tmpfs: {exc}"
    return None


@contextlib.contextmanager
def open_tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path`` (made if missing), unmounted on exit
    (lazily if still busy: a process of a killed node may hold a file a moment longer)."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    try:
        yield path
    finally:
        try:
            _run("umount", str(path))
        except ChaosError:
            _run("umount", "-l", str(path))


def free_bytes(path: Path) -> int:
    """What an unprivileged writer can still write under ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
