"""Given RBAC against recorded requests: which requests it would deny, and what it grants that was never used.

A rule is read as the atoms it grants (each verb on each group/resource/name, or each verb on each URL). An
atom is used when a recorded request the rule's binding applies to matches it; a rule with a `*` cannot be
spelled out atom by atom, so it counts as unused only when no recorded request matches it at all. Every
authenticated identity can read the discovery and health endpoints through the default ClusterRoles
system:discovery and system:public-info-viewer, so those requests are allowed without a rule in the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Iterable

from agent.rbac.attributes import Request, non_resource_request, resource_request
from agent.rbac.evaluator import ALL, Grant, allowed, rule_allows
from agent.rbac.policy_rule import PolicyRule

# The nonResourceURLs the default discovery ClusterRoles grant every authenticated identity (bootstrap policy).
DEFAULT_GRANTS = (Grant("ClusterRoleBinding system:discovery", "ClusterRole system:discovery", None, (
    PolicyRule(verbs=("get",), non_resource_urls=("/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                                                  "/openapi", "/openapi/*", "/readyz", "/version", "/version/")),
)),)


@dataclass(frozen=True)
class UnusedGrant:
    binding: str
    role: str
    rule: int  # 1-based, as the rule stands in the role
    text: str  # the rule, described
    unused: tuple[str, ...]  # what it grants that nothing used; the whole rule when it has a `*`

    def to_json(self) -> dict:
        return {"binding": self.binding, "role": self.role, "rule": self.rule, "grants": self.text,
                "unused": list(self.unused)}


@dataclass(frozen=True)
class CheckResult:
    denied: tuple[tuple[Request, int], ...]  # (request, times made)
    unused: tuple[UnusedGrant, ...]

    @property
    def ok(self) -> bool:
        return not self.denied and not self.unused


def _atoms(rule: PolicyRule) -> list[Request] | None:
    """The requests a rule grants, one per atom; None when a `*` makes them uncountable."""
    if rule.non_resource_urls:
        if any(ALL in value for value in rule.verbs + rule.non_resource_urls):
            return None
        return [non_resource_request(verb, url) for url, verb in product(rule.non_resource_urls, rule.verbs)]
    if any(ALL in value for value in rule.verbs + rule.api_groups + rule.resources):
        return None
    atoms = []
    for group, resource, verb, name in product(rule.api_groups, rule.resources, rule.verbs,
                                               rule.resource_names or ("",)):
        base, _, sub = resource.partition("/")
        atoms.append(resource_request(verb, group, base, sub, "", name))
    return atoms


def _atom_used(atom: Request, requests: list[Request]) -> bool:
    for request in requests:
        if request.resource_request != atom.resource_request or request.verb != atom.verb:
            continue
        if not atom.resource_request:
            if request.path == atom.path:
                return True
            continue
        if (request.api_group == atom.api_group and request.combined_resource == atom.combined_resource
                and (not atom.name or atom.name == request.name)):
            return True
    return False


def check(requests: Iterable[tuple[Request, int]], grants: tuple[Grant, ...],
          defaults: tuple[Grant, ...] = DEFAULT_GRANTS) -> CheckResult:
    recorded = sorted(requests)
    denied = tuple((request, count) for request, count in recorded
                   if not allowed(grants, request) and not allowed(defaults, request))
    unused = []
    for grant in grants:
        reached = [request for request, _ in recorded if grant.applies_to(request)]
        for index, rule in enumerate(grant.rules, 1):
            matched = [request for request in reached if rule_allows(rule, request)]
            atoms = _atoms(rule)
            if atoms is None:
                idle = () if matched else (rule.describe(),)
            else:
                idle = tuple(atom.describe().replace(" (cluster-wide)", "") for atom in atoms
                             if not _atom_used(atom, matched))
            if idle:
                unused.append(UnusedGrant(grant.binding, grant.role, index, rule.describe(), idle))
    return CheckResult(denied, tuple(unused))
