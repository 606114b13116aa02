"""The node's warm-up of the children's start path: it leaves nothing behind, a fork of the
warmed image starts with fewer copy-on-write faults, and the async-handler check it fills
per class still sees a handler changed on the class or set on the instance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import prismatic as p
from prismatic import _worker_runtime as runtime

REPO = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter (this one has run the start paths already, in other tests):
# ``START`` counted in a fresh fork of the image, cold, then after the node's warm-up.
_FAULTS = r"""
import os, resource, signal
from prismatic._address import Pid
from prismatic._reactor import Reactor
from prismatic._worker import Worker
from prismatic._worker_runtime import WorkerContext
from prismatic.supervisors._warm_start import _one_supervisor_start, warm_start_path


def worker():
    # What a spare and then its plain worker do.
    ctx = WorkerContext(Worker(), Pid("warm-test", os.getpid()), "w")
    ctx.attach(Reactor()).add_signal_handler(signal.SIGTERM, ctx.stop, None)
    ctx.serve()


def supervisor():
    # A small supervisor's start of its child (over socket pairs).
    _one_supervisor_start("warm-test")


def start_in_a_fork():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        START()
        used = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        os.write(w, used.to_bytes(4, "little"))
        os._exit(0)
    os.waitpid(pid, 0)
    return int.from_bytes(os.read(r, 4), "little")


cold = sorted(start_in_a_fork() for _ in range(5))[2]
warm_start_path("warm-test", 0)
warm = sorted(start_in_a_fork() for _ in range(5))[2]
print(cold, warm)
"""


def faults_cold_and_warm(start: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS.replace("START()", f"{start}()")],
                         capture_output=True, text=True, timeout=60, cwd="/",
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    cold, warm = map(int, out.stdout.split())
    return cold, warm


def test_a_fork_of_the_warmed_image_starts_with_fewer_faults():
    cold, warm = faults_cold_and_warm("worker")
    assert warm < 0.85 * cold, f"faults of a worker's start: {cold} cold, {warm} warmed"


def test_a_fork_of_the_warmed_image_runs_a_supervisors_start_with_fewer_faults():
    # Measured: ~395 cold, ~290 warmed; ~380 with the worker's path alone warmed.
    cold, warm = faults_cold_and_warm("supervisor")
    assert warm < 0.85 * cold, f"faults of a supervisor's start: {cold} cold, {warm} warmed"


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_the_warm_up_leaves_nothing_behind():
    from prismatic.supervisors._warm_start import warm_start_path

    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGWINCH)
    handlers = [signal.getsignal(s) for s in sigs]
    fds = _open_fds()
    warm_start_path(f"warm-{os.getpid()}", 0, rounds=3)
    assert _open_fds() == fds
    assert [signal.getsignal(s) for s in sigs] == handlers
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    assert wakeup == -1
    assert runtime._fork_closes == []  # no mailbox of the warm-up is closed in later forks


class _Plain(p.Worker):
    def handle_call(self, msg, caller):
        return msg


class _Async(p.Worker):
    async def handle_cast(self, msg):
        pass


async def _async_info(msg):
    pass


def test_the_async_check_is_remembered_per_class_and_still_sees_changes():
    class Changed(p.Worker):
        pass

    runtime.note_worker_classes()
    assert {_Plain, _Async, Changed} <= runtime._async_classes.keys()
    assert not runtime._has_async_handler(_Plain())
    assert runtime._has_async_handler(_Async())
    worker = _Plain()
    worker.handle_info = _async_info  # type: ignore[method-assign]  # on the instance
    assert runtime._has_async_handler(worker)
    Changed.handle_info = _async_info  # type: ignore[method-assign]  # on the class, later
    assert runtime._has_async_handler(Changed())
