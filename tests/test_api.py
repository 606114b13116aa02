"""The public surface: ``import prismatic`` exports exactly this, and the layers install."""

import prismatic
import prismatic.supervisors
import prismatic.transports

EXPECTED = {
    "Worker", "Stop", "Ignore",
    "ChildSpec", "SupFlags", "SupervisorSpec", "check_child_specs",
    "RestartType", "ChildType", "ShutdownKind", "Strategy", "AutoShutdown",
    "ExitReason", "Normal", "Shutdown", "Crashed", "Killed", "ExitCode", "NoProc",
    "is_abnormal", "describe",
    "Pid", "ChildInfo",
    "connect", "NodeConnection", "open_event_stream", "EventStream",
    "PrismaticError", "ChildSpecError", "SupervisorError", "StartError", "NodeError",
    "ControlError", "EventLogError", "EventLogFormatError", "EventLogFullError",
    "Caller", "Down", "Exit",
    "CallError", "CallTimeout", "ProcessDown", "NoProcError", "MailboxFull", "RegistryError",
    "Event", "Subscription", "open_subscription", "PubSubError", "TopicError",
}


def test_public_exports_are_pinned():
    assert set(prismatic.__all__) == EXPECTED
    assert len(prismatic.__all__) == len(EXPECTED)
    for name in EXPECTED:
        assert getattr(prismatic, name) is not None


def test_layers_install_under_prismatic():
    assert prismatic.supervisors.decide is not None
    assert prismatic.transports.Channel is not None


def test_one_error_tree():
    for name in EXPECTED:
        obj = getattr(prismatic, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, prismatic.PrismaticError)
