"""Compacted rules -> Role/RoleBinding per namespace and ClusterRole/ClusterRoleBinding, as object dicts.

Names are `<prefix>:<subject>` with the subject's username cut to the characters RBAC names take (audit2rbac's
convention), labels mark the objects as generated and for whom, and the order is fixed (Roles by namespace,
the ClusterRole, then the bindings in the same order) so that two runs over the same log print the same bytes.
"""

from __future__ import annotations

import re

from agent.errors import InvalidInput
from agent.rbac.compaction import CLUSTER
from agent.rbac.policy_rule import PolicyRule
from agent.rbac.subject import RBAC_GROUP, Subject

RBAC_API_VERSION = f"{RBAC_GROUP}/v1"
DEFAULT_PREFIX = "rbac-generate"
GENERATED_LABEL = "rbac.selinux-mount-agent/generated"
SUBJECT_LABEL = "rbac.selinux-mount-agent/subject"
# Label syntax as the API server validates it: an optional DNS-subdomain prefix, a name of at most 63 characters.
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)")
_LABEL_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_ANNOTATION_LIMIT = 256 * 1024


def object_name(prefix: str, subject: Subject) -> str:
    """`<prefix>:<username>`, characters other than letters, digits and `:` turned into `-`, lower-case."""
    return re.sub(r"[^a-z0-9:]", "-", f"{prefix}:{subject.username}".lower())


def label_value(text: str) -> str:
    """A label value naming `text` (63 characters at most, letters, digits and `-._` inside)."""
    return re.sub(r"[^a-z0-9]", "-", text.lower())[:63].strip("-_.")


def _valid_key(key: str) -> bool:
    prefix, sep, name = key.rpartition("/")
    if sep and (len(prefix) > 253 or not _LABEL_PREFIX.fullmatch(prefix)):
        return False
    return bool(_LABEL_NAME.fullmatch(name))


def parse_pairs(text: str | None, what: str, values_are_labels: bool) -> dict[str, str]:
    """`k=v,k2=v2` from the command line, checked as the API server checks label or annotation keys/values."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not _valid_key(key):
            raise InvalidInput(f"--{what} {item!r}: expected KEY=VALUE with a valid {what[:-1]} key")
        if values_are_labels and value and not _LABEL_NAME.fullmatch(value):
            raise InvalidInput(f"--{what} {item!r}: a label value is at most 63 letters, digits, '-', '_' or '.', "
                               "starting and ending with a letter or digit")
        if not values_are_labels and len(value) > _ANNOTATION_LIMIT:
            raise InvalidInput(f"--{what} {key}: the value is too long")
        out[key] = value
    return out


def _metadata(name: str, namespace: str, labels: dict, annotations: dict) -> dict:
    meta = {"name": name}
    if namespace != CLUSTER:
        meta["namespace"] = namespace
    meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def render(scopes: dict[str, list[PolicyRule]], subject: Subject, name: str, labels: dict | None = None,
           annotations: dict | None = None) -> list[dict]:
    """The objects granting `scopes` to `subject`."""
    labels = {GENERATED_LABEL: "true", SUBJECT_LABEL: label_value(subject.username) or "subject",
              **(labels or {})}
    annotations = annotations or {}
    roles, bindings = [], []
    namespaces = sorted(ns for ns in scopes if ns != CLUSTER) + ([CLUSTER] if CLUSTER in scopes else [])
    for namespace in namespaces:
        kind = "ClusterRole" if namespace == CLUSTER else "Role"
        roles.append({"apiVersion": RBAC_API_VERSION, "kind": kind,
                      "metadata": _metadata(name, namespace, labels, annotations),
                      "rules": [rule.to_json() for rule in scopes[namespace]]})
        bindings.append({"apiVersion": RBAC_API_VERSION, "kind": kind + "Binding",
                         "metadata": _metadata(name, namespace, labels, annotations),
                         "roleRef": {"apiGroup": RBAC_GROUP, "kind": kind, "name": name},
                         "subjects": [subject.to_json()]})
    return roles + bindings
