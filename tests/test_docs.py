"""The code blocks of README.md and docs/*.md run as written, so the docs stay true.

Every fenced block carries a mark on the line before its fence (an HTML comment, invisible
when rendered), or the info string ``text`` for a diagram or sample output:

* ``<!-- not run: REASON -->``: shown only;
* ``<!-- doc-test: file NAME -->``: written to NAME in the document's scratch directory (an
  app module, a config) for the blocks after it;
* ``<!-- doc-test: node -->``: a shell command that starts a node in the foreground; it is
  run in the background, with the document's unique ``--name`` (and ``--data-dir ./data``
  unless it gives a ``--config``), and the blocks after it talk to that node; it is stopped
  (SIGTERM) at the next ``node`` block or when the document ends;
* ``<!-- doc-test: run -->``: a ``python`` block is executed, a ``sh`` block is run by bash
  with ``set -e`` (every command must succeed); ``run node APP`` first starts a node
  running APP unless one runs already; ``run with-names a,b with-port 4370`` runs a block
  that starts nodes of its own as written for a reader (``--name a``, ``--node a``,
  ``...:4370``) under names unique to this run and a free port, so parallel runs never
  collide.
* ``<!-- doc-test: port N -->`` on a line of its own, anywhere in the document: the TCP
  port N its examples use (readable, fixed) is, in every block that runs, a free port the
  kernel picks for this run, so parallel runs of the suite never collide on it.

Each document runs in its own scratch directory, top to bottom: a node's data directory is
``./data`` there (``$PRISMATIC_NODE`` points at it, ``$PRISMATIC_HOME`` is private), and
``python`` and ``prismatic`` are this interpreter's. A block without a mark fails
:func:`test_every_block_is_marked`: say whether it runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, SESSION_TAG, tagged_pids, wait_until

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
MARK = re.compile(r"^<!--\s*(not run:.+|doc-test:.+?)\s*-->$")
PORT_MARK = re.compile(r"^<!--\s*doc-test:\s*port\s+(\d+)\s*-->$", re.MULTILINE)
RUN_KINDS = ("file", "node", "run")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str
    mark: str | None  # the HTML comment's text, or None
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"

    @property
    def action(self) -> list[str]:
        """``doc-test: run node APP`` -> ``["run", "node", "APP"]``; [] if not run."""
        if self.lang == "text" or self.mark is None or self.mark.startswith("not run:"):
            return []
        return self.mark.removeprefix("doc-test:").split()


def blocks(doc: Path) -> list[Block]:
    lines = doc.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = len(m.group(1)), m.group(2), m.group(3).strip()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        assert end is not None, f"{doc.name}:{i + 1}: fence never closed"
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        mark = MARK.match(prev)
        text = "".join(line[indent:] + "\n" for line in lines[i + 1:end])  # a fence in a list
        found.append(Block(doc, i + 1, info.split()[0] if info else "",
                           mark.group(1) if mark else None, text))
        i = end + 1
    return found


def test_every_block_is_marked() -> None:
    bad = []
    for doc in DOCS:
        for b in blocks(doc):
            if b.lang == "text":
                continue
            if b.mark is None:
                bad.append(f"{b.where}: no <!-- not run: ... --> or <!-- doc-test: ... -->")
            elif b.mark.startswith("doc-test:"):
                act = b.action
                if not act or act[0] not in RUN_KINDS or (
                        act[0] == "run" and b.lang not in ("python", "sh")) or (
                        act[0] == "node" and b.lang != "sh") or (
                        act[0] == "file" and len(act) != 2):
                    bad.append(f"{b.where}: cannot run a {b.lang or 'plain'} block as {b.mark!r}")
    assert not bad, "unmarked or unrunnable code blocks:\n" + "\n".join(bad)


class Scratch:
    """One document's directory, environment and node."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tag = f"{SESSION_TAG}-{uuid.uuid4().hex[:8]}"
        self.name = f"docs{self.tag[-8:]}"
        bindir = str(Path(sys.executable).parent)
        self.env = dict(os.environ, PRISMATIC_TEST_TAG=self.tag,
                        PRISMATIC_HOME=str(root / "home"), PRISMATIC_NODE=str(root / "data"),
                        PRISMATIC_NO_PROGRESS="1", PYTHONPATH=str(REPO),
                        PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
        self.node: subprocess.Popen[bytes] | None = None
        self.out = root / "node.out"

    def start_node(self, command: str, where: str) -> None:
        self.stop_node()  # the document moved on to another node (same name and data dir)
        args = shlex.split(command, comments=True)
        args += ["--name", self.name]  # the last --name wins: never a fixed name machine-wide
        if "--data-dir" not in args and "--config" not in args:
            args += ["--data-dir", "./data"]
        with open(self.out, "wb") as out:  # "tree started" of this node, not an earlier one
            self.node = subprocess.Popen(args + ["--quiet"], cwd=self.root, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT)

        def started() -> bool:
            assert self.node is not None
            if self.node.poll() is not None:
                raise AssertionError(f"{where}: the node exited with {self.node.returncode}: "
                                     f"{self.out.read_text()}")
            return "tree started" in self.out.read_text()

        wait_until(started, 20, f"{where}: the node's tree to start")

    def stop_node(self) -> None:
        if self.node is None:
            return
        if self.node.poll() is None:
            self.node.send_signal(signal.SIGTERM)
        try:
            self.node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.node.kill()
            self.node.wait()
        self.node = None
        wait_until(lambda: not tagged_pids(self.tag), 10, "the document's processes to exit")

    def unique(self, text: str, opts: dict[str, str]) -> str:
        """The block's own node names (``--name``/``--node``) made unique, its port free."""
        for name in filter(None, opts.get("with-names", "").split(",")):
            text = re.sub(rf"(--(?:name|node)[ =]){re.escape(name)}\b",
                          rf"\g<1>{name}{self.name}", text)
        if "with-port" in opts:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            text = re.sub(rf"(?<=:){re.escape(opts['with-port'])}\b", str(port), text)
        return text

    def run(self, b: Block) -> None:
        act = b.action
        if act[0] == "file":
            (self.root / act[1]).write_text(b.text)
            return
        if act[0] == "node":
            self.start_node(b.text.strip(), b.where)
            return
        if act[1:2] == ["node"] and self.node is None:
            self.start_node(f"python -m prismatic.node --app {act[2]}", b.where)
        text = self.unique(b.text, dict(zip(act[1::2], act[2::2], strict=False)))
        if b.lang == "python":
            args = [sys.executable, "-c", text]
        else:
            args = ["bash", "-e", "-o", "pipefail", "-x", "-c", text]
        done = subprocess.run(args, cwd=self.root, env=self.env, capture_output=True,
                              text=True, timeout=60)
        if done.returncode != 0:
            node = self.out.read_text() if self.out.exists() else ""
            pytest.fail(f"{b.where}: exit {done.returncode}\n--- stdout\n{done.stdout}\n"
                        f"--- stderr\n{done.stderr}\n--- node\n{node}", pytrace=False)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    s = Scratch(tmp_path)
    try:
        yield s
    finally:
        s.stop_node()
        for pid in tagged_pids(s.tag):  # nodes a failed block started and never stopped
            with contextlib.suppress(ProcessLookupError):  # gone meanwhile: what we want
                os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not tagged_pids(s.tag), 20, "the document's processes to exit")


