"""Upgrade audit: a cluster dump in, conflicts and per-workload verdicts for a target Kubernetes version out.

Pure code. Conflicts follow the upstream warning controller exactly (so they match its metric and events);
verdicts follow kubelet on the target version:

- `breaks`: a pod of the workload will wait in ContainerCreating on the target version when it shares a node
  with a pod that needs another mount label or change policy (or its own containers disagree on a label of an
  eligible volume, which blocks it on any node);
- `conflicts`: the controller reports a conflict, or kubelet only warns about it on the target version;
- `ok`: the workload shares volumes without any conflict.
Beyond the controller, it also flags privileged (spc_t) pods that share a volume with confined pods, and pairs on
which the controller and kubelet disagree because the controller does not fill in node defaults.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field

from agent.k8s.cluster import Cluster, OwnerRef, PodFacts, owner_references, pod_phase, shape_error
from agent.kubelet.conflicts import (CHANGE_POLICY, LABEL, Conflict, KubeletClash, VolumeUse, controller_conflicts,
                             kubelet_clashes, volume_use)
from agent.kubelet.container_defaults import ContainerDefaults
from agent.kubelet.gates import FeatureGates
from agent.k8s.stored_objects import decoded

FINISHED_PHASES = ("Succeeded", "Failed")
_CRONJOB_JOB = re.compile(r"^(?P<cronjob>.+)-\d{8,}$")
_VERDICT_RANK = {"ok": 0, "conflicts": 1, "breaks": 2}


@dataclass(frozen=True, order=True)
class Workload:
    kind: str
    namespace: str
    name: str
    inferred: bool = field(default=False, compare=False)  # owner guessed from naming, object not in the dump

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


def workload_of(pod: PodFacts, cluster: Cluster) -> Workload:
    """The top-level owner: Deployment (through its ReplicaSet), StatefulSet, DaemonSet, CronJob (through its
    Job), Job, or the Pod itself. Uses the owner objects when the dump has them, their naming otherwise."""
    owner = controlling_owner(pod.owners)
    if owner is None:
        return Workload("Pod", pod.namespace, pod.name)
    if owner.kind == "ReplicaSet":
        rs = cluster.other.get(f"ReplicaSet {pod.namespace}/{owner.name}")
        if rs is not None:
            top = _owner_of(rs, f"ReplicaSet {pod.namespace}/{owner.name}")
            if top is not None and top.kind == "Deployment":
                return Workload("Deployment", pod.namespace, top.name)
            return Workload("ReplicaSet", pod.namespace, owner.name)
        template_hash = pod.labels.get("pod-template-hash")
        if template_hash is not None and not isinstance(template_hash, str):
            raise shape_error(f"Pod {pod.ref}", "metadata.labels.pod-template-hash", "a string", template_hash)
        if template_hash and owner.name.endswith("-" + template_hash):
            return Workload("Deployment", pod.namespace, owner.name[: -len(template_hash) - 1], inferred=True)
        return Workload("ReplicaSet", pod.namespace, owner.name)
    if owner.kind == "Job":
        job = cluster.other.get(f"Job {pod.namespace}/{owner.name}")
        if job is not None:
            top = _owner_of(job, f"Job {pod.namespace}/{owner.name}")
            if top is not None and top.kind == "CronJob":
                return Workload("CronJob", pod.namespace, top.name)
            return Workload("Job", pod.namespace, owner.name)
        match = _CRONJOB_JOB.match(owner.name)
        if match:
            return Workload("CronJob", pod.namespace, match.group("cronjob"), inferred=True)
        return Workload("Job", pod.namespace, owner.name)
    return Workload(owner.kind, pod.namespace, owner.name)


def _owner_of(obj: dict, where: str) -> OwnerRef | None:
    """The controlling owner of an owner object of the dump (its metadata is an object: the index checked it)."""
    return controlling_owner(owner_references(obj["metadata"].get("ownerReferences"), where))


@dataclass(frozen=True)
class Finding:
    """Something the upstream controller does not say: privileged sharing, a disagreement between controller and
    kubelet, or containers of one pod that disagree."""

    kind: str  # PrivilegedSharing, KubeletOnlyConflict, ControllerOnlyConflict, MultipleLabels, UnresolvedVolume
    volume: str
    pods: tuple[str, ...]
    message: str

    def to_json(self) -> dict:
        return {"kind": self.kind, "volume": self.volume, "pods": list(self.pods), "message": self.message}


@dataclass
class WorkloadReport:
    workload: Workload
    verdict: str = "ok"
    pods: set = field(default_factory=set)
    volumes: set = field(default_factory=set)
    partners: set = field(default_factory=set)  # workloads it conflicts with
    reasons: list = field(default_factory=list)
    already_recursive: bool = True  # every pod already sets seLinuxChangePolicy: Recursive
    mixed_labels: bool = False  # containers of one of its pods use different labels on one volume

    def raise_to(self, verdict: str) -> None:
        if _VERDICT_RANK[verdict] > _VERDICT_RANK[self.verdict]:
            self.verdict = verdict

    @property
    def remedy(self) -> str | None:
        if self.verdict == "ok":
            return None
        shared = ", ".join(sorted(self.volumes))
        partners = ", ".join(sorted(p.ref for p in self.partners)) or "no other workload"
        if self.mixed_labels and not self.partners:
            return f"give every container that mounts {shared} the same seLinuxOptions (or set them at pod level)"
        if self.already_recursive:
            return (f"this workload already sets seLinuxChangePolicy: Recursive; set it on every other workload "
                    f"sharing {shared} ({partners})")
        if self.workload.kind == "Pod":
            where = "recreate the pod with spec.securityContext.seLinuxChangePolicy: Recursive"
        elif self.workload.kind == "CronJob":
            where = "set spec.jobTemplate.spec.template.spec.securityContext.seLinuxChangePolicy: Recursive"
        else:
            where = "set spec.template.spec.securityContext.seLinuxChangePolicy: Recursive"
        return (f"{where} here and on every workload sharing {shared} with it ({partners}); or give all of "
                f"them one seLinuxOptions (user and level) and no Recursive policy")

    def to_json(self) -> dict:
        return {"kind": self.workload.kind, "namespace": self.workload.namespace, "name": self.workload.name,
                "verdict": self.verdict, "remedy": self.remedy, "pods": sorted(self.pods),
                "volumes": sorted(self.volumes), "reasons": list(dict.fromkeys(self.reasons)),
                "inferred": self.workload.inferred}


@dataclass(frozen=True)
class AuditReport:
    gates: FeatureGates
    conflicts: tuple[Conflict, ...]
    clashes: tuple[KubeletClash, ...]
    workloads: tuple[WorkloadReport, ...]
    findings: tuple[Finding, ...]
    pods_checked: int
    pods_finished: int
    shared_volumes: int

    @property
    def breaks(self) -> bool:
        return any(w.verdict == "breaks" for w in self.workloads)

    def to_json(self, censor: bool = False) -> dict:
        return {"conflicts": [c.to_json(censor) for c in self.conflicts], **self._rest_json()}

    def json_text(self, censor: bool = False) -> str:
        """`json.dumps(self.to_json(censor), separators=(",", ":"))`, with the conflicts, most of a large report,
        written out directly (`Conflict.json_text`)."""
        return "".join(self.json_chunks(censor))

    def json_chunks(self, censor: bool = False):
        """The pieces of `json_text`, in order: a writer that takes them one by one never holds the whole text
        (at 100,000 pods, 40 MiB, which joining would copy twice)."""
        yield '{"conflicts":['
        first = True
        for conflict in self.conflicts:
            if not first:
                yield ","
            first = False
            yield conflict.json_text(censor)
        yield "],"
        yield json.dumps(self._rest_json(), separators=(",", ":"))[1:]  # {"workloads":...} without its brace

    def _rest_json(self) -> dict:
        return {
            "workloads": [w.to_json() for w in self.workloads],
            "findings": [f.to_json() for f in self.findings],
            "summary": {"targetVersion": self.gates.version, "featureGates": self.gates.as_dict(),
                        "podsChecked": self.pods_checked, "podsFinishedIgnored": self.pods_finished,
                        "sharedVolumes": self.shared_volumes, "conflicts": len(self.conflicts),
                        "workloadsBreaking": sum(w.verdict == "breaks" for w in self.workloads)},
        }


def audit(cluster: Cluster, gates: FeatureGates, defaults: ContainerDefaults) -> AuditReport:
    book = _Workloads(cluster)
    findings: list[Finding] = []

    # First pass, cheap: which persistent volumes does each running pod use? Only pods that share one with
    # another pod, or whose several containers could disagree on a label, are resolved; a single-container pod
    # only for the volumes it may share.
    checked, finished = 0, 0
    # (pod as stored, has several containers, the keys of its claimed volumes); only what decides whether the pod
    # is read again below, so that a dump of 100,000 pods keeps no more than that of each.
    candidates: list[tuple] = []
    first_claim: dict[str, int] = {}  # volume -> the candidate that claimed it first
    shared_keys: set[str] = set()
    sharing = bytearray()  # per candidate: another pod claims one of its volumes
    for stored in cluster.stored_pods():
        obj = decoded(stored)  # read twice at most: here, and below if it may share a volume
        status = obj.get("status")
        phase = status.get("phase") if type(status) is dict else None
        if type(phase) is not str:
            phase = pod_phase(obj)  # "" when unset, or the error that says what is malformed
        if phase in FINISHED_PHASES:
            finished += 1  # finished pods no longer conflict (issue #135628)
            continue
        checked += 1
        claimed, containers, unresolved = cluster.survey(obj)
        if unresolved:
            # A claim, PV or StorageClass the dump lacks: upstream reports it and goes on with the pod's other
            # volumes (syncPod); it is a finding with the pod, not bad input.
            ref = _ref_of(obj)
            findings.extend(Finding("UnresolvedVolume", "", (ref,), message) for message in unresolved)
        several = containers > 1
        if not claimed and not several:
            continue
        index = len(candidates)
        keys = tuple(key for _, key in claimed)
        sharing.append(0)
        for key in keys:
            first = first_claim.setdefault(key, index)
            if first != index:
                shared_keys.add(key)
                sharing[first] = sharing[index] = 1
        candidates.append((stored, several, keys))
    del first_claim

    uses_by_volume: dict[str, list[VolumeUse]] = defaultdict(list)
    for index, (stored, several, keys) in enumerate(candidates):
        if several:
            obj, only = decoded(stored), None  # its containers may disagree on any volume
        elif sharing[index]:
            obj = decoded(stored)
            only = _maybe_shared(cluster.claimed_volumes(obj), shared_keys)
        else:
            continue
        pod = cluster.resolve_pod(obj, only, partial=True)
        for volume in pod.volumes:
            use = volume_use(pod, volume, gates, defaults)
            if use is None:
                continue
            uses_by_volume[use.volume].append(use)
            if use.multiple_labels:
                findings.append(Finding("MultipleLabels", use.volume, (pod.ref,), use.multiple_labels))
                if use.enforced:
                    report = book.report(pod)
                    report.volumes.add(use.volume)
                    report.mixed_labels = True
                    report.raise_to("breaks")
                    report.reasons.append(f"{pod.ref}: {use.multiple_labels} on volume {use.volume}: kubelet "
                                          "refuses to start the pod")

    # What the passes kept is not needed to judge the shared volumes: drop it before that adds its own.
    del candidates, sharing, shared_keys
    cluster.storage_changed()  # the index's caches of resolved claims and PVs

    all_conflicts: list[Conflict] = []
    all_clashes: list[KubeletClash] = []
    shared = sorted(volume for volume, uses in uses_by_volume.items() if len(uses) > 1)
    for volume in shared:
        uses = uses_by_volume[volume]
        for use in uses:
            book.report(use.pod).volumes.add(volume)
        conflicts = controller_conflicts(uses)
        clashes = kubelet_clashes(uses)
        all_conflicts.extend(conflicts)
        all_clashes.extend(clashes)
        book.conflicts(volume, conflicts)
        book.clashes(volume, clashes, gates)
        findings.extend(_disagreements(volume, uses, conflicts, clashes))
        findings.extend(_privileged_sharing(volume, uses))

    return AuditReport(gates, tuple(all_conflicts), tuple(all_clashes), book.ordered(), tuple(findings),
                       checked, finished, len(shared))


def _ref_of(obj: dict) -> str:
    """`namespace/name` of a pod object the first pass has read (its metadata is checked there)."""
    meta = obj["metadata"]
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def _maybe_shared(claimed: list[tuple[str, str]], shared_keys: set[str]) -> set[str]:
    """For a single-container pod that shares a volume: the names of its volumes that can take part in a
    conflict, those that another pod uses too or that two of its own volume entries name. Each of its other
    volumes would only add a lone use."""
    names = {name for name, key in claimed if key in shared_keys}
    if len(claimed) > 1:
        keys = [key for _, key in claimed]
        if len(set(keys)) < len(keys):
            names.update(name for name, key in claimed if keys.count(key) > 1)
    return names


class _Workloads:
    """Per-workload reports as the conflicts come in. Pods are looked up by ref (a str, whose hash Python
    keeps), so that the per-conflict work stays a few dict lookups."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.by_workload: dict[tuple[str, str, str], WorkloadReport] = {}  # by (kind, namespace, name)
        self.owner_of: dict[str, Workload] = {}
        self.report_of: dict[str, WorkloadReport] = {}

    def report(self, pod: PodFacts) -> WorkloadReport:
        """The report of the pod's workload, with the pod counted in."""
        report = self.report_of.get(pod.ref)
        if report is None:
            workload = self.owner_of[pod.ref] = workload_of(pod, self.cluster)
            key = (workload.kind, workload.namespace, workload.name)  # what Workload compares
            report = self.by_workload.get(key)
            if report is None:
                report = self.by_workload[key] = WorkloadReport(workload)
            report.pods.add(pod.ref)
            self.report_of[pod.ref] = report
        if pod.change_policy != "Recursive":  # every pod of the workload must be Recursive
            report.already_recursive = False
        return report

    def conflicts(self, volume: str, conflicts: list[Conflict]) -> None:
        for conflict in conflicts:
            mine = self.report_of[conflict.pod.ref]
            mine.raise_to("conflicts")
            mine.partners.add(self.owner_of[conflict.other.ref])
            mine.reasons.append(f"{conflict.pod.ref}: {conflict.property} {conflict.value!r} conflicts with "
                                f"{conflict.other.ref} ({conflict.other_value!r}) on volume {volume}")

    def clashes(self, volume: str, clashes: list[KubeletClash], gates: FeatureGates) -> None:
        for clash in clashes:
            for me, other in ((clash.a, clash.b), (clash.b, clash.a)):
                report = self.report_of[me.pod.ref]
                report.partners.add(self.owner_of[other.pod.ref])
                if clash.breaks:
                    report.raise_to("breaks")
                    report.reasons.append(
                        f"{me.pod.ref} needs mount label {me.kubelet_label or '(none: Recursive)'!s} and "
                        f"{other.pod.ref} needs {other.kubelet_label or '(none: Recursive)'!s} on volume {volume} "
                        f"in {gates.version}: {_who_waits(clash, gates)}")
                else:
                    report.raise_to("conflicts")
                    why = ("the volume is ReadWriteOncePod, so the two pods never run together"
                           if clash.exclusive else f"kubelet {gates.version} only warns for this access mode")
                    report.reasons.append(f"{me.pod.ref} and {other.pod.ref} need different mount labels on "
                                          f"volume {volume}; {why}")

    def ordered(self) -> tuple[WorkloadReport, ...]:
        """Breaking workloads first, then conflicting, then ok; by kind, namespace and name within each (the
        key is plain strings, so sorting never calls the dataclass's comparison)."""
        for report in self.by_workload.values():
            report.partners.discard(report.workload)
        return tuple(sorted(self.by_workload.values(), key=lambda r: (
            -_VERDICT_RANK[r.verdict], r.workload.kind, r.workload.namespace, r.workload.name)))


