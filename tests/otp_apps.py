"""Trees for tests/test_otp.py: the cases of OTP's supervisor_SUITE where Prismatic
diverged (a supervisor's ignore, shutdown 0, a Stop from terminate, simple_one_for_one with
auto_shutdown) and the supervisor API OTP users reach for (get_childspec, which_child, a
start's extra info, registered supervisor names)."""

from __future__ import annotations

import time

import prismatic as p


class Sleepy(p.Worker):
    """Takes 30 s over terminate: only a kill stops it promptly."""

    def terminate(self, reason: p.ExitReason) -> None:
        time.sleep(30)


class ShutdownTest(p.Worker):
    """Ends with {shutdown, test} from terminate, as supervisor_SUITE's child does."""

    def terminate(self, reason: p.ExitReason) -> None:
        raise p.Stop(p.Shutdown("test"))


class WithInfo(p.Worker):
    """``init`` returns extra info: OTP's ``{ok, Pid, Info}``."""

    def init(self, info: object = "hello") -> object:
        return {"started": info}


class AsyncWithInfo(p.Worker):
    async def init(self) -> object:
        return ["async", 1]


def ignoring_sup() -> p.SupervisorSpec:
    """A supervisor whose init returns ignore."""
    raise p.Ignore()


def auto_shutdown_pool() -> p.SupervisorSpec:
    """simple_one_for_one with auto_shutdown: OTP's bad_combination."""
    return p.SupervisorSpec(
        flags=p.SupFlags(strategy="simple_one_for_one", auto_shutdown="any_significant"),
        children=[p.ChildSpec(id="w", start=p.Worker, restart="temporary")])


class Unsendable(p.Worker):
    def init(self) -> object:
        return object()  # cannot cross the wire: the start fails, saying why


class Opaque:
    pass


class Holder(p.Worker):
    def init(self, thing: object) -> None:
        self.thing = thing


def named_pool() -> p.SupervisorSpec:
    """A supervisor registered as ``pool_sup`` (OTP's ``{local, pool_sup}``)."""
    return p.SupervisorSpec(name="pool_sup", children=[
        p.ChildSpec(id="w", start=WithInfo, args=("static",))])


def jobs() -> p.SupervisorSpec:
    return p.SupervisorSpec(flags=p.SupFlags(strategy="simple_one_for_one"), children=[
        p.ChildSpec(id="job", start=WithInfo, restart="temporary", shutdown="brutal_kill")])


def tree() -> p.SupervisorSpec:
    return p.SupervisorSpec(flags=p.SupFlags(intensity=100, period=5), children=[
        p.ChildSpec(id="quiet", start=ignoring_sup, type="supervisor"),
        p.ChildSpec(id="sudden", start=Sleepy, shutdown=0),
        p.ChildSpec(id="polite", start=ShutdownTest),
        p.ChildSpec(id="pool", start=named_pool, type="supervisor"),
        p.ChildSpec(id="jobs", start=jobs(), restart="transient"),
        # args that msgpack cannot carry: its spec cannot be sent to a client
        p.ChildSpec(id="opaque", start=Holder, args=(Opaque(),)),
    ])
