"""Static checks as tests: mypy on the package and ruff on the repository stay at zero.

As msgspec's typing tests do, each tool runs as a subprocess of this interpreter, with its
configuration from pyproject.toml (strict mypy flags on the pure cores; ruff's E, F, W, B
rules at line length 100).

mypy cannot check the source folders as they lie: ``supervisors/`` and ``transports/`` are
installed as ``prismatic.supervisors`` / ``prismatic.transports`` through setup.cfg's
``package_dir``, so checked in place their relative imports do not resolve. The test builds
the installed layout out of symlinks (from that same ``package_dir``), checks it with
``mypy -p prismatic``, and reports each error under its path in the repository. mypy's cache
lives in the repository's ``.mypy_cache`` (git-ignored): a warm run takes about a second.
"""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_PATH_AT_START = re.compile(r"^([^\s:]+\.pyi?)(?=:)", re.MULTILINE)

# What the docs show users writing must type-check against the shipped annotations too:
# enum fields given as strings, children as lists, async handlers overriding plain ones.
_USAGE = '''
import prismatic as p

class Counter(p.Worker):
    async def init(self, *args: object) -> None: ...
    async def handle_cast(self, msg: object) -> None: ...
    async def handle_info(self, msg: object) -> None: ...
    async def terminate(self, reason: p.ExitReason) -> None: ...

workers = p.SupervisorSpec(
    flags=p.SupFlags(strategy="one_for_all", intensity=3, period=10, auto_shutdown="never"),
    children=[p.ChildSpec(id="a", start=Counter, args=[1]),
              p.ChildSpec(id="b", start="myapp:make", restart="transient",
                          shutdown="brutal_kill", type="worker")])
'''


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _stage(root: Path) -> Path:
    """``root/prismatic`` laid out as installed: symlinks to the repository's files."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    package_dir = dict(tuple(part.strip() for part in line.split("=", 1))
                       for line in cfg["options"]["package_dir"].strip().splitlines())
    (root / "prismatic").mkdir()
    for entry in (REPO / package_dir.get("prismatic", "prismatic")).iterdir():
        if entry.name != "__pycache__":
            (root / "prismatic" / entry.name).symlink_to(entry)
    for package, folder in package_dir.items():
        where = root.joinpath(*package.split("."))
        if package != "prismatic" and not where.exists():
            where.symlink_to(REPO / folder, target_is_directory=True)
    return root


def _in_repo(output: str, stage: Path) -> str:
    """mypy's paths in the staged tree, as paths in the repository."""
    def repo_path(m: re.Match[str]) -> str:
        real = os.path.realpath(stage / m.group(1))
        return os.path.relpath(real, REPO) if real.startswith(f"{REPO}{os.sep}") else m.group(1)
    return _PATH_AT_START.sub(repo_path, output)


def test_mypy_passes_on_the_package(tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="pip install -e '.[test]' brings mypy")
    stage = _stage(tmp_path)
    (stage / "documented_usage.py").write_text(_USAGE)
    done = _run(["mypy", "--config-file", str(REPO / "pyproject.toml"),
                 "--cache-dir", str(REPO / ".mypy_cache"), "-p", "prismatic",
                 "-m", "documented_usage"], stage)
    if done.returncode != 0:
        pytest.fail("mypy:\n" + _in_repo(done.stdout + done.stderr, stage), pytrace=False)


def test_ruff_passes_on_the_repository() -> None:
    pytest.importorskip("ruff", reason="pip install -e '.[test]' brings ruff")
    done = _run(["ruff", "check", "--output-format", "concise", "."], REPO)
    if done.returncode != 0:
        pytest.fail("ruff check (E, F, W, B):\n" + done.stdout + done.stderr, pytrace=False)
