"""Program children: any executable supervised like a Worker (supervisord/circus parity).

``ChildSpec(id="web", start=Program(argv=[...], ready=PortCheck(port=8000)))`` is a child
whose process execs ``argv``. It takes the same restart types, shutdown times, strategies
and intensity as a worker; what differs is carried out by the supervisor's loop
(``supervisors/_program_run.py``): the program's exit code and terminating signal become
its exit reason (``ExitCode(n)``, ``Killed(sig)``), it counts as started only once its
readiness check passes (OTP: its ``init`` returned), and its stdout and stderr go to a
rotating log file in the node's data directory (``prismatic logs PATH``).

Every Struct here is frozen and validated at construction; an invalid value raises
:class:`ChildSpecError` naming the field (``program.argv``, ``program.ready.port``). A
Program crosses the wire inside a ChildSpec (``children start``) and is read from TOML
(``[tree.children.program]``) with the same validators.
"""

from __future__ import annotations

import math
import re
import signal
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec.structs import force_setattr

from ._errors import ChildSpecError

__all__ = ["Program", "PortCheck", "HttpCheck", "FileCheck", "LineCheck", "NotifyCheck",
           "ReadyCheck", "describe_check", "parse_signal"]


def _bad(field: str, value: object, problem: str) -> ChildSpecError:
    return ChildSpecError(f"program.{field}", value, problem)


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise _bad("ready.port", value, "must be a TCP port, 1-65535")
    return value


class PortCheck(msgspec.Struct, frozen=True, kw_only=True, tag_field="check", tag="port"):
    """Ready once a TCP connection to ``host:port`` is accepted."""

    port: int
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        _port(self.port)


class HttpCheck(msgspec.Struct, frozen=True, kw_only=True, tag_field="check", tag="http"):
    """Ready once ``GET url`` answers a 2xx status."""

    url: str

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith("http://"):
            raise _bad("ready.url", self.url, "must be an http:// URL")


class FileCheck(msgspec.Struct, frozen=True, kw_only=True, tag_field="check", tag="file"):
    """Ready once ``path`` exists (relative paths are relative to the program's cwd)."""

    path: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise _bad("ready.path", self.path, "must be a non-empty path")


class LineCheck(msgspec.Struct, frozen=True, kw_only=True, tag_field="check", tag="line"):
    """Ready once a line the program writes to stdout matches ``pattern`` (``re.search``)."""

    pattern: str

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except (re.error, TypeError) as exc:
            raise _bad("ready.pattern", self.pattern, f"not a regular expression: {exc}") \
                from None


class NotifyCheck(msgspec.Struct, frozen=True, kw_only=True, tag_field="check", tag="notify"):
    """Ready once the program sends ``READY=1`` to ``$NOTIFY_SOCKET`` (systemd's sd_notify
    protocol: ``Type=notify``)."""


ReadyCheck = PortCheck | HttpCheck | FileCheck | LineCheck | NotifyCheck


def describe_check(check: ReadyCheck | None) -> str:
    match check:
        case None:
            return "exec"
        case PortCheck(port=port, host=host):
            return f"port {host}:{port}"
        case HttpCheck(url=url):
            return f"http {url}"
        case FileCheck(path=path):
            return f"file {path}"
        case LineCheck(pattern=pattern):
            return f"stdout line /{pattern}/"
        case NotifyCheck():
            return "sd_notify READY=1"
    raise TypeError(f"not a readiness check: {check!r}")


