"""Roles, ClusterRoles and their bindings read from Kubernetes objects, turned into the grants one subject
holds. Objects of other kinds are ignored; a binding whose role is missing from the input is reported, not
guessed at."""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import InvalidManifest
from agent.rbac.evaluator import Grant
from agent.rbac.policy_rule import PolicyRule
from agent.rbac.subject import RBAC_GROUP, Subject

ROLE_KINDS = ("Role", "ClusterRole")
BINDING_KINDS = ("RoleBinding", "ClusterRoleBinding")


@dataclass(frozen=True)
class SubjectGrants:
    grants: tuple[Grant, ...]
    missing: tuple[str, ...]  # "RoleBinding ns/x refers to Role ns/y, which the input does not hold"


def _meta(obj: dict, where: str) -> tuple[str, str]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise InvalidManifest(f"{where}: metadata.name is missing")
    namespace = meta.get("namespace") or ""
    if not isinstance(namespace, str):
        raise InvalidManifest(f"{where}: metadata.namespace must be a string")
    return namespace, meta["name"]


def _is_rbac(obj) -> bool:
    return (isinstance(obj, dict) and obj.get("kind") in ROLE_KINDS + BINDING_KINDS
            and str(obj.get("apiVersion", "")).startswith(RBAC_GROUP + "/"))


def grants_for(objects: list[dict], subject: Subject) -> SubjectGrants:
    """The grants `subject` holds through the bindings among `objects`."""
    roles: dict[tuple[str, str, str], tuple[PolicyRule, ...]] = {}
    bindings = []
    for obj in objects:
        if not _is_rbac(obj):
            continue
        kind = obj["kind"]
        namespace, name = _meta(obj, f"{kind} without a name")
        where = f"{kind} {namespace + '/' if namespace else ''}{name}"
        if kind in ROLE_KINDS:
            rules = obj.get("rules") or []
            if not isinstance(rules, list):
                raise InvalidManifest(f"{where}: rules must be a list")
            key = (kind, namespace if kind == "Role" else "", name)
            roles[key] = tuple(PolicyRule.from_json(rule, f"{where} rule {i + 1}") for i, rule in enumerate(rules))
        else:
            bindings.append((kind, namespace, name, where, obj))

    grants, missing = [], []
    for kind, namespace, name, where, obj in sorted(bindings, key=lambda b: b[:3]):
        subjects = obj.get("subjects") or []
        if not isinstance(subjects, list) or not any(subject.bound_by(item) for item in subjects):
            continue
        ref = obj.get("roleRef")
        if not isinstance(ref, dict) or ref.get("kind") not in ROLE_KINDS or not isinstance(ref.get("name"), str):
            raise InvalidManifest(f"{where}: roleRef must name a Role or ClusterRole")
        if kind == "ClusterRoleBinding" and ref["kind"] == "Role":
            raise InvalidManifest(f"{where}: a ClusterRoleBinding cannot refer to a Role")
        role_key = (ref["kind"], namespace if ref["kind"] == "Role" else "", ref["name"])
        role_name = f"{ref['kind']} {namespace + '/' if ref['kind'] == 'Role' else ''}{ref['name']}"
        if role_key not in roles:
            missing.append(f"{where} refers to {role_name}, which the input does not hold")
            continue
        scope = None if kind == "ClusterRoleBinding" else namespace
        grants.append(Grant(where, role_name, scope, roles[role_key]))
    return SubjectGrants(tuple(grants), tuple(missing))
