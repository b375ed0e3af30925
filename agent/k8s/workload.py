"""The workload a pod belongs to: its top-level owner, as `kubectl` users name it.

One rule for every reader: the audit groups pods by it, and AVC attribution names the workload of a denial by it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.k8s.facts import OwnerRef
from agent.k8s.objects import owner_references, shape_error

_CRONJOB_JOB = re.compile(r"^(?P<cronjob>.+)-\d{8,}$")  # a CronJob's Job: <cronjob>-<scheduled minute>


@dataclass(frozen=True, order=True)
class Workload:
    kind: str
    namespace: str
    name: str
    inferred: bool = field(default=False, compare=False)  # owner guessed from naming, object not in the input

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def controlling_owner(owners: tuple[OwnerRef, ...]) -> OwnerRef | None:
    """The owner reference with `controller: true`, the one that manages the object (the API allows at most one);
    the first reference when none says so, as objects written by hand or by old tools do."""
    for owner in owners:
        if owner.controller:
            return owner
    return owners[0] if owners else None


def workload_of(namespace: str, name: str, owners: tuple[OwnerRef, ...], labels: Mapping,
                owner_objects: Mapping[str, dict] | None = None) -> Workload:
    """The top-level owner of pod `namespace/name`: Deployment (through its ReplicaSet), StatefulSet, DaemonSet,
    CronJob (through its Job), Job, or the Pod itself. Uses the owner objects (by "Kind namespace/name") when
    given and present, their naming otherwise."""
    owner = controlling_owner(owners)
    if owner is None:
        return Workload("Pod", namespace, name)
    top_kind = _CREATED_BY.get(owner.kind)
    if top_kind is None:
        return Workload(owner.kind, namespace, owner.name)
    key = f"{owner.kind} {namespace}/{owner.name}"
    obj = (owner_objects or {}).get(key)
    if obj is not None:
        top = controlling_owner(owner_references(obj["metadata"].get("ownerReferences"), key))
        if top is not None and top.kind == top_kind:
            return Workload(top_kind, namespace, top.name)
        return Workload(owner.kind, namespace, owner.name)
    top_name = _creator_name(owner, labels, f"Pod {namespace}/{name}")
    if top_name:
        return Workload(top_kind, namespace, top_name, inferred=True)
    return Workload(owner.kind, namespace, owner.name)


# Owners that a workload creates: their kind -> the workload's kind.
_CREATED_BY = {"ReplicaSet": "Deployment", "Job": "CronJob"}


def _creator_name(owner: OwnerRef, labels: Mapping, where: str) -> str | None:
    """The Deployment or CronJob an owner's name says created it, or None: a Deployment names its ReplicaSet
    `<deployment>-<the pod-template-hash label>`, a CronJob its Job `<cronjob>-<scheduled minute>`."""
    if owner.kind == "Job":
        match = _CRONJOB_JOB.match(owner.name)
        return match.group("cronjob") if match else None
    template_hash = labels.get("pod-template-hash")
    if template_hash is not None and not isinstance(template_hash, str):
        raise shape_error(where, "metadata.labels.pod-template-hash", "a string", template_hash)
    if template_hash and owner.name.endswith("-" + template_hash):
        return owner.name[: -len(template_hash) - 1]
    return None
