"""Recorded requests -> the fewest rules that allow exactly them, per namespace and cluster-wide.

Each request is an atom (apiGroup, resource[/subresource], verb, name). Atoms merge only along one dimension
at a time among rules alike in every other, so the merged rules allow what the atoms allow and nothing more:
names per (group, resource, verb), then verbs per (group, resource, names), then resources per (group, verbs,
names). A named atom that an unnamed one of the same kind already covers, and a namespaced one that the
cluster-wide rules already cover, are dropped first.

Widening happens only when asked, as audit2rbac does it: `expand_multi_name` drops the name of a request made
on two or more names alike (same verb, group, resource, namespace), `expand_multi_namespace` makes a request
made in two or more namespaces alike cluster-wide. Non-resource URLs under the discovery prefixes audit2rbac
grants as `/api*`, `/openapi*` and `/swagger*` are written in that form.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from agent.rbac.attributes import Request
from agent.rbac.policy_rule import PolicyRule

CLUSTER = ""
DISCOVERY_PREFIXES = ("/api", "/openapi", "/swagger")


@dataclass(frozen=True)
class Options:
    expand_multi_name: bool = False
    expand_multi_namespace: bool = False


def url_rule_path(path: str) -> str:
    """The nonResourceURL a recorded path is granted as."""
    for prefix in DISCOVERY_PREFIXES:
        if path.startswith(prefix):
            return prefix + "*"
    return path


def expand(requests: Iterable[Request], options: Options) -> set[Request]:
    """The requests, with names and namespaces dropped where the options widen them."""
    requests = set(requests)
    if not (options.expand_multi_name or options.expand_multi_namespace):
        return requests
    names, namespaces = defaultdict(set), defaultdict(set)

    def key(request: Request) -> Request:
        return request._replace(name="" if options.expand_multi_name else request.name,
                                namespace="" if options.expand_multi_namespace else request.namespace)

    for request in requests:
        if request.resource_request:
            if request.name:
                names[key(request)].add(request.name)
            if request.namespace:
                namespaces[key(request)].add(request.namespace)
    out = set()
    for request in requests:
        if request.resource_request:
            k = key(request)
            if options.expand_multi_name and len(names[k]) > 1:
                request = request._replace(name="")
            if options.expand_multi_namespace and len(namespaces[k]) > 1:
                request = request._replace(namespace="")
        out.add(request)
    return out


def _resource_rules(atoms: set[tuple[str, str, str, str]]) -> list[PolicyRule]:
    names = defaultdict(set)
    for group, resource, verb, name in atoms:
        names[(group, resource, verb)].add(name)
    verbs = defaultdict(set)
    for (group, resource, verb), named in names.items():
        verbs[(group, resource, () if "" in named else tuple(sorted(named)))].add(verb)
    resources = defaultdict(set)
    for (group, resource, named), verb_set in verbs.items():
        resources[(group, tuple(sorted(verb_set)), named)].add(resource)
    rules = [PolicyRule(verbs=verb_set, api_groups=(group,), resources=tuple(sorted(resource_set)),
                        resource_names=named)
             for (group, verb_set, named), resource_set in resources.items()]
    return sorted(rules, key=PolicyRule.sort_key)


def _url_rules(atoms: set[tuple[str, str]]) -> list[PolicyRule]:
    verbs = defaultdict(set)
    for url, verb in atoms:
        verbs[url].add(verb)
    urls = defaultdict(set)
    for url, verb_set in verbs.items():
        urls[tuple(sorted(verb_set))].add(url)
    rules = [PolicyRule(verbs=verb_set, non_resource_urls=tuple(sorted(url_set))) for verb_set, url_set in urls.items()]
    return sorted(rules, key=PolicyRule.sort_key)


def _covered(atom: tuple[str, str, str, str], atoms: set) -> bool:
    group, resource, verb, name = atom
    return bool(name) and (group, resource, verb, "") in atoms


def compact(requests: Iterable[Request], options: Options = Options()) -> dict[str, list[PolicyRule]]:
    """Rules per namespace; CLUSTER ("") holds the cluster-wide ones (cluster-scoped resources, requests made
    across namespaces, non-resource URLs). Namespaces without rules are absent."""
    scoped: dict[str, set] = defaultdict(set)
    urls = set()
    for request in expand(requests, options):
        if request.resource_request:
            scoped[request.namespace].add((request.api_group, request.combined_resource, request.verb,
                                           request.name))
        else:
            urls.add((url_rule_path(request.path), request.verb))
    cluster = scoped.get(CLUSTER, set())
    out = {}
    for namespace in sorted(scoped):
        atoms = scoped[namespace]
        kept = {atom for atom in atoms if not _covered(atom, atoms)}
        if namespace != CLUSTER:
            kept = {atom for atom in kept if atom not in cluster and not _covered(atom, cluster)}
        if kept:
            out[namespace] = _resource_rules(kept)
    if urls:
        out[CLUSTER] = out.get(CLUSTER, []) + _url_rules(urls)
    return out
