"""agent/k8s/objects.py: the one field reader. Absent and null read as empty, a wrong JSON type is named with the
object and the field path."""

import pytest

from agent.errors import InvalidManifest
from agent.k8s.facts import OwnerRef
from agent.k8s.objects import (boolean_field, json_type, list_field, object_field, object_key,
                               owner_references, pod_phase, string_field, strings_field)


@pytest.mark.parametrize("value, name", [({}, "object"), ([], "list"), ("", "string"), (True, "boolean"),
                                         (1, "number"), (1.5, "number"), (None, "null")])
def test_json_type_names_what_the_user_wrote(value, name):
    assert json_type(value) == name


@pytest.mark.parametrize("reader, value, expected", [
    (object_field, None, {}), (object_field, {"a": 1}, {"a": 1}),
    (string_field, None, ""), (string_field, "x", "x"),
    (boolean_field, None, False), (boolean_field, True, True), (boolean_field, False, False),
    (list_field, None, []), (list_field, [1, "a"], [1, "a"]),
    (strings_field, None, ()), (strings_field, ["a", "b"], ("a", "b")),
])
def test_absent_and_well_formed_fields_read_as_given(reader, value, expected):
    assert reader(value, "Pod ns/p", "spec.x") == expected


@pytest.mark.parametrize("reader, value, message", [
    (object_field, "x", "spec.x must be an object, got string"),
    (string_field, ["x"], "spec.x must be a string, got list"),
    (boolean_field, "false", "spec.x must be a boolean, got string"),
    (boolean_field, 0, "spec.x must be a boolean, got number"),
    (list_field, "abc", "spec.x must be a list, got string"),
    (strings_field, ["a", 2], "spec.x[1] must be a string, got number"),
])
def test_a_wrong_type_names_the_object_and_the_path(reader, value, message):
    with pytest.raises(InvalidManifest) as err:
        reader(value, "Pod ns/p", "spec.x")
    assert str(err.value) == f"Pod ns/p: {message}"


def test_string_default_is_the_callers():
    assert string_field(None, "Pod ns/p", "spec.containers[0].name", "<unnamed>") == "<unnamed>"


def test_object_key_reads_the_envelope():
    assert object_key({"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}) == ("Pod", "ns", "p")
    assert object_key({"metadata": {"name": "p"}}, "Pod") == ("Pod", None, "p")


@pytest.mark.parametrize("pod, phase", [({}, ""), ({"status": None}, ""), ({"status": {}}, ""),
                                        ({"status": {"phase": "Running"}}, "Running")])
def test_pod_phase(pod, phase):
    assert pod_phase(pod) == phase


def test_pod_phase_of_the_wrong_type_names_the_pod():
    with pytest.raises(InvalidManifest, match="^Pod ns/p: status.phase must be a string, got number$"):
        pod_phase({"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": 1}})


def test_owner_references():
    raw = [{"kind": "ReplicaSet", "name": "web-5d", "controller": True}, {"kind": "ConfigMap", "name": "c"}]
    assert owner_references(raw, "Pod ns/p") == (OwnerRef("ReplicaSet", "web-5d", True), OwnerRef("ConfigMap", "c"))
    assert owner_references(None, "Pod ns/p") == ()
    with pytest.raises(InvalidManifest, match=r"^Pod ns/p: metadata.ownerReferences\[1\].name must be a string"):
        owner_references([raw[0], {"kind": "Job", "name": 3}], "Pod ns/p")