def _who_waits(clash: KubeletClash, gates: FeatureGates) -> str:
    """Which pod of a breaking pair waits: kubelet judges the one that arrives second by its own PV's modes."""
    if clash.same_node:
        return "they run on the same node now"
    if clash.a.enforced and clash.b.enforced:
        return "whichever starts second on a shared node waits in ContainerCreating"
    waiting = clash.a if clash.a.enforced else clash.b
    return (f"{waiting.pod.ref} waits in ContainerCreating when it starts second on a shared node (its "
            f"PersistentVolume's access modes are enforced in {gates.version}, the other's are not)")


def _disagreements(volume: str, uses: list[VolumeUse], conflicts, clashes) -> list[Finding]:
    """Pairs the controller and kubelet judge differently (the controller does not fill in node defaults)."""
    out = []
    reported = {(c.pod.ref, c.other.ref) for c in conflicts} if clashes else set()
    for clash in clashes:
        if (clash.a.pod.ref, clash.b.pod.ref) not in reported:
            out.append(Finding(
                "KubeletOnlyConflict", volume, (clash.a.pod.ref, clash.b.pod.ref),
                f"kubelet computes different mount labels ({clash.a.kubelet_label or '(none)'} vs "
                f"{clash.b.kubelet_label or '(none)'}) once node defaults are filled in, but the upstream "
                "controller does not report this pair"))
    index = {use.pod.ref: use for use in uses}
    if len(index) == len(uses) and not _controller_splits_a_kubelet_label(uses):
        return out  # no pair below could have one kubelet label (the usual case, checked in one pass)
    label_pairs = {(c.pod.ref, c.other.ref) for c in conflicts if c.property == LABEL}
    for first, second in sorted(label_pairs):
        if first > second:
            continue
        a, b = index[first], index[second]
        if a.kubelet_label is not None and a.kubelet_label == b.kubelet_label:
            out.append(Finding(
                "ControllerOnlyConflict", volume, (first, second),
                f"the upstream controller reports {a.controller_label!r} vs {b.controller_label!r}, but kubelet "
                f"mounts both with {a.kubelet_label or '(no label)'}: only user and level reach the file label"))
    return out


