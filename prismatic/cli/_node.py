"""Starting and stopping a node: the one implementation behind ``python -m prismatic.node``
and ``prismatic node start|stop``.

Settings come from, first that is given: the command line, the ``--config`` file's
``[node]`` table, the defaults. The tree: ``--app``, else the config's ``[tree]``, else the
built-in demo. Logging is configured here (entry points only), before the node forks, so
every process of the tree logs the same way.

Exit codes of ``node start``: 0 stopped on request; 1 the root supervisor failed or exited;
2 bad usage (``--app`` or ``--config`` that cannot be loaded, data directory in use).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .._config import LOG_LEVELS, LogFormat, NodeConfig, load_config
from .._errors import NodeError, PrismaticError
from .._node import METRICS_PORT_AUTO
from .._process import send_signal

__all__ = ["node_options", "start_node", "detach_node", "stop_node", "DetachFailed",
           "add_import_paths"]



GIB = 1 << 30
DEFAULT_EVENTLOG_MAX_BYTES = GIB  # the log never grows past this by default


class _MetricsPort(click.ParamType):
    """A port number, 0 for off, or ``auto`` (:data:`METRICS_PORT_AUTO`: any free port)."""

    name = "port"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return METRICS_PORT_AUTO
        try:
            port = int(value)
        except ValueError:
            port = -2
        if not 0 <= port <= 65535:
            self.fail(f"{value!r} is not a port (0-65535) or 'auto'", param, ctx)
        return port


def node_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of ``python -m prismatic.node`` and ``prismatic node start``."""
    options = [
        click.option("--app", metavar="MODULE:ATTR",
                     help="The tree to run: a SupervisorSpec or a callable returning one. "
                          "Default: the config's [tree], else the built-in demo tree."),
        click.option("--app-path", "app_path", multiple=True, metavar="DIR",
                     type=click.Path(file_okay=False),
                     help="Put DIR first on the import path for --app and the tree's "
                          "start refs (repeatable). The current directory is always on it, "
                          "as with python -m."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="TOML config: [node] settings, [eventlog] retention and the "
                          "[tree] to run."),
        click.option("--name", help="Node name (default prismatic@<host>)."),
        click.option("--data-dir", type=click.Path(file_okay=False),
                     help="Data directory (default $PRISMATIC_HOME/<name>, "
                          "~/.prismatic/<name>)."),
        click.option("--metrics-port", type=_MetricsPort(), default=None,
                     metavar="PORT|auto",
                     help="Serve Prometheus metrics, /health and /ready on "
                          "ADDR:PORT (0: off, the default; auto: a free port the "
                          "kernel picks, shown by prismatic status and in the log)."),
        click.option("--metrics-bind", metavar="ADDR", default=None,
                     help="Address the metrics endpoint listens on (default 127.0.0.1; "
                          "0.0.0.0 or :: for every interface)."),
        click.option("--log-format", type=click.Choice([f.value for f in LogFormat]),
                     default=None, help="Log line format (default text)."),
        click.option("--log-file", type=click.Path(dir_okay=False),
                     help="Append logs to this file instead of stderr; reopened on SIGHUP "
                          "(and when it was renamed), for logrotate."),
        click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
                     default=None, help="Least severe level logged (default info)."),
        click.option("--eventlog-max-bytes", type=click.IntRange(min=1), default=None,
                     metavar="N", help="Delete the oldest events once the event log holds "
                                       "more than N bytes (default 1 GiB)."),
        click.option("--eventlog-max-age", "eventlog_max_age", type=click.FloatRange(min=0,
                     min_open=True), default=None, metavar="SECONDS",
                     help="Delete events older than this (default: kept until "
                          "--eventlog-max-bytes)."),
        click.option("--subscriber-hwm", type=click.IntRange(min=0), default=None, metavar="N",
                     help="Pub/sub messages the node queues for a subscriber that does not "
                          "read, before it drops (counted by that subscriber) (default "
                          "1000; 0: unbounded)."),
        click.option("--quiet", is_flag=True, help="Do not print the tree as it changes."),
        *mesh_options(),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def mesh_options() -> list[Callable[[Any], Any]]:
    """The cluster options (see docs/cluster.md); the node joins a cluster when either of
    ``--listen`` / ``--join`` is given (here or in the config's [node])."""
    return [
        click.option("--listen", metavar="HOST:PORT", default=None,
                     help="Join the cluster mesh, listening for other nodes on HOST:PORT "
                          "(default 127.0.0.1:0: loopback, any port)."),
        click.option("--join", "join", metavar="HOST:PORT", multiple=True,
                     help="A seed node of the cluster to join (repeatable; retried "
                          "until one answers)."),
        click.option("--cluster-secret", type=click.Path(dir_okay=False), default=None,
                     help="The cluster secret file (default $PRISMATIC_HOME/cluster.secret; "
                          "create it with `prismatic cluster init-secret`)."),
        click.option("--reap-after", "reap_after", type=float, default=None,
                     metavar="SECONDS",
                     help="Forget a dead or left member this long after it went (default "
                          "600; at least 1). A partition longer than this heals only by "
                          "`prismatic cluster join`."),
    ]


