"""A child's captured output: one log file per child in the data directory, rotated by size.

A program child's stdout and stderr are pipes its supervisor reads (never the node's
terminal); what arrives is appended, as it arrives, to ``<data_dir>/logs/<path>.log``,
where ``<path>`` is the child's tree path with ``.`` between ids (ids cannot contain a
dot, so the name maps back to one path). When a write would take the file past
``max_bytes`` it is rotated first: ``x.log`` becomes ``x.log.1``, ``x.log.1`` becomes
``x.log.2``, and so on; ``keep`` old files are kept (0: the file is truncated instead).

Back-pressure, not loss: the supervisor reads a pipe only as fast as it writes the file,
so a program that writes faster than the disk blocks in ``write`` (the pipe is full)
until the supervisor catches up; it is never blocked for longer than the disk takes. A
write that fails (disk full, the directory removed) drops that chunk: the bytes dropped
are counted and logged once per failure spell, the program is never stopped for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["RotatingLog", "log_path"]

log = logging.getLogger(__name__)


def log_path(data_dir: Path | str, path: tuple[str, ...] | str) -> Path:
    """Where the output of the child at ``path`` (a tuple of ids, or ``a/b``) goes."""
    parts = path if isinstance(path, tuple) else tuple(p for p in path.split("/") if p)
    return Path(data_dir) / "logs" / (".".join(parts) + ".log")


class RotatingLog:
    """An append-only file rotated by size; never raises on write."""

    def __init__(self, file: Path, max_bytes: int, keep: int) -> None:
        self.file = file
        self.max_bytes = max_bytes
        self.keep = keep
        self.dropped = 0
        self._failing = False
        self.fd = -1
        self.size = 0
        self._open()

    def _open(self) -> None:
        try:
            self.file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                              0o600)
            self.size = os.fstat(self.fd).st_size
        except OSError as exc:
            self.fd = -1
            self._fail(exc, 0)

    def write(self, data: bytes) -> None:
        if self.fd < 0:
            self._open()
            if self.fd < 0:
                self.dropped += len(data)
                return
        if self.size and self.size + len(data) > self.max_bytes:
            self._rotate()
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.size += n
            if self._failing:
                self._failing = False
                log.warning("child log %s: writing again (%d bytes dropped so far)",
                            self.file, self.dropped)
        except OSError as exc:
            self._fail(exc, len(view))

    def _fail(self, exc: OSError, lost: int) -> None:
        self.dropped += lost
        if not self._failing:
            self._failing = True
            log.error("child log %s: cannot write, output dropped until it can: %s",
                      self.file, exc)

    def _rotate(self) -> None:
        try:
            if self.keep == 0:
                os.ftruncate(self.fd, 0)
                self.size = 0
                return
            for i in range(self.keep - 1, 0, -1):
                older = self.file.with_name(f"{self.file.name}.{i}")
                if older.exists():
                    os.replace(older, self.file.with_name(f"{self.file.name}.{i + 1}"))
            os.replace(self.file, self.file.with_name(f"{self.file.name}.1"))
        except OSError as exc:
            log.error("child log %s: cannot rotate: %s", self.file, exc)
        os.close(self.fd)
        self.fd = -1
        self._open()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