def parse_signal(value: object, field: str = "stop_signal") -> int:
    """A signal number from ``15``, ``"TERM"`` or ``"SIGTERM"``; ChildSpecError if none."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(signal.Signals(value))
        except ValueError:
            pass
    elif isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        sig = getattr(signal.Signals, name, None)
        if sig is not None:
            return int(sig)
    raise _bad(field, value, "must be a signal: a number, TERM or SIGTERM")


def _check(value: object, field: str) -> ReadyCheck | None:
    if value is None or isinstance(value, (PortCheck, HttpCheck, FileCheck, LineCheck,
                                           NotifyCheck)):
        return value
    if isinstance(value, dict):
        fields = dict(value)
        kinds = {"port": PortCheck, "http": HttpCheck, "file": FileCheck, "line": LineCheck,
                 "notify": NotifyCheck}
        cls = kinds.get(fields.pop("check", None))  # type: ignore[arg-type]
        if cls is None:
            raise _bad(f"{field}.check", value.get("check"),
                       f"must be one of {' | '.join(kinds)}")
        try:
            return cls(**fields)  # type: ignore[no-any-return]
        except TypeError as exc:  # an unknown or missing key
            raise _bad(field, value, str(exc)) from None
    raise _bad(field, value, "must be a PortCheck, HttpCheck, FileCheck, LineCheck or "
                             "NotifyCheck")


def _positive(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not (value > 0 and math.isfinite(value)):
        raise _bad(field, value, "must be a finite number > 0")
    return float(value)


class Program(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="program"):
    """An executable to run as a child. ``argv[0]`` is looked up in ``PATH``.

    ``env`` is added to the environment the node was started with (as supervisord's
    ``environment``); ``cwd``, ``user`` (a name or uid; the node must be root to switch)
    and ``umask`` are set before exec. ``stop_signal`` starts an orderly stop (then SIGKILL
    of the whole process group once the child's ``shutdown`` time is over);
    ``stop_group`` sends it to the whole process group (supervisord's ``stopasgroup``).
    The child spec's ``args`` (a ``simple_one_for_one`` child's extra args too) are
    appended to ``argv`` as strings. ``ready`` is the readiness check (None: started
    once exec succeeds), which must pass within ``start_timeout`` seconds. Output goes to
    ``logs/<path>.log`` in the data directory, rotated at ``log_max_bytes`` with
    ``log_keep`` old files kept. ``alive`` (a port, http or file check) is tried every
    ``alive_every`` seconds once the program is ready; ``alive_failures`` failures in a row
    kill it (reason ``LivenessFailed``), then its restart type decides.
    """

    argv: tuple[str, ...]
    env: dict[str, str] = {}
    cwd: str | None = None
    user: str | int | None = None
    umask: int | None = None
    stop_signal: int | str = signal.SIGTERM.value
    stop_group: bool = False
    ready: ReadyCheck | None = None
    start_timeout: float = 30.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_keep: int = 5
    alive: ReadyCheck | None = None
    alive_every: float = 10.0
    alive_failures: int = 3

    if TYPE_CHECKING:  # what the constructor accepts; __post_init__ normalizes it
        def __init__(self, *, argv: tuple[str, ...] | list[str],
                     env: dict[str, str] = ..., cwd: str | None = ...,
                     user: str | int | None = ..., umask: int | None = ...,
                     stop_signal: int | str = ..., stop_group: bool = ...,
                     ready: ReadyCheck | dict[str, Any] | None = ...,
                     start_timeout: float = ..., log_max_bytes: int = ...,
                     log_keep: int = ..., alive: ReadyCheck | dict[str, Any] | None = ...,
                     alive_every: float = ..., alive_failures: int = ...) -> None: ...

    def __post_init__(self) -> None:
        argv = self.argv
        if not isinstance(argv, (list, tuple)) or not argv \
                or not all(isinstance(a, str) for a in argv) or not argv[0]:
            raise _bad("argv", argv, "must be a non-empty list of strings (the program first)")
        force_setattr(self, "argv", tuple(argv))
        if not isinstance(self.env, dict) or not all(
                isinstance(k, str) and k and "=" not in k and isinstance(v, str)
                for k, v in self.env.items()):
            raise _bad("env", self.env, "must map names (no '=') to strings")
        if self.cwd is not None and (not isinstance(self.cwd, str) or not self.cwd):
            raise _bad("cwd", self.cwd, "must be a directory path")
        user = self.user
        if user is not None and (isinstance(user, bool) or not isinstance(user, (str, int))
                                 or user == "" or (isinstance(user, int) and user < 0)):
            raise _bad("user", user, "must be a user name or a uid >= 0")
        umask = self.umask
        if umask is not None and (isinstance(umask, bool) or not isinstance(umask, int)
                                  or not 0 <= umask <= 0o777):
            raise _bad("umask", umask, "must be an integer 0-0o777 (e.g. 0o022, or 18)")
        force_setattr(self, "stop_signal", parse_signal(self.stop_signal))
        if not isinstance(self.stop_group, bool):
            raise _bad("stop_group", self.stop_group, "must be true or false")
        force_setattr(self, "ready", _check(self.ready, "ready"))
        force_setattr(self, "start_timeout", _positive("start_timeout", self.start_timeout))
        if isinstance(self.log_max_bytes, bool) or not isinstance(self.log_max_bytes, int) \
                or self.log_max_bytes < 1024:
            raise _bad("log_max_bytes", self.log_max_bytes, "must be an integer >= 1024")
        if isinstance(self.log_keep, bool) or not isinstance(self.log_keep, int) \
                or self.log_keep < 0:
            raise _bad("log_keep", self.log_keep, "must be an integer >= 0")
        alive = _check(self.alive, "alive")
        if isinstance(alive, (LineCheck, NotifyCheck)):
            raise _bad("alive", self.alive, "a liveness check is port, http or file")
        force_setattr(self, "alive", alive)
        force_setattr(self, "alive_every", _positive("alive_every", self.alive_every))
        if isinstance(self.alive_failures, bool) or not isinstance(self.alive_failures, int) \
                or self.alive_failures < 1:
            raise _bad("alive_failures", self.alive_failures, "must be an integer >= 1")


def program_from(value: object) -> Program:
    """A Program from its wire/TOML form (a dict); ChildSpecError naming the field if bad."""
    if isinstance(value, Program):
        return value
    if not isinstance(value, dict):
        raise ChildSpecError("program", value, "must be a table of program settings")
    fields = {k: v for k, v in value.items() if k != "kind"}
    try:
        return Program(**fields)
    except TypeError as exc:  # an unknown or missing key
        raise ChildSpecError("program", sorted(fields), str(exc).replace(
            "__init__() ", "")) from None