def _mesh_settings(listen: str | None, join: tuple[str, ...], secret: str | None,
                   config: NodeConfig | None, reap_after: float | None = None) -> Any:
    section = config.node if config else None
    listen = listen or (section.listen if section else None)
    join = join or (section.join if section else ())
    secret = secret or (section.cluster_secret if section else None)
    if reap_after is None and section is not None:
        reap_after = section.reap_after
    if not listen and not join:
        return None
    from ..mesh import MeshSettings
    from ..mesh._secret import default_secret_path

    return MeshSettings(listen=listen or "127.0.0.1:0", join=tuple(join),
                        secret_file=str(secret or default_secret_path()), reap_after=reap_after)


def add_import_paths(app_path: tuple[str, ...] = ()) -> None:
    """``--app-path`` dirs first, then the current directory (as ``python -m`` does), so a
    console-script node imports ``myapp`` from where it was started."""
    for d in reversed([*app_path, os.getcwd()]):
        p = str(Path(d).resolve())
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)


class _Settings:
    def __init__(self, app: str | None, config_file: str | None, name: str | None,
                 data_dir: str | None, metrics_port: int | None, log_format: str | None,
                 log_file: str | None, app_path: tuple[str, ...] = (),
                 log_level: str | None = None, eventlog_max_bytes: int | None = None,
                 eventlog_max_age: float | None = None,
                 metrics_bind: str | None = None, listen: str | None = None,
                 join: tuple[str, ...] = (), cluster_secret: str | None = None,
                 subscriber_hwm: int | None = None, reap_after: float | None = None) -> None:
        from .._address import default_node_name
        from .._node import default_data_dir

        add_import_paths(app_path)  # before the config imports its start refs
        config = load_config(config_file) if config_file else None
        section = config.node if config else None
        retention = config.eventlog if config else None
        self.config: NodeConfig | None = config
        self.app = app
        self.name = name or (section.name if section else None) or default_node_name()
        chosen = data_dir or (section.data_dir if section else None)
        self.data_dir = Path(chosen) if chosen else default_data_dir(self.name)
        self.metrics_port = metrics_port if metrics_port is not None else (
            section.metrics_port if section else 0)
        self.metrics_bind = metrics_bind or (section.metrics_bind if section else "127.0.0.1")
        self.log_format = LogFormat(log_format) if log_format else (
            section.log_format if section else LogFormat.TEXT)
        self.log_file = log_file or (section.log_file if section else None)
        self.log_level = (log_level or (section.log_level if section else None)
                          or "info").upper()
        self.eventlog_max_bytes = eventlog_max_bytes or (
            retention.max_bytes if retention else DEFAULT_EVENTLOG_MAX_BYTES)
        self.eventlog_max_age_s = eventlog_max_age or (
            retention.max_age_s if retention else None)
        self.mesh = _mesh_settings(listen, join, cluster_secret, config, reap_after)
        self.subscriber_hwm = subscriber_hwm if subscriber_hwm is not None else (
            section.subscriber_hwm if section else None)

    def reloadable(self) -> NodeConfig | None:
        """The config ``prismatic reload`` re-reads: the one the tree came from, if it did."""
        if self.app or self.config is None or self.config.tree is None:
            return None
        return self.config

    def tree(self) -> Any:
        from .._demo import demo_tree
        from .._node import load_app

        if self.app:
            return load_app(self.app)
        if self.config is not None and self.config.tree is not None:
            return self.config.tree
        return demo_tree()


