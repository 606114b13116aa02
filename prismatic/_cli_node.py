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

from ._config import LogFormat, NodeConfig, load_config
from ._errors import NodeError, PrismaticError
from ._process import send_signal

__all__ = ["node_options", "start_node", "detach_node", "stop_node"]


def node_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of ``python -m prismatic.node`` and ``prismatic node start``."""
    options = [
        click.option("--app", metavar="MODULE:ATTR",
                     help="The tree to run: a SupervisorSpec or a callable returning one. "
                          "Default: the config's [tree], else the built-in demo tree."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="TOML config: [node] settings and the [tree] to run."),
        click.option("--name", help="Node name (default prismatic@<host>)."),
        click.option("--data-dir", type=click.Path(file_okay=False),
                     help="Data directory (default $PRISMATIC_HOME/<name>, "
                          "~/.prismatic/<name>)."),
        click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
                     help="Serve Prometheus metrics, /health and /ready on "
                          "127.0.0.1:PORT (0: off, the default)."),
        click.option("--log-format", type=click.Choice([f.value for f in LogFormat]),
                     default=None, help="Log line format (default text)."),
        click.option("--log-file", type=click.Path(dir_okay=False),
                     help="Append logs to this file instead of stderr."),
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
    ]


def _mesh_settings(listen: str | None, join: tuple[str, ...], secret: str | None,
                   config: NodeConfig | None) -> Any:
    section = config.node if config else None
    listen = listen or (section.listen if section else None)
    join = join or (section.join if section else ())
    secret = secret or (section.cluster_secret if section else None)
    if not listen and not join:
        return None
    from .mesh import MeshSettings
    from .mesh._secret import default_secret_path

    return MeshSettings(listen=listen or "127.0.0.1:0", join=tuple(join),
                        secret_file=str(secret or default_secret_path()))


class _Settings:
    def __init__(self, app: str | None, config_file: str | None, name: str | None,
                 data_dir: str | None, metrics_port: int | None, log_format: str | None,
                 log_file: str | None) -> None:
        from ._address import default_node_name
        from ._node import default_data_dir

        config = load_config(config_file) if config_file else None
        section = config.node if config else None
        self.config: NodeConfig | None = config
        self.app = app
        self.name = name or (section.name if section else None) or default_node_name()
        chosen = data_dir or (section.data_dir if section else None)
        self.data_dir = Path(chosen) if chosen else default_data_dir(self.name)
        self.metrics_port = metrics_port if metrics_port is not None else (
            section.metrics_port if section else 0)
        self.log_format = LogFormat(log_format) if log_format else (
            section.log_format if section else LogFormat.TEXT)
        self.log_file = log_file or (section.log_file if section else None)

    def tree(self) -> Any:
        from ._demo import demo_tree
        from ._node import load_app

        if self.app:
            return load_app(self.app)
        if self.config is not None and self.config.tree is not None:
            return self.config.tree
        return demo_tree()


def start_node(app: str | None, config_file: str | None, name: str | None,
               data_dir: str | None, metrics_port: int | None, log_format: str | None,
               log_file: str | None, quiet: bool, prog: str, listen: str | None = None,
               join: tuple[str, ...] = (), cluster_secret: str | None = None) -> None:
    """Run a node in this process; exits with the node's exit code."""
    from ._cli_logging import setup_logging
    from ._node import run_node

    try:
        s = _Settings(app, config_file, name, data_dir, metrics_port, log_format, log_file)
        spec = s.tree()
        setup_logging(s.name, s.log_format, s.log_file)
        mesh = _mesh_settings(listen, join, cluster_secret, s.config)
        code = run_node(spec, name=s.name, data_dir=s.data_dir, show_tree=not quiet,
                        metrics_port=s.metrics_port, mesh=mesh)
    except NodeError as exc:
        click.echo(f"{prog}: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


def detach_node(argv: list[str], data_dir: Path, wait_s: float) -> Path:
    """Start ``python -m prismatic.node argv`` in the background (own session, output in
    ``<data dir>/node.out``) and return once its tree started; NodeError if it did not."""
    import subprocess  # noqa: PLC0415 - kept out of the tree's image (see prismatic._node)

    from ._client import connect

    data_dir.mkdir(parents=True, exist_ok=True)
    out_path = data_dir / "node.out"
    with open(out_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prismatic.node", *argv, "--quiet"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            tail = out_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            raise NodeError(f"node exited with code {code}: {tail[0]}")
        if (data_dir / "control.sock").exists():
            try:
                with connect(data_dir, timeout=1.0) as conn:
                    if conn.status().ready:
                        return out_path
            except PrismaticError:
                pass  # still binding or starting: ask again
        time.sleep(0.05)
    raise NodeError(f"node did not start within {wait_s:.0f}s (output in {out_path})")


def stop_node(data_dir: Path, wait_s: float) -> int:
    """SIGTERM the node in ``data_dir`` (orderly stop of its tree); wait until it is gone."""
    from ._client import connect

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
