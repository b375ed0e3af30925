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
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from agent.k8s.facts import PodFacts
from agent.k8s.objects import pod_phase
from agent.k8s.resolve import Cluster
from agent.k8s.stored_objects import decoded
from agent.k8s.workload import Workload, workload_of
from agent.kubelet.conflicts import (LABEL, Conflict, KubeletClash, VolumeUse, controller_conflicts, kubelet_clashes,
                                     volume_use)
from agent.kubelet.container_defaults import ContainerDefaults
from agent.kubelet.gates import FeatureGates

FINISHED_PHASES = ("Succeeded", "Failed")
_VERDICT_RANK = {"ok": 0, "conflicts": 1, "breaks": 2}


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

    def json_chunks(self, censor: bool = False):
        """The pieces of `json.dumps(self.to_json(censor), separators=(",", ":"))`, in order, one per conflict: a
        writer that takes them one by one never holds the whole text nor every conflict's dict (at 100,000 pods,
        40 MiB of text)."""
        yield '{"conflicts":['
        for index, conflict in enumerate(self.conflicts):
            yield ("," if index else "") + _compact(conflict.to_json(censor))
        yield "],"
        yield _compact(self._rest_json())[1:]  # {"workloads":...} without its brace

    def _rest_json(self) -> dict:
        return {
            "workloads": [w.to_json() for w in self.workloads],
            "findings": [f.to_json() for f in self.findings],
            "summary": {"targetVersion": self.gates.version, "featureGates": self.gates.as_dict(),
                        "podsChecked": self.pods_checked, "podsFinishedIgnored": self.pods_finished,
                        "sharedVolumes": self.shared_volumes, "conflicts": len(self.conflicts),
                        "workloadsBreaking": sum(w.verdict == "breaks" for w in self.workloads)},
        }


_compact = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(value, separators=(",", ":"))


def audit(cluster: Cluster, gates: FeatureGates, defaults: ContainerDefaults) -> AuditReport:
    book = _Workloads(cluster)
    findings: list[Finding] = []

    # First pass, cheap: which persistent volumes does each running pod use? Only pods that share one with
    # another pod, or whose several containers could disagree on a label, are resolved; of a single-container
    # pod only the volumes it may share are judged.
    checked, finished = 0, 0
    # (pod as stored, has several containers, the keys of its claimed volumes): only what decides whether the pod
    # is read again below, so that a dump of 100,000 pods keeps no more than that of each.
    candidates: list[tuple] = []
    claimants: Counter = Counter()  # volume key -> how many pods claim it
    for stored in cluster.stored_pods():
        obj = decoded(stored)  # read twice at most: here, and below if it may share a volume
        if pod_phase(obj) in FINISHED_PHASES:
            finished += 1  # finished pods no longer conflict (issue #135628)
            continue
        checked += 1
        claimed, containers, unresolved = cluster.survey(obj)
        if unresolved:
            # A claim, PV or StorageClass the dump lacks: upstream reports it and goes on with the pod's other
            # volumes (syncPod); it is a finding with the pod, not bad input.
            ref = _ref_of(obj)
            findings.extend(Finding("UnresolvedVolume", "", (ref,), message) for message in unresolved)
        if claimed or containers > 1:
            keys = tuple(key for _, key in claimed)
            claimants.update(set(keys))
            candidates.append((stored, containers > 1, keys))
    shared_keys = {key for key, count in claimants.items() if count > 1}
    del claimants

    uses_by_volume: dict[str, list[VolumeUse]] = defaultdict(list)
    for stored, several, keys in candidates:
        if not several and shared_keys.isdisjoint(keys):
            continue
        # Several containers may disagree on any volume; one container only matters where it shares, and the
        # pod's facts, which the report keeps with each of its uses, keep only those volumes.
        pod = cluster.resolve_pod(decoded(stored), partial=True,
                                  select=None if several else lambda claimed: _maybe_shared(claimed, shared_keys))
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
    del candidates, shared_keys
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
    """For a single-container pod that shares a volume, given (name, unique name) of the volumes it claims: the
    names of those that can take part in a conflict, those that another pod uses too or that two of its own
    volume entries name. Each of its other volumes would only add a lone use."""
    keys = [key for _, key in claimed]
    return {name for name, key in claimed if key in shared_keys or keys.count(key) > 1}


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
            workload = self.owner_of[pod.ref] = workload_of(pod.namespace, pod.name, pod.owners, pod.labels,
                                                            self.cluster.other)
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
