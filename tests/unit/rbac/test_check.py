from agent.rbac.attributes import non_resource_request as nr, resource_request as rr
from agent.rbac.check import check
from agent.rbac.evaluator import Grant
from agent.rbac.policy_rule import PolicyRule


def grant(*rules, namespace=None):
    return Grant("ClusterRoleBinding b", "ClusterRole r", namespace, tuple(rules))


def test_denied_and_unused():
    rules = grant(PolicyRule(("list", "watch"), ("",), ("pods", "nodes")), PolicyRule(("create",), ("",), ("events",)))
    result = check([(rr("list", "", "pods"), 3), (rr("watch", "", "pods"), 1), (rr("get", "", "secrets", namespace="a", name="s"), 2)],
                   (rules,))
    assert result.denied == ((rr("get", "", "secrets", namespace="a", name="s"), 2),)
    assert [(u.rule, u.unused) for u in result.unused] == [(1, ("list nodes", "watch nodes")), (2, ("create events",))]
    assert not result.ok


def test_everything_used_and_allowed():
    rules = grant(PolicyRule(("get",), ("",), ("secrets",), ("s",)), PolicyRule(("get",), non_resource_urls=("/metrics",)))
    result = check([(rr("get", "", "secrets", namespace="a", name="s"), 1), (nr("get", "/metrics"), 1)], (rules,))
    assert result.ok


def test_named_atoms_and_wildcards():
    named = grant(PolicyRule(("get",), ("",), ("secrets",), ("s", "t")))
    assert [u.unused for u in check([(rr("get", "", "secrets", name="s"), 1)], (named,)).unused] == [("get secrets t",)]
    wide = grant(PolicyRule(("*",), ("",), ("pods",)), PolicyRule(("get",), ("",), ("*/status",)))
    result = check([(rr("delete", "", "pods", name="p"), 1)], (wide,))
    assert [(u.rule, u.unused) for u in result.unused] == [(2, ("get */status (apiGroups \"\")",))]


def test_a_role_binding_covers_only_its_namespace():
    local = grant(PolicyRule(("list",), ("",), ("pods",)), namespace="a")
    result = check([(rr("list", "", "pods", namespace="b"), 1)], (local,))
    assert result.denied == ((rr("list", "", "pods", namespace="b"), 1),)
    assert [u.unused for u in result.unused] == [("list pods",)]


def test_discovery_is_allowed_by_the_default_roles():
    assert check([(nr("get", "/apis/apps/v1"), 1), (nr("get", "/healthz"), 1), (nr("get", "/version"), 1)], ()).ok
    assert check([(nr("get", "/metrics"), 1)], ()).denied == ((nr("get", "/metrics"), 1),)
    assert check([(nr("post", "/apis"), 1)], ()).denied
