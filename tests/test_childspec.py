"""Child specs and flags fail at definition time, naming the field and the value."""

import pytest

import prismatic as p


class W(p.Worker):
    pass


def test_defaults_are_otps():
    c = p.ChildSpec(id="w", start=W)
    assert c.restart is p.RestartType.PERMANENT and c.shutdown == 5.0
    assert c.type is p.ChildType.WORKER and c.significant is False
    s = p.ChildSpec(id="s", start=p.SupervisorSpec())
    assert s.type is p.ChildType.SUPERVISOR and s.shutdown is p.ShutdownKind.INFINITY
    f = p.SupFlags()
    assert (f.strategy, f.intensity, f.period, f.auto_shutdown) == (
        p.Strategy.ONE_FOR_ONE, 1, 5.0, p.AutoShutdown.NEVER)


def test_strings_normalize_to_enums():
    c = p.ChildSpec(id="w", start=W, restart="transient", shutdown="brutal_kill")
    assert c.restart is p.RestartType.TRANSIENT and c.shutdown is p.ShutdownKind.BRUTAL_KILL


@pytest.mark.parametrize("kwargs, field", [
    (dict(id="", start=W), "id"),
    (dict(id="a/b", start=W), "id"),
    (dict(id="a.b", start=W), "id"),
    (dict(id=3, start=W), "id"),
    (dict(id="w", start=object), "start"),
    (dict(id="w", start=42), "start"),
    (dict(id="w", start="nocolon"), "start"),
    (dict(id="w", start=W, restart="sometimes"), "restart"),
    (dict(id="w", start=W, shutdown=-0.001), "shutdown"),
    (dict(id="w", start=W, shutdown=-1.5), "shutdown"),
    (dict(id="w", start=W, shutdown=float("inf")), "shutdown"),
    (dict(id="w", start=W, shutdown="later"), "shutdown"),
    (dict(id="w", start=W, type="manager"), "type"),
    (dict(id="w", start=W, type="supervisor"), "type"),
    (dict(id="w", start=W, significant=True), "significant"),
    (dict(id="w", start=W, significant="yes", restart="transient"), "significant"),
    (dict(id="w", start=W, args=5), "args"),
])
def test_invalid_child_spec_names_the_field(kwargs, field):
    with pytest.raises(p.ChildSpecError) as err:
        p.ChildSpec(**kwargs)
    assert err.value.field == field
    assert field in str(err.value) and repr(kwargs[field]) in str(err.value)


@pytest.mark.parametrize("kwargs, field", [
    (dict(strategy="one_for_some"), "strategy"),
    (dict(intensity=-1), "intensity"),
    (dict(intensity=1.5), "intensity"),
    (dict(period=0), "period"),
    (dict(auto_shutdown="sometimes"), "auto_shutdown"),
])
def test_invalid_flags_name_the_field(kwargs, field):
    with pytest.raises(p.ChildSpecError) as err:
        p.SupFlags(**kwargs)
    assert err.value.field == field


def test_check_child_specs():
    a = p.ChildSpec(id="a", start=W)
    p.check_child_specs([a, p.ChildSpec(id="b", start=W)])
    with pytest.raises(p.ChildSpecError, match="duplicate"):
        p.check_child_specs([a, a])
    sig = p.ChildSpec(id="s", start=W, restart="transient", significant=True)
    p.check_child_specs([sig], "any_significant")
    with pytest.raises(p.ChildSpecError, match="auto_shutdown is never"):
        p.check_child_specs([sig], "never")
    with pytest.raises(p.ChildSpecError):
        p.check_child_specs(["not a spec"])


def test_supervisor_spec_validation():
    with pytest.raises(p.ChildSpecError) as err:
        p.SupervisorSpec(flags=p.SupFlags(strategy="simple_one_for_one"), children=[])
    assert err.value.field == "children"
    with pytest.raises(p.ChildSpecError):
        p.SupervisorSpec(children=[p.ChildSpec(id="a", start=W)] * 2)


def test_a_spec_crosses_the_wire_and_comes_back_validated():
    import msgspec

    from prismatic._childspec import spec_from_wire, spec_to_wire

    inner = p.SupervisorSpec(flags=p.SupFlags(strategy="one_for_all"), name="inner_sup",
                             children=[p.ChildSpec(id="w", start=W, args=(1, "x"), shutdown=0)])
    spec = p.ChildSpec(id="s", start=inner, restart="transient")
    back = spec_from_wire(msgspec.msgpack.decode(msgspec.msgpack.encode(spec_to_wire(spec))))
    assert back.restart is p.RestartType.TRANSIENT and back.type is p.ChildType.SUPERVISOR
    assert back.start.name == "inner_sup" and back.start.flags == inner.flags
    assert back.start.children[0] == p.ChildSpec(id="w", start=f"{__name__}:W", args=(1, "x"),
                                                 shutdown=0)
    with pytest.raises(p.ChildSpecError):
        spec_from_wire({"id": "w", "start": "m:f", "shutdown": -1})


@pytest.mark.parametrize("name", ["", "a/b", "@a", "a b", "x" * 65, 3])
def test_a_supervisor_name_is_validated(name):
    with pytest.raises(p.ChildSpecError) as err:
        p.SupervisorSpec(name=name)
    assert err.value.field == "name"
