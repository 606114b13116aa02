"""The child's side of supervision: what runs in a process a supervisor made.

A child process starts either straight from a fork (a child forked for one spec) or as a
*spare* (:func:`spare_main`): made ahead of need, it prepares what every worker needs, then
blocks on its channel until the supervisor says which child to become (``Become``). Either
way it ends in :func:`run_child`, which runs the child's supervisor or worker to the end and
returns the process's exit code. Protocol on the channel: ``transports/_frames.py``.
"""

from __future__ import annotations

import inspect
import itertools
import os
import socket
import time
from collections.abc import Callable

import msgspec

from .._address import own_pid
from .._childspec import ChildSpec, ChildType, SupervisorSpec, resolve_start
from .._errors import ChildSpecError
from .._exit import reason_from_exception
from .._nodeinfo import creation_of, current
from .._process import lead_own_group, set_process_name
from .._worker import Ignore, Worker
from .._worker_runtime import WorkerContext, run_worker
from ..transports._channel import Channel
from ..transports._framing import encode_frame
from ..transports._frames import Become, ExitingFrame, IgnoredFrame, ReadyFrame
from ._logfile import capture_prints

__all__ = ["spare_main", "run_child", "knows", "proc_name", "word_waiting",
           "may_become_a_worker"]

_encoder = msgspec.msgpack.Encoder()
# A plain int, made once: or'ing the socket module's IntFlag members in a fresh fork runs
# enum code (~20 copy-on-write faults).
_PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
_become_decoder = msgspec.msgpack.Decoder(Become)


def spare_main(channel: Channel, specs: dict[str, ChildSpec], path: tuple[str, ...],
               node: str, prepare: bool = True) -> int:
    """Runs in a spare: wait to be told which child to become, then become it.

    What every worker needs whoever it becomes (its mailbox, the runtime's state) is made
    while waiting: a fresh fork pays a copy-on-write fault for each page it first writes,
    and paying them now takes them off the restart's critical path. The rehearsal of the
    rest is only worth it while nobody waits: in a burst of starts the supervisor sends
    ``Become`` as soon as the spare exists, and then rehearsing only adds its own work
    (~60 faults, ~0.2 ms) to the start it delays. With ``prepare`` False it prepares
    nothing: a spare that can only become a supervisor (:func:`may_become_a_worker`; a
    root of many small supervisors), since a supervisor closes a worker's context unused and
    the pages made or written for it stayed private to it (measured: ~45, 0.17 MiB each);
    and a small supervisor's first children, told at once (see ``_procs``)."""
    prepared = WorkerContext(None, own_pid(node, creation_of(node)), "") if prepare else None
    if prepare and not word_waiting(channel):
        rehearse_start(specs)
    frame = channel.receive_one()
    if not isinstance(frame, Become):
        return 0
    # Until now this spare was in its zygote's process group, which is how the supervisor
    # tells spares in the making from orphans (see _procs.SpareKeeping.sweep_orphans).
    lead_own_group()
    spec = specs[frame.spec_id]
    if frame.key != frame.spec_id:  # a dynamic child: the template with its own args
        spec = msgspec.structs.replace(spec, args=tuple(frame.args))
    set_process_name(proc_name(spec, frame.key))
    return run_child(spec, channel, (*path, frame.key), node, prepared)


def may_become_a_worker(specs: dict[str, ChildSpec]) -> bool:
    """Whether a spare holding ``specs`` may become a worker (worth preparing for one). Asked
    once by the supervisor, not in each spare: each spec looked at is a page written in a
    fresh fork (its reference count), a thousand of them for a root of 1,000 supervisors."""
    return any(s.type is not ChildType.SUPERVISOR for s in specs.values())


def word_waiting(channel: Channel) -> bool:
    """Whether the supervisor's next frame (or its EOF) is already readable on ``channel``,
    without taking it."""
    try:
        channel.sock.recv(1, _PEEK_NOW)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # a reset peer: receive_one says so at once
    return True  # a frame's first byte, or b"" at EOF


def rehearse_start(specs: dict[str, ChildSpec]) -> None:
    """In a spare: touch what becoming a child will touch, without side effects: each first
    write to a page shared with the zygote is a copy-on-write fault (several microseconds in
    a VM), and taking them now takes them off the restart's critical path."""
    encode_frame(ReadyFrame(pid=os.getpid(), mono=time.monotonic()))
    _become_decoder.decode(_encoder.encode(Become("key", "spec", ())))
    # A few specs only: each one touched is a fault, and a pool of 1,000 has one start class.
    starts = {id(spec.start): spec.start for spec in itertools.islice(specs.values(), 16)}
    for start in starts.values():
        if isinstance(start, str):
            continue  # resolving it may import: done by the child it is meant for
        if isinstance(start, type) and issubclass(start, Worker):
            _ = (start.init, start.handle_call, start.handle_cast, start.handle_info)
        inspect.isawaitable(start)


def knows(specs: dict[str, ChildSpec], key: str, spec: ChildSpec) -> bool:
    """Whether a spare holding ``specs`` can become child ``key`` started from ``spec``: it
    must have the very spec, or for a dynamic child (``key != spec.id``) its template."""
    known = specs.get(spec.id)
    if known is None or known.start is not spec.start:
        return False
    return key != spec.id or known is spec


def proc_name(spec: ChildSpec, key: str) -> str:
    prefix = "prism-sup:" if spec.type is ChildType.SUPERVISOR else "prism:"
    return prefix + key


def run_child(spec: ChildSpec, channel: Channel, path: tuple[str, ...], node: str,
              prepared: WorkerContext | None = None,
              after_ready: Callable[[], None] | None = None) -> int:
    """The body of a freshly forked (or freshly assigned) child process; ``prepared`` is a
    spare's ready-made worker context (dropped if the child is a supervisor); ``after_ready``
    (a lone start: the node's shared spare), called once a worker's ``ready`` is sent (see
    ``run_worker``)."""
    try:
        start = resolve_start(spec.start)
        if spec.type is ChildType.SUPERVISOR and not isinstance(start, SupervisorSpec) \
                and callable(start):
            try:
                start = start(*spec.args)  # a supervisor's init: its Ignore is OTP's ignore
            except Ignore:
                channel.try_send(IgnoredFrame())
                return 0
        if isinstance(start, SupervisorSpec):
            if spec.type is not ChildType.SUPERVISOR:
                raise ChildSpecError("type", spec.type.value,  # type: ignore[union-attr]
                                     f"start {spec.start!r} is a SupervisorSpec; "
                                     f"declare type='supervisor'")
            if prepared is not None:
                prepared.close_unused()
            from ._runtime import SupervisorRuntime  # noqa: PLC0415 - the two call each other

            return SupervisorRuntime(start, channel, path, node).run()
    except BaseException as exc:  # noqa: BLE001 - a start failure is reported as data
        channel.try_send(ExitingFrame(reason_from_exception(exc)))
        return 1
    info = current()
    if info is not None:  # its print() goes to its log file, as a program's output does
        capture_prints(info.data_dir, path)
    return run_worker(start, spec.args, channel, node, path[-1] if path else "", prepared,
                      after_ready)