@pytest.mark.parametrize("doc", [d for d in DOCS if any(b.action for b in blocks(d))],
                         ids=lambda d: d.name)
def test_doc_blocks_run(doc: Path, scratch: Scratch) -> None:
    ports = {m.group(1): str(free_port()) for m in PORT_MARK.finditer(doc.read_text())}
    for b in blocks(doc):
        if b.action:
            for fixed, free in ports.items():
                b = Block(b.doc, b.line, b.lang, b.mark,
                          re.sub(rf"\b{fixed}\b", free, b.text))
            scratch.run(b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_systemd_unit_starts_the_node_with_real_options() -> None:
    """examples/prismatic.service runs the node in the foreground with options it has."""
    unit = (REPO / "examples" / "prismatic.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines()
                      if line.startswith("ExecStart="))
    args = shlex.split(exec_start)
    assert args[1:3] == ["-m", "prismatic.node"] and "--detach" not in args
    options = [a for a in args if a.startswith("--")]
    assert "--quiet" in options
    helped = subprocess.run([sys.executable, "-m", "prismatic.node", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0, helped.stderr
    unknown = [o for o in options if not re.search(rf"^\s+{re.escape(o)}\b", helped.stdout,
                                                   re.MULTILINE)]
    assert not unknown, f"options the node does not have: {unknown}"
    assert "KillMode=mixed" in unit  # SIGTERM to the node alone: the tree stops in order
