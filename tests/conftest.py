"""Fixtures that start real nodes, and the session-wide check that no process is left.

Every node a test starts carries ``PRISMATIC_TEST_TAG`` in its environment; forked
processes inherit it, so any process of any tree can be found in /proc afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prismatic as p

# A fixed example sequence by default, so a CI run is reproducible and a merge is never
# blocked by a fresh random find; PRISMATIC_HYPOTHESIS=explore draws new examples (run it
# locally and pin whatever it finds as a plain test).
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("PRISMATIC_HYPOTHESIS", "fixed"))

REPO = Path(__file__).resolve().parent.parent
SESSION_TAG = f"prismatic-test-{uuid.uuid4().hex[:12]}"


def tagged_pids(tag: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds ``tag``."""
    needle = f"PRISMATIC_TEST_TAG={tag}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env and alive(int(entry)):  # a node tag extends the session tag
            found.append(int(entry))
    return found


def assert_builds_every_member(strategy: st.SearchStrategy[Any], union: Any) -> None:
    """A fuzz strategy for a wire union must produce each of its members: one added to the
    union but forgotten in the strategy would never be fuzzed."""
    seen: set[type] = set()

    @settings(max_examples=1500, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(x: Any) -> None:
        seen.add(type(x))

    collect()
    missing = [m.__name__ for m in typing.get_args(union) if m not in seen]
    assert not missing, f"the strategy never builds {missing}"


def wait_until(pred, timeout: float = 10.0, what: str = "condition") -> object:
    """Poll ``pred`` until it returns a truthy value; fail at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def run_fresh(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter (from ``/``, the repo on its path: nothing this
    session imported is in it); its stdout's words. Fails on a non-zero exit."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd="/", env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (``Z`` for a zombie); None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")


class RunningNode:
    def __init__(self, proc: subprocess.Popen, data_dir: Path, tag: str, log: Path) -> None:
        self.proc = proc
        self.data_dir = data_dir
        self.tag = tag
        self.log = log
        self.conn = p.connect(data_dir)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def pids(self) -> list[int]:
        return tagged_pids(self.tag)

    def events(self, prefix: str = "supervisor."):
        return p.open_event_stream(self.data_dir, prefix)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.conn.close()
        return code


def start_node(tmp_path: Path, app: str, *, tag_suffix: str = "", name: str | None = None,
               data_dir: Path | None = None, args: tuple[str, ...] = (),
               prefix: tuple[str, ...] = ()) -> RunningNode:
    tag = f"{SESSION_TAG}-{uuid.uuid4().hex[:8]}"
    data_dir = data_dir or tmp_path / "data"
    log = tmp_path / "test.log"
    env = dict(os.environ, PRISMATIC_TEST_TAG=tag, PRISMATIC_TEST_LOG=str(log),
               PYTHONPATH=str(REPO))
    out = open(tmp_path / "node.out", "w")
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "prismatic.node", *(("--app", app) if app else ()),
         "--data-dir", str(data_dir),
         "--name", name or f"test{tag[-6:]}", *args],
        cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    out.close()

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"node exited with {proc.returncode}: "
                                 f"{(tmp_path / 'node.out').read_text()}")
        return "tree started" in (tmp_path / "node.out").read_text()

    wait_until(ready, 20, "the node's tree to start")
    return RunningNode(proc, data_dir, tag, log)


def module_node(app: str) -> Any:
    """A module-scoped fixture: one real node running ``app`` for every test of a module
    (for tests that leave the tree as they found it, or wait for it to recover)."""

    @pytest.fixture(scope="module")
    def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
        n = start_node(tmp_path_factory.mktemp(app.rsplit(":", 1)[-1]), app)
        yield n
        n.stop()
        wait_until(lambda: not n.pids(), 10, "the node's processes to exit")

    return node


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator:
    nodes: list[RunningNode] = []

    def make(app: str) -> RunningNode:
        sub = tmp_path / f"n{len(nodes)}"
        sub.mkdir()
        n = start_node(sub, app)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()
        wait_until(lambda n=n: not n.pids(), 10, f"every process of node {n.tag} to exit")


@pytest.fixture(scope="session", autouse=True)
def no_orphans() -> Iterator[None]:
    """Fail the session if any process started by a test is still alive at the end."""
    yield
    deadline = time.monotonic() + 10
    while (left := tagged_pids(SESSION_TAG)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"processes left behind by the tests: {left}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """The project's modules compiled to bytecode (``__pycache__``) before any test starts a
    process: where ``PYTHONDONTWRITEBYTECODE`` is set nothing else writes it, and every node,
    CLI run or script a test starts compiled every module it imports (~150 ms of CPU a node
    start on a 2-CPU VM; tests/test_node.py and test_mesh.py: 16 s of CPU, 10 s compiled).
    An edited module is compiled again (Python checks each against its source)."""
    import compileall  # noqa: PLC0415 - this step only

    for part in ("prismatic", "supervisors", "transports", "chaos", "bench", "tests"):
        compileall.compile_dir(REPO / part, quiet=2)


# ---- another local user (tests run as root; the child drops to nobody) ------------------------

NOBODY = 65534


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def run_as_nobody(fn: typing.Callable[[], int]) -> int:
    """Run ``fn`` in a forked child as user nobody; its return value is the exit code."""
    if os.getuid() != 0:
        pytest.skip("needs root, to act as another user")
    child = os.fork()
    if child == 0:
        code = 70
        try:
            _become_nobody()
            code = fn()
        except BaseException as exc:  # noqa: BLE001 - the child must exit, saying why
            sys.stderr.write(f"run_as_nobody: {exc!r}\n")
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])


@contextlib.contextmanager
def squatted_by_nobody(address: bytes) -> Iterator[int]:
    """A process of user nobody listening on abstract ``address`` (its pid) until exit."""
    if os.getuid() != 0:
        pytest.skip("needs root, to act as another user")
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(ready_r)
            os.close(done_w)
            _become_nobody()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(address)
            s.listen(64)
            os.write(ready_w, b"1")
            os.read(done_r, 1)  # until the test closes its end
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        assert os.read(ready_r, 1) == b"1", "the squatter did not bind"
        yield child
    finally:
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(child, 0)