def start_node(app: str | None, config_file: str | None, name: str | None,
               data_dir: str | None, metrics_port: int | None, log_format: str | None,
               log_file: str | None, quiet: bool, app_path: tuple[str, ...] = (),
               log_level: str | None = None, eventlog_max_bytes: int | None = None,
               eventlog_max_age: float | None = None,
               metrics_bind: str | None = None, listen: str | None = None,
               join: tuple[str, ...] = (), cluster_secret: str | None = None,
               subscriber_hwm: int | None = None, reap_after: float | None = None) -> None:
    """Run a node in this process; exits with the node's exit code."""
    from ._logging import setup_logging
    from .._node import run_node

    try:
        s = _Settings(app, config_file, name, data_dir, metrics_port, log_format, log_file,
                      app_path, log_level, eventlog_max_bytes, eventlog_max_age,
                      metrics_bind, listen, join, cluster_secret, subscriber_hwm, reap_after)
        spec = s.tree()
        setup_logging(s.name, s.log_format, s.log_file, level=s.log_level)
        code = run_node(spec, name=s.name, data_dir=s.data_dir, show_tree=not quiet,
                        metrics_port=s.metrics_port, metrics_host=s.metrics_bind,
                        eventlog_max_bytes=s.eventlog_max_bytes, mesh=s.mesh,
                        eventlog_max_age_s=s.eventlog_max_age_s, config=s.reloadable(),
                        subscriber_hwm=s.subscriber_hwm)
    except NodeError as exc:
        click.echo(f"prismatic: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


class DetachFailed(NodeError):
    """The background node did not start; ``code`` is its exit code (1 if it is unknown)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def detach_node(argv: list[str], data_dir: Path, wait_s: float) -> tuple[Path, int]:
    """Start ``python -m prismatic.node argv`` in the background (own session, output in
    ``<data dir>/node.out``) and return (output file, pid) once *that* process's tree
    started: the node that answers must be the one just started (it holds the data
    directory's lock, and its status gives its pid), never one that ran there already.
    :class:`DetachFailed` with the new process's own error line and exit code if not."""
    import subprocess  # noqa: PLC0415 - kept out of the tree's image (see prismatic._node)

    from .._client import connect
    from .._nodelock import UNKNOWN_HOLDER, lock_holder

    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private, as the node makes it
    holder = lock_holder(data_dir)
    if holder is not None:
        raise DetachFailed(f"another node is running with data directory {data_dir.resolve()}"
                           + (f" (pid {holder})" if holder > 0 else ""), 2)
    out_path = data_dir / "node.out"
    with open(os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as out:
        offset = out.tell()
        proc = subprocess.Popen([sys.executable, "-m", "prismatic.node", *argv, "--quiet"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise DetachFailed(f"node exited with code {code}: "
                               f"{_error_line(out_path, offset)}", code if code > 0 else 1)
        if lock_holder(data_dir) in (proc.pid, UNKNOWN_HOLDER):
            try:
                with connect(data_dir, timeout=1.0) as conn:
                    st = conn.status()
                    if st.pid == proc.pid and st.ready:
                        return out_path, proc.pid
            except PrismaticError:
                pass  # still binding or starting: ask again
        time.sleep(0.05)
    raise DetachFailed(f"node did not start within {wait_s:.0f}s (pid {proc.pid} still "
                       f"running; output in {out_path.resolve()})", 1)


def _error_line(out_path: Path, offset: int) -> str:
    """The line that says why a background node ended: its own error line if it printed
    one, else its last line."""
    with open(out_path, "rb") as f:
        f.seek(offset)
        lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()
                 if ln.strip()]
    for prefix in ("prismatic: error: ", "node "):
        for ln in reversed(lines):
            if ln.startswith(prefix):
                return ln.removeprefix("prismatic: error: ")
    return lines[-1] if lines else "(no output)"


def stop_node(data_dir: Path, wait_s: float) -> int:
    """SIGTERM the node in ``data_dir`` (orderly stop of its tree); wait until it is gone."""
    from .._client import connect

    with connect(data_dir, timeout=5.0) as conn:
        pid = conn.status().pid
    pidfd = os.pidfd_open(pid)
    try:
        send_signal(pidfd, signal.SIGTERM)
        # A pidfd turns readable when the process exits (a zombie counts): no polling.
        if select.select([pidfd], [], [], wait_s)[0]:
            return pid
    finally:
        os.close(pidfd)
    raise NodeError(f"node pid {pid} still running after {wait_s:.0f}s")
