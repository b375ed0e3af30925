import pytest

from agent.errors import InvalidManifest
from agent.rbac.evaluator import Grant
from agent.rbac.policy_rule import PolicyRule
from agent.rbac.rbac_objects import grants_for
from agent.rbac.subject import Subject

SA = Subject("ServiceAccount", "web", "shop")
V1 = "rbac.authorization.k8s.io/v1"
BOUND = [{"kind": "ServiceAccount", "name": "web", "namespace": "shop"}]


def role(kind, name, rules, namespace=None):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": V1, "kind": kind, "metadata": meta, "rules": rules}


def binding(kind, name, ref_kind, ref_name, namespace=None, subjects=BOUND):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": V1, "kind": kind, "metadata": meta, "subjects": subjects,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": ref_name}}


RULE = {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}


def test_grants_through_each_kind_of_binding():
    objects = [role("ClusterRole", "c", [RULE]), role("Role", "r", [RULE], "shop"), role("Role", "r", [RULE], "other"),
               binding("ClusterRoleBinding", "cb", "ClusterRole", "c"),
               binding("RoleBinding", "rb", "Role", "r", "shop"),
               binding("RoleBinding", "rc", "ClusterRole", "c", "other"),
               binding("RoleBinding", "not-us", "Role", "r", "other", subjects=[{"kind": "User", "name": "jane"}]),
               {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "shop"}}]
    rule = PolicyRule(("list",), ("",), ("pods",))
    assert grants_for(objects, SA).grants == (
        Grant("ClusterRoleBinding cb", "ClusterRole c", None, (rule,)),
        Grant("RoleBinding other/rc", "ClusterRole c", "other", (rule,)),
        Grant("RoleBinding shop/rb", "Role shop/r", "shop", (rule,)))


def test_a_missing_role_is_reported():
    held = grants_for([binding("ClusterRoleBinding", "cb", "ClusterRole", "gone")], SA)
    assert held.grants == () and held.missing == (
        "ClusterRoleBinding cb refers to ClusterRole gone, which the input does not hold",)


@pytest.mark.parametrize("obj", [
    role("ClusterRole", "c", "not a list"),
    role("ClusterRole", "c", [{"verbs": "get"}]),
    role("ClusterRole", "c", ["rule"]),
    {"apiVersion": V1, "kind": "ClusterRole", "metadata": {}},
    binding("ClusterRoleBinding", "cb", "Role", "r"),
    {**binding("ClusterRoleBinding", "cb", "ClusterRole", "c"), "roleRef": "c"},
])
def test_malformed_rbac_is_refused_with_its_name(obj):
    with pytest.raises(InvalidManifest):
        grants_for([role("ClusterRole", "c", [RULE]), obj], SA)
