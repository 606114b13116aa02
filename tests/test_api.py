"""The public surface: ``import prismatic`` exports exactly this, and the layers install."""

import typing

import prismatic
import prismatic.supervisors
import prismatic.transports

EXPECTED = {
    "Worker", "Stop", "Ignore",
    "Program", "PortCheck", "HttpCheck", "FileCheck", "LineCheck", "NotifyCheck",
    "ChildSpec", "SupFlags", "SupervisorSpec", "check_child_specs",
    "RestartType", "ChildType", "ShutdownKind", "Strategy", "AutoShutdown",
    "ExitReason", "Normal", "Shutdown", "Crashed", "Killed", "ExitCode", "NoProc",
    "NoConnection",
    "is_abnormal", "describe",
    "Pid", "ChildInfo",
    "connect", "NodeConnection", "open_event_stream", "EventStream",
    "PrismaticError", "ChildSpecError", "SupervisorError", "StartError", "NodeError",
    "ControlError", "EventLogError", "EventLogFormatError", "EventLogFullError",
    "Caller", "Down", "Exit", "GlobalNameConflict", "Global",
    "CallError", "CallTimeout", "ProcessDown", "NoProcError", "MailboxFull", "RegistryError",
    "Event", "Subscription", "open_subscription", "PubSubError", "TopicError",
}


def test_public_exports_are_pinned():
    assert set(prismatic.__all__) == EXPECTED
    assert len(prismatic.__all__) == len(EXPECTED)
    for name in EXPECTED - {"ExitReason"}:
        obj = getattr(prismatic, name)  # the thing itself, defined inside the package
        assert obj.__name__ == name and obj.__module__.startswith("prismatic."), (name, obj)
    # the exit reason union: exactly the six reasons, each exported too
    assert typing.get_args(prismatic.ExitReason) == (
        prismatic.Normal, prismatic.Shutdown, prismatic.Crashed, prismatic.Killed,
        prismatic.ExitCode, prismatic.NoProc, prismatic.NoConnection)


def test_layers_install_under_prismatic():
    from prismatic.supervisors._decide import decide
    from prismatic.supervisors._events import Init, Ready
    from prismatic.transports._channel import Channel, open_channel_pair
    from prismatic.transports._frames import ReadyFrame

    assert prismatic.supervisors.__name__ == "prismatic.supervisors"
    assert prismatic.transports.__name__ == "prismatic.transports"
    assert prismatic.supervisors.decide is decide
    assert prismatic.transports.Channel is Channel
    # and they work: a supervisor with no children starts and is ready at once ...
    _, actions = decide(prismatic.supervisors.initial_state(prismatic.SupFlags(), ()),
                        Init(0.0))
    assert actions == [Ready()]
    # ... and a channel carries a frame
    a, b = open_channel_pair()
    a.send(ReadyFrame(pid=7, mono=1.0))
    assert b.receive(block=True) == [ReadyFrame(pid=7, mono=1.0)]
    a.close()
    b.close()


def test_one_error_tree():
    for name in EXPECTED:
        obj = getattr(prismatic, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, prismatic.PrismaticError)
