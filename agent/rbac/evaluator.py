"""An RBAC evaluator: does a rule, and do the roles bound to a subject, allow a request?

Written from the upstream rules (pkg/apis/rbac/v1 evaluation helpers and the RBAC authorizer):
- verbs, apiGroups, nonResourceURLs and resources match exactly or by `*`;
- a rule naming `*/sub` matches every resource's subresource `sub`; `pods` alone does not match `pods/log`;
- resourceNames empty means every name; otherwise the request's name must be listed (a request without a name,
  list or create, is then not matched);
- a nonResourceURL ending in `*` matches every path it is a prefix of (after dropping the `*`);
- a resource request is allowed by a rule with resources, a non-resource request only by one with
  nonResourceURLs;
- ClusterRoleBindings grant everywhere; a RoleBinding grants only requests in its own namespace, and never a
  cluster-scoped or non-resource request.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.rbac.attributes import Request
from agent.rbac.policy_rule import PolicyRule

ALL = "*"


def verb_matches(rule: PolicyRule, verb: str) -> bool:
    return ALL in rule.verbs or verb in rule.verbs


def api_group_matches(rule: PolicyRule, group: str) -> bool:
    return ALL in rule.api_groups or group in rule.api_groups


def resource_matches(rule: PolicyRule, combined: str, subresource: str) -> bool:
    for resource in rule.resources:
        if resource == ALL or resource == combined:
            return True
        if subresource and resource == f"*/{subresource}":
            return True
    return False


def resource_name_matches(rule: PolicyRule, name: str) -> bool:
    return not rule.resource_names or name in rule.resource_names


def non_resource_url_matches(rule: PolicyRule, path: str) -> bool:
    for url in rule.non_resource_urls:
        if url == ALL or url == path:
            return True
        if url.endswith("*") and path.startswith(url.rstrip("*")):
            return True
    return False


def rule_allows(rule: PolicyRule, request: Request) -> bool:
    if request.resource_request:
        return (verb_matches(rule, request.verb) and api_group_matches(rule, request.api_group)
                and resource_matches(rule, request.combined_resource, request.subresource)
                and resource_name_matches(rule, request.name))
    return verb_matches(rule, request.verb) and non_resource_url_matches(rule, request.path)


@dataclass(frozen=True)
class Grant:
    """Rules a binding gives the subject, where they apply: namespace None for a ClusterRoleBinding (everywhere,
    non-resource URLs too), else that namespace only."""

    binding: str
    role: str
    namespace: str | None
    rules: tuple[PolicyRule, ...]

    def applies_to(self, request: Request) -> bool:
        if self.namespace is None:
            return True
        return request.resource_request and request.namespace == self.namespace

    def allows(self, request: Request) -> bool:
        return self.applies_to(request) and any(rule_allows(rule, request) for rule in self.rules)


def allowed(grants, request: Request) -> bool:
    return any(grant.allows(request) for grant in grants)
