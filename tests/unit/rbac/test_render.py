"""Rendered objects: valid for Kubernetes 1.36 and 1.37 (kubernetes-validate, strict), named and labelled as
generated, in a fixed order."""

import pytest

from agent.errors import InvalidInput
from agent.rbac.attributes import non_resource_request as nr, resource_request as rr
from agent.rbac.compaction import compact
from agent.rbac.render import GENERATED_LABEL, SUBJECT_LABEL, label_value, object_name, parse_pairs, render
from agent.rbac.subject import Subject

SA = Subject("ServiceAccount", "web", "shop")
JANE = Subject("User", "jane@example.com")
VERSIONS = ["1.36.0", "1.37.0"]
REQUESTS = [rr("get", "", "pods", "log", "shop", "p"), rr("list", "", "pods", namespace="shop"),
            rr("create", "", "events", namespace="other"), rr("list", "storage.k8s.io", "csidrivers"),
            rr("get", "", "nodes", name="n1"), nr("get", "/healthz"), nr("get", "/apis/apps/v1")]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("subject", [SA, JANE], ids=["serviceaccount", "user"])
def test_objects_validate_strictly(version, subject):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objects = render(compact(REQUESTS), subject, object_name("rbac-generate", subject), {"team": "shop"},
                     {"note": "from the audit log of 2026-11-30"})
    assert [(o["kind"], o["metadata"].get("namespace")) for o in objects] == [
        ("Role", "other"), ("Role", "shop"), ("ClusterRole", None),
        ("RoleBinding", "other"), ("RoleBinding", "shop"), ("ClusterRoleBinding", None)]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_a_wrong_object_is_caught_by_the_validator():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    role = render(compact(REQUESTS), SA, "x")[0]
    role["rules"][0]["verb"] = ["get"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, "1.37.0", strict=True)


def test_names_labels_and_subjects():
    assert object_name("rbac-generate", SA) == "rbac-generate:system:serviceaccount:shop:web"
    assert object_name("p", JANE) == "p:jane-example-com"
    assert label_value("system:serviceaccount:shop:" + "w" * 80) == ("system-serviceaccount-shop-" + "w" * 80)[:63]
    objects = render(compact([rr("list", "", "pods")]), JANE, "n", {"team": "a"}, {"k": "v"})
    binding = objects[1]
    assert binding["subjects"] == [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "jane@example.com"}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "n"}
    assert binding["metadata"]["labels"] == {GENERATED_LABEL: "true", SUBJECT_LABEL: "jane-example-com", "team": "a"}
    assert binding["metadata"]["annotations"] == {"k": "v"}
    assert render(compact([rr("list", "", "pods", namespace="a")]), SA, "n")[1]["subjects"] == [
        {"kind": "ServiceAccount", "name": "web", "namespace": "shop"}]


def test_rules_are_written_as_kubernetes_prints_them():
    rules = render(compact(REQUESTS), SA, "n")[2]["rules"]
    assert rules == [
        {"apiGroups": [""], "resources": ["nodes"], "resourceNames": ["n1"], "verbs": ["get"]},
        {"apiGroups": ["storage.k8s.io"], "resources": ["csidrivers"], "verbs": ["list"]},
        {"nonResourceURLs": ["/api*", "/healthz"], "verbs": ["get"]},
    ]


@pytest.mark.parametrize("text,expected", [
    ("a=b", {"a": "b"}), ("a=b,c=", {"a": "b", "c": ""}), ("example.com/a=b", {"example.com/a": "b"}), ("", {}),
])
def test_label_pairs(text, expected):
    assert parse_pairs(text, "labels", values_are_labels=True) == expected


@pytest.mark.parametrize("text", ["a", "=b", "a b=c", "a=b c", "a=-b", "Example.com/a=b", "a=" + "x" * 64, "/a=b"])
def test_bad_label_pairs_are_refused(text):
    with pytest.raises(InvalidInput):
        parse_pairs(text, "labels", values_are_labels=True)


def test_annotation_values_are_free_text():
    assert parse_pairs("note=any text: here", "annotations", values_are_labels=False) == {"note": "any text: here"}
