"""The child's side of supervision: which spare may become which child."""

from __future__ import annotations

import msgspec

import prismatic as p
from prismatic.supervisors._child import knows, proc_name
from tests.apps import Idle


def test_a_spare_serves_the_very_spec_it_was_made_with():
    spec = p.ChildSpec(id="db", start=Idle)
    assert knows({"db": spec}, "db", spec)


def test_a_replaced_spec_of_the_same_id_is_not_served():
    old = p.ChildSpec(id="db", start=Idle)
    new = msgspec.structs.replace(old, restart="transient")
    assert not knows({"db": old}, "db", new)
    assert not knows({}, "db", old)


def test_a_dynamic_child_is_served_from_its_template_with_other_args():
    template = p.ChildSpec(id="job", start=Idle)
    child = msgspec.structs.replace(template, args=("x",))
    assert knows({"job": template}, "job-3", child)  # key != id: a dynamic child
    other = p.ChildSpec(id="job", start=p.Worker)
    assert not knows({"job": template}, "job-3", other)  # not the template's start


def test_process_names_say_what_the_process_is():
    assert proc_name(p.ChildSpec(id="db", start=Idle), "db") == "prism:db"
    sup = p.ChildSpec(id="pool", start=p.SupervisorSpec(), type="supervisor")
    assert proc_name(sup, "pool") == "prism-sup:pool"
