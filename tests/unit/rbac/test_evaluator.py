"""The RBAC evaluator against the upstream rules, one row per rule and edge."""

import pytest

from agent.rbac.attributes import non_resource_request as nr, resource_request as rr
from agent.rbac.evaluator import Grant, allowed, rule_allows
from agent.rbac.policy_rule import PolicyRule


def rule(verbs, groups=("",), resources=(), names=(), urls=()):
    return PolicyRule(tuple(verbs), tuple(groups) if resources else (), tuple(resources), tuple(names), tuple(urls))


CASES = [
    # verbs: exact or *
    (rule(["get"], resources=["pods"]), rr("get", "", "pods", name="p"), True),
    (rule(["get"], resources=["pods"]), rr("list", "", "pods"), False),
    (rule(["*"], resources=["pods"]), rr("deletecollection", "", "pods"), True),
    # apiGroups: exact or *; "" is the core group only
    (rule(["list"], groups=["apps"], resources=["deployments"]), rr("list", "apps", "deployments"), True),
    (rule(["list"], groups=[""], resources=["deployments"]), rr("list", "apps", "deployments"), False),
    (rule(["list"], groups=["*"], resources=["deployments"]), rr("list", "apps", "deployments"), True),
    # resources: exact, *, resource/subresource, */subresource
    (rule(["get"], resources=["*"]), rr("get", "", "pods", "log", name="p"), True),
    (rule(["get"], resources=["pods"]), rr("get", "", "pods", "log", name="p"), False),
    (rule(["get"], resources=["pods/log"]), rr("get", "", "pods", "log", name="p"), True),
    (rule(["get"], resources=["pods/log"]), rr("get", "", "pods", name="p"), False),
    (rule(["get"], resources=["*/log"]), rr("get", "", "pods", "log", name="p"), True),
    (rule(["get"], resources=["*/log"]), rr("get", "", "pods", name="p"), False),
    (rule(["get"], resources=["*/status"]), rr("get", "", "pods", "log", name="p"), False),
    (rule(["get"], resources=["*/og"]), rr("get", "", "pods", "log", name="p"), False),
    (rule(["get"], resources=["pods/*"]), rr("get", "", "pods", "log", name="p"), False),
    # resourceNames: empty is every name; otherwise the request must name one listed
    (rule(["get"], resources=["pods"], names=["a"]), rr("get", "", "pods", name="a"), True),
    (rule(["get"], resources=["pods"], names=["a"]), rr("get", "", "pods", name="b"), False),
    (rule(["list"], resources=["pods"], names=["a"]), rr("list", "", "pods"), False),
    (rule(["create"], resources=["pods"], names=["a"]), rr("create", "", "pods"), False),
    # nonResourceURLs: exact, *, trailing-* prefix
    (rule(["get"], urls=["/healthz"]), nr("get", "/healthz"), True),
    (rule(["get"], urls=["/healthz"]), nr("get", "/healthz/etcd"), False),
    (rule(["get"], urls=["/healthz*"]), nr("get", "/healthz/etcd"), True),
    (rule(["get"], urls=["/healthz/*"]), nr("get", "/healthz"), False),
    (rule(["get"], urls=["*"]), nr("get", "/anything"), True),
    (rule(["post"], urls=["/healthz"]), nr("get", "/healthz"), False),
    # a resource rule never allows a non-resource request, nor the reverse
    (rule(["*"], groups=["*"], resources=["*"]), nr("get", "/healthz"), False),
    (rule(["*"], urls=["*"]), rr("get", "", "pods", name="p"), False),
]


@pytest.mark.parametrize("policy,request_,expected", CASES, ids=[f"{i}" for i in range(len(CASES))])
def test_rule_allows(policy, request_, expected):
    assert rule_allows(policy, request_) is expected


def test_bindings_scope():
    rules = (rule(["get"], resources=["pods", "nodes"]), rule(["get"], urls=["/metrics"]))
    cluster = Grant("ClusterRoleBinding c", "ClusterRole r", None, rules)
    local = Grant("RoleBinding shop/b", "ClusterRole r", "shop", rules)
    assert allowed([cluster], rr("get", "", "pods", namespace="other", name="p"))
    assert allowed([cluster], nr("get", "/metrics"))
    assert allowed([local], rr("get", "", "pods", namespace="shop", name="p"))
    assert not allowed([local], rr("get", "", "pods", namespace="other", name="p"))
    assert not allowed([local], rr("get", "", "nodes", name="n"))  # cluster-scoped: only a ClusterRoleBinding
    assert not allowed([local], nr("get", "/metrics"))  # non-resource: only a ClusterRoleBinding
    assert not allowed([], nr("get", "/metrics"))