def _controller_splits_a_kubelet_label(uses: list[VolumeUse]) -> bool:
    """Do two uses with one kubelet label carry different controller labels? A ControllerOnlyConflict needs it."""
    seen: dict[str, str] = {}
    for use in uses:
        if use.kubelet_label is None:
            continue
        if seen.setdefault(use.kubelet_label, use.controller_label) != use.controller_label:
            return True
    return False


def _privileged_sharing(volume: str, uses: list[VolumeUse]) -> list[Finding]:
    privileged = sorted(u.pod.ref for u in uses if u.privileged)
    confined = sorted(u.pod.ref for u in uses if not u.privileged and u.controller_label)
    if not privileged or not confined:
        return []
    return [Finding(
        "PrivilegedSharing", volume, tuple(privileged + confined),
        f"privileged (spc_t) pod(s) {', '.join(privileged)} share the volume with confined pod(s) "
        f"{', '.join(confined)}: a context mount gives the volume one label for all of them; the usual fix is "
        "seLinuxChangePolicy: Recursive on every pod that uses it")]


def conflicts_by_property(report: AuditReport) -> dict[str, int]:
    counts = {LABEL: 0, CHANGE_POLICY: 0}
    for conflict in report.conflicts:
        counts[conflict.property] += 1
    return counts

