import pytest

from agent.errors import InvalidManifest
from agent.rbac.policy_rule import PolicyRule


def test_object_form_round_trips_and_keeps_the_core_group():
    rule = PolicyRule(("get", "list"), ("",), ("pods", "pods/log"), ("a",))
    assert rule.to_json() == {"apiGroups": [""], "resources": ["pods", "pods/log"], "resourceNames": ["a"],
                              "verbs": ["get", "list"]}
    assert PolicyRule.from_json(rule.to_json(), "r") == rule
    urls = PolicyRule(("get",), non_resource_urls=("/healthz",))
    assert urls.to_json() == {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}
    assert PolicyRule.from_json(urls.to_json(), "r") == urls


def test_described_for_people():
    assert PolicyRule(("get",), ("", "apps"), ("pods",), ("a", "b")).describe() == 'get pods (apiGroups "",apps) named a,b'
    assert PolicyRule(("get", "post"), non_resource_urls=("/a", "/b*")).describe() == "get,post /a,/b*"


@pytest.mark.parametrize("data", ["rule", {"verbs": "get"}, {"verbs": ["get", 1]}, {"apiGroups": {"": 1}}])
def test_malformed_rules_are_refused(data):
    with pytest.raises(InvalidManifest, match="ClusterRole x rule 1"):
        PolicyRule.from_json(data, "ClusterRole x rule 1")


def test_sort_order_puts_resource_rules_first_by_group_then_resources():
    rules = [PolicyRule(("get",), non_resource_urls=("/a",)), PolicyRule(("get",), ("apps",), ("deployments",)),
             PolicyRule(("list",), ("",), ("pods",)), PolicyRule(("get",), ("",), ("configmaps",))]
    assert [r.resources or r.non_resource_urls for r in sorted(rules, key=PolicyRule.sort_key)] == [
        ("configmaps",), ("pods",), ("deployments",), ("/a",)]
