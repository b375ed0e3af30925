"""Remediation documents for an audit: what an admin applies so that pods stop conflicting on the target version.

Pure code: an AuditReport in, Kubernetes objects (dicts) out. Every remedy sets
`seLinuxChangePolicy: Recursive`, which is what kubelet did for non-RWOP volumes before SELinuxMount: the volume
is relabelled by the runtime instead of context-mounted, so pods with different labels or policies can share it
again. A pair is fixed only when every pod on the volume is Recursive, so the documents cover every workload on
the conflicting volumes that is not Recursive already.
"""

from __future__ import annotations

from agent.audit.findings import AuditReport, WorkloadReport

FORMATS = ("patches", "mutating-admission-policy", "kyverno")
POLICY_NAME = "selinux-change-policy-recursive"

_API_VERSIONS = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "ReplicaSet": "apps/v1",
                 "Job": "batch/v1", "CronJob": "batch/v1", "Pod": "v1"}
_RECURSIVE = {"securityContext": {"seLinuxChangePolicy": "Recursive"}}


def targets(report: AuditReport) -> list[WorkloadReport]:
    """Workloads to change: every non-Recursive workload on a volume where something conflicts."""
    troubled = set()
    for workload in report.workloads:
        if workload.verdict != "ok":
            troubled |= workload.volumes
    return [w for w in report.workloads
            if w.volumes & troubled and not w.already_recursive and w.workload.kind in _API_VERSIONS]


def bare_pods(report: AuditReport) -> list[WorkloadReport]:
    """Targets that are bare Pods: a Pod's spec is immutable (apiserver ValidatePodUpdate allows only images,
    tolerations and a few more), so no patch can fix them; they are recreated with the field set."""
    return [w for w in targets(report) if w.workload.kind == "Pod"]


def patch_for(workload: WorkloadReport) -> dict:
    """A strategic-merge patch (`kubectl patch KIND NAME -n NS --type strategic --patch-file F`)."""
    kind = workload.workload.kind
    if kind == "Pod":
        spec = dict(_RECURSIVE)
    elif kind == "CronJob":
        spec = {"jobTemplate": {"spec": {"template": {"spec": dict(_RECURSIVE)}}}}
    else:
        spec = {"template": {"spec": dict(_RECURSIVE)}}
    return {"apiVersion": _API_VERSIONS[kind], "kind": kind,
            "metadata": {"name": workload.workload.name, "namespace": workload.workload.namespace},
            "spec": spec}


def namespaces(report: AuditReport) -> list[str]:
    return sorted({w.workload.namespace for w in targets(report)})


def mutating_admission_policy(report: AuditReport) -> list[dict]:
    """A MutatingAdmissionPolicy that sets Recursive on new pods without a policy, bound to the namespaces where
    something conflicts (admissionregistration.k8s.io/v1, Kubernetes 1.36+)."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]},
            "matchConditions": [{
                "name": "no-change-policy-set",
                "expression": "!has(object.spec.securityContext) || "
                              "!has(object.spec.securityContext.seLinuxChangePolicy)"}],
            "mutations": [{
                "patchType": "ApplyConfiguration",
                "applyConfiguration": {"expression": (
                    'Object{spec: Object.spec{securityContext: Object.spec.securityContext{'
                    'seLinuxChangePolicy: "Recursive"}}}')}}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "policyName": POLICY_NAME,
            "matchResources": {"namespaceSelector": {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces(report)}]}},
        },
    }
    return [policy, binding]


def kyverno_policy(report: AuditReport) -> list[dict]:
    """A Kyverno ClusterPolicy doing the same: add the policy to pods that do not set one."""
    return [{
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": POLICY_NAME, "annotations": {
            "policies.kyverno.io/description": "Set seLinuxChangePolicy: Recursive on pods in namespaces whose "
                                               "workloads share volumes with conflicting SELinux labels or "
                                               "policies."}},
        "spec": {
            "background": False,
            "rules": [{
                "name": "set-selinux-change-policy-recursive",
                "match": {"any": [{"resources": {"kinds": ["Pod"], "namespaces": namespaces(report),
                                                 "operations": ["CREATE"]}}]},
                "mutate": {"patchStrategicMerge": {"spec": {"securityContext": {
                    "+(seLinuxChangePolicy)": "Recursive"}}}},
            }],
        },
    }]


def documents(report: AuditReport, form: str) -> list[dict]:
    if form == "patches":
        return [patch_for(w) for w in targets(report) if w.workload.kind != "Pod"]
    if form == "mutating-admission-policy":
        return mutating_admission_policy(report) if targets(report) else []
    if form == "kyverno":
        return kyverno_policy(report) if targets(report) else []
    raise ValueError(f"unknown remediation format {form!r}")
