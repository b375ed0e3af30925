"""agent/audit/findings.py and agent/audit/remediation.py: conflicts, verdicts per target version, workloads, findings,
and remediation documents validated against the Kubernetes schemas."""

import copy
import json

import pytest

from agent.kubelet import gates as gates_mod
from agent.audit.findings import audit
from agent.k8s.resolve import Cluster
from agent.kubelet.container_defaults import BUILTIN_DEFAULTS
from agent.audit.remediation import bare_pods, documents, targets
from k8s_builders import DRIVER, csidriver, owned, pod, pv, pvc

RWX = ("ReadWriteMany",)


def shared_volume(modes=RWX, se_linux_mount=True, namespaces=("ns",)):
    """One backend volume, exposed to each namespace through its own PV and claim (same volumeHandle)."""
    objects = [csidriver(se_linux_mount=se_linux_mount)]
    for index, namespace in enumerate(namespaces):
        volume = pv(name=f"pv-{namespace}", modes=modes)
        volume["spec"]["csi"]["volumeHandle"] = "backend-1"
        objects += [volume, pvc(volume=f"pv-{namespace}", modes=modes, namespace=namespace)]
    return objects


def run(objects, version="1.37", overrides=None):
    gates = gates_mod.resolve(version, overrides or {})
    return audit(Cluster(copy.deepcopy(objects)), gates, BUILTIN_DEFAULTS)


def verdicts(report):
    return {w.workload.ref: w.verdict for w in report.workloads}


def pairs(report):
    return sorted((c.property, c.pod.name, c.value, c.other.name, c.other_value) for c in report.conflicts)


# --- the controller's conflicts --------------------------------------------------------------------------

def test_same_label_and_policy_do_not_conflict():
    report = run(shared_volume() + [pod(name="a"), pod(name="b")])
    assert report.conflicts == () and not report.breaks
    assert set(verdicts(report).values()) == {"ok"} and report.shared_volumes == 1


def test_different_levels_conflict_in_both_directions():
    report = run(shared_volume() + [pod(name="a"), pod(name="b", options={"level": "s0:c3,c4"})])
    assert pairs(report) == [("SELinuxLabel", "a", ":::s0:c1,c2", "b", ":::s0:c3,c4"),
                             ("SELinuxLabel", "b", ":::s0:c3,c4", "a", ":::s0:c1,c2")]
    assert report.conflicts[0].volume == f"kubernetes.io/csi/{DRIVER}^backend-1"


def test_recursive_next_to_mount_option_conflicts_on_policy_and_label():
    report = run(shared_volume() + [pod(name="a"), pod(name="b", policy="Recursive")])
    assert pairs(report) == [("SELinuxChangePolicy", "a", "MountOption", "b", "Recursive"),
                             ("SELinuxChangePolicy", "b", "Recursive", "a", "MountOption"),
                             ("SELinuxLabel", "a", ":::s0:c1,c2", "b", ""),
                             ("SELinuxLabel", "b", "", "a", ":::s0:c1,c2")]


def test_pod_without_label_counts_as_recursive():
    report = run(shared_volume() + [pod(name="a"), pod(name="b", options=None)])
    assert ("SELinuxChangePolicy", "b", "Recursive", "a", "MountOption") in pairs(report)


def test_two_recursive_pods_never_conflict():
    report = run(shared_volume() + [pod(name="a", policy="Recursive"),
                                    pod(name="b", policy="Recursive", options={"level": "s0:c9"})])
    assert report.conflicts == () and not report.breaks


@pytest.mark.parametrize("se_linux_mount", [False, None])
def test_driver_without_selinux_mount_means_recursive_for_everyone(se_linux_mount):
    report = run(shared_volume(se_linux_mount=se_linux_mount) +
                 [pod(name="a"), pod(name="b", options={"level": "s0:c3"}), pod(name="c", policy="Recursive")])
    assert report.conflicts == () and not report.breaks


def test_missing_csidriver_means_recursive_for_everyone():
    objects = [o for o in shared_volume() if o["kind"] != "CSIDriver"]
    report = run(objects + [pod(name="a"), pod(name="b", options={"level": "s0:c3"})])
    assert report.conflicts == ()


def test_finished_pods_are_ignored():
    done = pod(name="b", options={"level": "s0:c3"})
    done["status"] = {"phase": "Succeeded"}
    failed = pod(name="c", options={"level": "s0:c4"})
    failed["status"] = {"phase": "Failed"}
    report = run(shared_volume() + [pod(name="a"), done, failed])
    assert report.conflicts == () and report.pods_finished == 2 and report.pods_checked == 1


def test_block_and_unmounted_uses_do_not_take_part():
    device = pod(name="b", options={"level": "s0:c3"},
                 containers=[{"name": "c", "volumeDevices": [{"name": "vol", "devicePath": "/dev/x"}]}])
    report = run(shared_volume() + [pod(name="a"), device])
    assert report.conflicts == ()


def test_cross_namespace_sharing_through_two_pvs_of_one_backend_volume():
    report = run(shared_volume(namespaces=("ns", "other")) +
                 [pod(name="a"), pod(name="b", namespace="other", options={"level": "s0:c3"})])
    assert len(report.conflicts) == 2 and all(c.cross_namespace for c in report.conflicts)
    censored = report.to_json(censor=True)["conflicts"]
    assert all(c["pod2"] == {"namespace": "", "name": "", "value": ""} for c in censored)
    assert "conflicts with another pod" in censored[0]["message"]


# --- verdicts on the target version ----------------------------------------------------------------------

@pytest.mark.parametrize("version, modes, verdict", [
    ("1.36", RWX, "conflicts"),           # SELinuxMount off: kubelet only warns for RWX
    ("1.37", RWX, "breaks"),              # SELinuxMount on: the second pod waits
    ("1.37", ("ReadWriteOnce",), "breaks"),
    ("1.36", ("ReadWriteOnce",), "conflicts"),
    ("1.36", ("ReadWriteOncePod",), "conflicts"),  # enforced, but two pods never share an RWOP volume
    ("1.37", ("ReadWriteOncePod",), "conflicts"),
])
def test_verdict_depends_on_the_target_version(version, modes, verdict):
    report = run(shared_volume(modes=modes) + [pod(name="a"), pod(name="b", policy="Recursive")], version=version)
    assert set(verdicts(report).values()) == {verdict}
    assert report.breaks is (verdict == "breaks")


def test_1_33_with_selinuxmount_enabled_breaks():
    objects = shared_volume() + [pod(name="a"), pod(name="b", options={"level": "s0:c3"})]
    assert not run(objects, version="1.33").breaks
    assert run(objects, version="1.33", overrides={"SELinuxMount": True}).breaks


def test_same_node_is_said():
    a, b = pod(name="a", nodeName="n1"), pod(name="b", policy="Recursive", nodeName="n1")
    report = run(shared_volume() + [a, b])
    assert any("same node now" in r for w in report.workloads for r in w.reasons)


def test_defaults_blind_spot_is_found():
    # The controller cannot compare an empty user, but kubelet fills in system_u: staff_u differs.
    report = run(shared_volume() + [pod(name="a", options={"user": "staff_u", "level": "s0:c1,c2"}),
                                    pod(name="b")])
    assert report.conflicts == ()
    assert report.breaks
    assert [f.kind for f in report.findings] == ["KubeletOnlyConflict"]


def test_controller_only_conflict_is_explained():
    # Types differ, but only user and level reach the file label: kubelet mounts both the same way.
    report = run(shared_volume() + [pod(name="a", options={"type": "a_t", "level": "s0:c1"}),
                                    pod(name="b", options={"type": "b_t", "level": "s0:c1"})])
    assert [c.property for c in report.conflicts] == ["SELinuxLabel", "SELinuxLabel"]
    assert not report.breaks and set(verdicts(report).values()) == {"conflicts"}
    assert [f.kind for f in report.findings] == ["ControllerOnlyConflict"]


def test_privileged_pod_sharing_with_a_confined_pod_is_flagged():
    privileged = pod(name="agent", options=None, containers=[
        {"name": "c", "securityContext": {"privileged": True}, "volumeMounts": [{"name": "vol", "mountPath": "/v"}]}])
    report = run(shared_volume() + [pod(name="app"), privileged])
    kinds = [f.kind for f in report.findings]
    assert "PrivilegedSharing" in kinds and report.breaks


def test_multiple_labels_inside_one_pod_break_it_alone():
    containers = [{"name": "a", "securityContext": {"seLinuxOptions": {"level": "s0:c1"}},
                   "volumeMounts": [{"name": "vol", "mountPath": "/a"}]},
                  {"name": "b", "securityContext": {"seLinuxOptions": {"level": "s0:c2"}},
                   "volumeMounts": [{"name": "vol", "mountPath": "/b"}]}]
    report = run(shared_volume() + [pod(name="solo", options=None, containers=containers)])
    assert verdicts(report) == {"Pod ns/solo": "breaks"}
    assert report.findings[0].kind == "MultipleLabels"
    assert "same seLinuxOptions" in report.workloads[0].remedy


def test_a_pod_naming_one_volume_twice_shares_it_with_itself_only_when_it_shares_another():
    own = [pv("pv-own", modes=RWX), pvc("own", "pv-own", RWX), pv("pv-solo", modes=RWX), pvc("solo", "pv-solo", RWX)]
    twice = [{"name": "vol", "persistentVolumeClaim": {"claimName": "claim"}},
             {"name": "x", "persistentVolumeClaim": {"claimName": "own"}},
             {"name": "y", "persistentVolumeClaim": {"claimName": "own"}}]
    alone = [{"name": "x", "persistentVolumeClaim": {"claimName": "solo"}},
             {"name": "y", "persistentVolumeClaim": {"claimName": "solo"}}]
    report = run(shared_volume() + own + [pod(name="a", volumes=twice), pod(name="b", options={"level": "s0:c3"}),
                                          pod(name="c", volumes=alone)])
    assert report.shared_volumes == 2
    assert sorted(w.workload.ref for w in report.workloads) == ["Pod ns/a", "Pod ns/b"]
    assert f"kubernetes.io/csi/{DRIVER}^pv-own" in next(w for w in report.workloads if w.workload.name == "a").volumes


def test_two_pods_of_one_name_count_once_and_the_last_copy_wins():
    first, second = pod(name="a", policy="Recursive"), pod(name="a")
    for pods, recursive in (([first, second], False), ([second, first], True)):
        report = run(shared_volume() + pods + [pod(name="b", options={"level": "s0:c3"})])
        a = next(w for w in report.workloads if w.workload.name == "a")
        assert a.pods == {"ns/a"} and a.already_recursive is recursive
        assert report.pods_checked == 2


def test_a_pod_read_again_under_another_name_with_its_uid_counts_once():
    old, renamed = pod(name="a"), pod(name="a2", options={"level": "s0:c3"})
    old["metadata"]["uid"] = renamed["metadata"]["uid"] = "uid-1"
    report = run(shared_volume() + [old, pod(name="b"), renamed])
    assert report.pods_checked == 2
    assert sorted(w.workload.name for w in report.workloads) == ["a2", "b"]


@pytest.mark.parametrize("censor", [False, True])
def test_json_chunks_are_the_json_of_to_json(censor):
    report = _conflicted_report_across_namespaces()
    assert report.conflicts and report.findings
    assert "".join(report.json_chunks(censor)) == json.dumps(report.to_json(censor), separators=(",", ":"))


def _conflicted_report_across_namespaces():
    privileged = pod(name="agent\u00e9", options=None, containers=[
        {"name": "c", "securityContext": {"privileged": True}, "volumeMounts": [{"name": "vol", "mountPath": "/v"}]}])
    return run(shared_volume(namespaces=("ns", "other")) + [
        pod(name='a "quoted"'), pod(name="b", namespace="other", options={"level": "s0:c3"}), privileged,
        pod(name="c", options={"user": "staff_u", "level": "s0:c1,c2"})])


# --- workloads -------------------------------------------------------------------------------------------

def test_pods_are_grouped_by_workload():
    web = [owned(pod(name=f"web-5d4f-{i}"), "ReplicaSet", "web-5d4f", {"pod-template-hash": "5d4f"})
           for i in range(3)]
    backup = owned(pod(name="backup-28999999-x", policy="Recursive"), "Job", "backup-28999999")
    report = run(shared_volume() + web + [backup])
    assert verdicts(report) == {"CronJob ns/backup": "breaks", "Deployment ns/web": "breaks"}
    web_report = next(w for w in report.workloads if w.workload.name == "web")
    assert len(web_report.pods) == 3 and web_report.workload.inferred
    assert "Deployment ns/web" in next(w for w in report.workloads if w.workload.name == "backup").remedy


# --- two PVs of one backend volume with different access modes ------------------------------------------

def _mixed_modes(rwop_namespace, rwx_namespace):
    """One backend volume: an RWOP PV claimed in one namespace, an RWX PV in the other; a pod in each."""
    objects = [csidriver()]
    for namespace, modes in ((rwop_namespace, ("ReadWriteOncePod",)), (rwx_namespace, RWX)):
        volume = pv(name=f"pv-{namespace}", modes=modes)
        volume["spec"]["csi"]["volumeHandle"] = "backend-1"
        objects += [volume, pvc(volume=f"pv-{namespace}", modes=modes, namespace=namespace)]
    return objects + [pod(name="a", namespace=rwop_namespace), pod(name="b", namespace=rwx_namespace,
                                                                    options={"level": "s0:c3"})]


@pytest.mark.parametrize("version", ["1.36", "1.37"])
@pytest.mark.parametrize("rwop_namespace, rwx_namespace", [("aa", "zz"), ("zz", "aa")])
def test_mixed_access_modes_break_whatever_the_pair_order(version, rwop_namespace, rwx_namespace):
    # Kubelet judges the pod that arrives second by its own PV: the RWOP pod waits behind the RWX one on any
    # version (RWOP is enforced since the gate went on), and RWOP does not keep the two apart, since it binds
    # per claim and they use two claims.
    report = run(_mixed_modes(rwop_namespace, rwx_namespace), version=version)
    (clash,) = report.clashes
    assert clash.breaks and not clash.exclusive
    assert set(verdicts(report).values()) == {"breaks"}
    reasons = [r for w in report.workloads for r in w.reasons]
    if version == "1.36":  # SELinuxMount off: only the RWOP pod's mount is enforced
        assert any(f"{rwop_namespace}/a waits in ContainerCreating when it starts second" in r for r in reasons)
    else:
        assert any("whichever starts second" in r for r in reasons)


def test_pods_of_one_rwop_claim_never_run_together():
    report = run(shared_volume(modes=("ReadWriteOncePod",)) + [pod(name="a"), pod(name="b", options={"level":
                                                                                                    "s0:c3"})])
    (clash,) = report.clashes
    assert clash.exclusive and not clash.breaks
    assert any("never run together" in r for w in report.workloads for r in w.reasons)


# --- the blind spots and privileged sharing --------------------------------------------------------------

def test_container_t_type_next_to_no_type_conflicts_in_neither_view():
    """`type: container_t` next to no type: the controller cannot compare an empty type, and kubelet's file
    label never carries the pod's type (only user and level reach it), so both views agree: no conflict."""
    report = run(shared_volume() + [pod(name="a", options={"type": "container_t", "level": "s0:c1,c2"}),
                                    pod(name="b")])
    assert report.conflicts == () and report.clashes == () and report.findings == ()
    assert set(verdicts(report).values()) == {"ok"}


def test_spc_t_by_options_counts_as_privileged_sharing():
    report = run(shared_volume() + [pod(name="app"), pod(name="agent", options={"type": "spc_t",
                                                                               "level": "s0:c1,c2"})])
    (finding,) = [f for f in report.findings if f.kind == "PrivilegedSharing"]
    assert finding.pods == ("ns/agent", "ns/app")


# --- remediation -----------------------------------------------------------------------------------------

def _conflicted_report():
    web = owned(pod(name="web-1"), "ReplicaSet", "web-7f", {"pod-template-hash": "7f"})
    db = owned(pod(name="db-0", options={"level": "s0:c3"}), "StatefulSet", "db")
    cron = owned(pod(name="backup-28999999-x", policy="Recursive"), "Job", "backup-28999999")
    bare = pod(name="debug", options={"level": "s0:c5"})
    return run(shared_volume() + [web, db, cron, bare])


def test_remediation_targets_every_non_recursive_workload_on_the_volume():
    report = _conflicted_report()
    assert sorted(w.workload.ref for w in targets(report)) == ["Deployment ns/web", "Pod ns/debug",
                                                               "StatefulSet ns/db"]


def _skeleton(kind):
    """A minimal valid object of each kind, to merge a patch onto for schema validation."""
    pod_spec = {"containers": [{"name": "c", "image": "busybox"}]}
    template = {"metadata": {"labels": {"app": "x"}}, "spec": pod_spec}
    return {
        "Deployment": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                       "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template}},
        "StatefulSet": {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "x"},
                        "spec": {"selector": {"matchLabels": {"app": "x"}}, "serviceName": "x",
                                 "template": template}},
        "Pod": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod_spec},
        "DaemonSet": {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "x"},
                      "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template}},
        "ReplicaSet": {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "x"},
                       "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template}},
        "Job": {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
                "spec": {"template": {"spec": {**pod_spec, "restartPolicy": "Never"}}}},
        "CronJob": {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "x"},
                    "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {
                        "spec": {**pod_spec, "restartPolicy": "OnFailure"}}}}}},
    }[kind]


def _merge(base, patch):
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


@pytest.mark.parametrize("version", ["1.36.0", "1.37.0"])
def test_patches_validate_against_the_schemas(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    report = _conflicted_report()
    docs = documents(report, "patches")
    assert len(docs) == 2 and "Pod" not in {doc["kind"] for doc in docs}
    assert [w.workload.kind for w in bare_pods(report)] == ["Pod"]  # recreated, not patched
    for doc in docs:
        merged = _merge(_skeleton(doc["kind"]), copy.deepcopy(doc))
        kubernetes_validate.validate(merged, version, strict=True)
        spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
        assert spec["securityContext"]["seLinuxChangePolicy"] == "Recursive"


def _other_kinds_report():
    agent = owned(pod(name="agent-x2k"), "DaemonSet", "agent")
    migrate = owned(pod(name="migrate-abcde", options={"level": "s0:c3"}), "Job", "migrate")
    nightly = owned(pod(name="nightly-29000000-q", options={"level": "s0:c4"}), "Job", "nightly-29000000")
    standalone = owned(pod(name="standalone-9", options={"level": "s0:c5"}), "ReplicaSet", "standalone")
    return run(shared_volume() + [agent, migrate, nightly, standalone])


@pytest.mark.parametrize("version", ["1.36.0", "1.37.0"])
def test_patches_of_other_kinds_validate_against_the_schemas(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = documents(_other_kinds_report(), "patches")
    assert sorted(d["kind"] for d in docs) == ["CronJob", "DaemonSet", "Job", "ReplicaSet"]
    for doc in docs:
        merged = _merge(_skeleton(doc["kind"]), copy.deepcopy(doc))
        kubernetes_validate.validate(merged, version, strict=True)
        template = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
        assert template["template"]["spec"]["securityContext"] == {"seLinuxChangePolicy": "Recursive"}
    # The patch lands where kubectl patch merges it: a typo in the path would fail strict validation.
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    wrong = _merge(_skeleton("CronJob"), {"spec": {"template": {"spec": {"securityContext": {}}}}})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, version, strict=True)
    assert cron["metadata"] == {"name": "nightly", "namespace": "ns"}


def test_a_bad_patch_would_fail_validation():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    doc = _merge(_skeleton("Pod"), {"spec": {"securityContext": {"seLinuxChangePolicyy": "Recursive"}}})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.36.0", strict=True)


@pytest.mark.parametrize("version", ["1.36.0", "1.37.0"])
def test_mutating_admission_policy_validates(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    policy, binding = documents(_conflicted_report(), "mutating-admission-policy")
    for doc in (policy, binding):
        kubernetes_validate.validate(doc, version, strict=True)
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"] == ["ns"]


def test_kyverno_policy_shape():
    (policy,) = documents(_conflicted_report(), "kyverno")
    assert (policy["apiVersion"], policy["kind"]) == ("kyverno.io/v1", "ClusterPolicy")
    rule = policy["spec"]["rules"][0]
    assert rule["match"]["any"][0]["resources"]["kinds"] == ["Pod"]
    assert rule["match"]["any"][0]["resources"]["namespaces"] == ["ns"]
    assert rule["mutate"]["patchStrategicMerge"]["spec"]["securityContext"] == {"+(seLinuxChangePolicy)": "Recursive"}


def test_nothing_to_remediate_when_nothing_conflicts():
    report = run(shared_volume() + [pod(name="a"), pod(name="b")])
    for form in ("patches", "mutating-admission-policy", "kyverno"):
        assert documents(report, form) == []


# --- parity with upstream (issue #19): each case names the upstream file and function it follows ----------

def _inline(kind, source, name="disk"):
    return [{"name": name, kind: source}]


# csi-translation-lib plugins/*.go TranslateInTreeInlineVolumeToCSI, keyed as the CSI plugin's GetVolumeName
# (driver^handle) by GetUniqueVolumeNameFromSpec in selinux_warning_controller.go syncVolume.
INLINE_MIGRATED = [
    ("aws_ebs.go", "awsElasticBlockStore", {"volumeID": "aws://us-east-1a/vol-0abc"},
     {"volumeID": "vol-0abc"}, "kubernetes.io/csi/ebs.csi.aws.com^vol-0abc"),
    ("gce_pd.go", "gcePersistentDisk", {"pdName": "pd1"}, {"pdName": "pd1", "readOnly": True},
     "kubernetes.io/csi/pd.csi.storage.gke.io^projects/UNSPECIFIED/zones/UNSPECIFIED/disks/pd1"),
    ("azure_disk.go", "azureDisk", {"diskName": "d", "diskURI": "/subscriptions/s/disks/d"},
     {"diskName": "d", "diskURI": "/subscriptions/s/disks/d"},
     "kubernetes.io/csi/disk.csi.azure.com^/subscriptions/s/disks/d"),
    ("azure_file.go", "azureFile", {"secretName": "azure-storage-account-acct-secret", "shareName": "share"},
     {"secretName": "acct", "shareName": "share"}, "kubernetes.io/csi/file.csi.azure.com^#acct#share#disk#ns"),
    ("openstack_cinder.go", "cinder", {"volumeID": "c-1"}, {"volumeID": "c-1"},
     "kubernetes.io/csi/cinder.csi.openstack.org^c-1"),
    ("vsphere_volume.go", "vsphereVolume", {"volumePath": "[ds] v.vmdk"}, {"volumePath": "[ds] v.vmdk"},
     "kubernetes.io/csi/csi.vsphere.vmware.com^[ds] v.vmdk"),
    ("portworx.go", "portworxVolume", {"volumeID": "px-1"}, {"volumeID": "px-1"},
     "kubernetes.io/csi/pxd.portworx.com^px-1"),
]


@pytest.mark.parametrize("upstream, kind, first, second, key", INLINE_MIGRATED,
                         ids=[case[0] for case in INLINE_MIGRATED])
def test_inline_volumes_of_migrated_plugins_are_shared_by_their_translated_handle(upstream, kind, first, second,
                                                                                    key):
    driver = key.split("/")[2].split("^")[0]
    report = run([csidriver(driver)] + [
        pod(name="a", volumes=_inline(kind, first)),
        pod(name="b", volumes=_inline(kind, second), options={"level": "s0:c9"})])
    assert report.shared_volumes == 1
    assert pairs(report) == [("SELinuxLabel", "a", ":::s0:c1,c2", "b", ":::s0:c9"),
                             ("SELinuxLabel", "b", ":::s0:c9", "a", ":::s0:c1,c2")]
    assert {c.volume for c in report.conflicts} == {key}


def test_an_inline_disk_and_a_pv_of_the_same_disk_are_one_volume():
    # aws_ebs.go: TranslateInTreePVToCSI and TranslateInTreeInlineVolumeToCSI give the same handle.
    objects = [csidriver("ebs.csi.aws.com"),
               pv("pv-ebs", modes=["ReadWriteOnce"], source={"awsElasticBlockStore": {"volumeID": "vol-0abc"}}),
               pvc(volume="pv-ebs", modes=["ReadWriteOnce"]),
               pod(name="a"),
               pod(name="b", volumes=_inline("awsElasticBlockStore", {"volumeID": "aws:///vol-0abc"}),
                   options={"level": "s0:c9"})]
    report = run(objects)
    assert {c.volume for c in report.conflicts} == {"kubernetes.io/csi/ebs.csi.aws.com^vol-0abc"}
    assert len(report.conflicts) == 2


# csi-translation-lib TranslateInTreePVToCSI: two PVs that name one backend disk are one volume upstream.
IN_TREE_PVS = [
    ("aws_ebs.go", {"awsElasticBlockStore": {"volumeID": "aws://us-east-1a/vol-1"}},
     {"awsElasticBlockStore": {"volumeID": "vol-1"}}, {}, "ebs.csi.aws.com^vol-1"),
    ("gce_pd.go zonal", {"gcePersistentDisk": {"pdName": "pd1"}}, {"gcePersistentDisk": {"pdName": "pd1"}},
     {"topology.kubernetes.io/zone": "europe-west1-b"},
     "pd.csi.storage.gke.io^projects/UNSPECIFIED/zones/europe-west1-b/disks/pd1"),
    ("gce_pd.go regional", {"gcePersistentDisk": {"pdName": "pd1"}}, {"gcePersistentDisk": {"pdName": "pd1"}},
     {"failure-domain.beta.kubernetes.io/zone": "europe-west1-b__europe-west1-c"},
     "pd.csi.storage.gke.io^projects/UNSPECIFIED/regions/europe-west1/disks/pd1"),
    ("azure_disk.go", {"azureDisk": {"diskName": "d", "diskURI": "/s/d"}},
     {"azureDisk": {"diskName": "d", "diskURI": "/s/d"}}, {}, "disk.csi.azure.com^/s/d"),
    ("openstack_cinder.go", {"cinder": {"volumeID": "c"}}, {"cinder": {"volumeID": "c"}}, {},
     "cinder.csi.openstack.org^c"),
    ("vsphere_volume.go", {"vsphereVolume": {"volumePath": "p"}}, {"vsphereVolume": {"volumePath": "p"}}, {},
     "csi.vsphere.vmware.com^p"),
    ("portworx.go", {"portworxVolume": {"volumeID": "x"}}, {"portworxVolume": {"volumeID": "x"}}, {},
     "pxd.portworx.com^x"),
]


@pytest.mark.parametrize("upstream, first, second, labels, key", IN_TREE_PVS, ids=[c[0] for c in IN_TREE_PVS])
def test_in_tree_pvs_of_one_backend_disk_are_one_volume(upstream, first, second, labels, key):
    driver = key.split("^")[0]
    objects = [csidriver(driver)]
    for index, source in enumerate((first, second)):
        volume = pv(f"pv-{index}", modes=["ReadWriteOnce"], source=source)
        volume["metadata"]["labels"] = dict(labels)
        objects += [volume, pvc(name=f"claim-{index}", volume=f"pv-{index}", modes=["ReadWriteOnce"])]
    objects += [pod(name="a", volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "claim-0"}}]),
                pod(name="b", volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "claim-1"}}],
                    options={"level": "s0:c9"})]
    report = run(objects)
    assert {c.volume for c in report.conflicts} == {f"kubernetes.io/csi/{key}"}


def test_azure_file_pvs_are_keyed_per_pv_as_the_translation_puts_the_pv_name_in_the_handle():
    # azure_file.go TranslateInTreePVToCSI: rg#account#share#<PV name>#<namespace>.
    objects = [csidriver("file.csi.azure.com")]
    for index in range(2):
        volume = pv(f"pv-{index}", modes=["ReadWriteMany"], source={"azureFile": {
            "secretName": "azure-storage-account-acct-secret", "shareName": "share", "secretNamespace": "ns"}})
        objects += [volume, pvc(name=f"claim-{index}", volume=f"pv-{index}", modes=["ReadWriteMany"])]
    objects += [pod(name="a", volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "claim-0"}}]),
                pod(name="b", volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "claim-1"}}],
                    options={"level": "s0:c9"})]
    report = run(objects)
    assert report.conflicts == () and report.shared_volumes == 0


def test_multiple_labels_in_one_pod_skip_that_volume_for_the_controller():
    # selinux_warning_controller.go syncPod: GetMountSELinuxLabel fails with MultipleSELinuxLabelsError, the
    # Warning event is posted and the loop goes on (`continue`): the pod's use of the volume is never added.
    mixed = pod(name="mixed", containers=[
        {"name": "one", "volumeMounts": [{"name": "vol", "mountPath": "/a"}],
         "securityContext": {"seLinuxOptions": {"level": "s0:c1,c2"}}},
        {"name": "two", "volumeMounts": [{"name": "vol", "mountPath": "/b"}],
         "securityContext": {"seLinuxOptions": {"level": "s0:c5"}}}])
    report = run(shared_volume() + [mixed, pod(name="other", options={"level": "s0:c9"})])
    assert report.conflicts == ()  # before: mixed as Recursive with "", conflicting on policy and label
    assert [f.kind for f in report.findings if f.kind == "MultipleLabels"] == ["MultipleLabels"]
    assert verdicts(report)["Pod ns/mixed"] == "breaks"  # kubelet still refuses it on an eligible volume


def test_one_missing_claim_leaves_the_pods_other_volumes_in_the_report():
    # selinux_warning_controller.go syncPod: CreateVolumeSpec fails for the missing claim, `continue`.
    both = pod(name="b", options={"level": "s0:c9"}, volumes=[
        {"name": "gone", "persistentVolumeClaim": {"claimName": "gone"}},
        {"name": "vol", "persistentVolumeClaim": {"claimName": "claim"}}])
    report = run(shared_volume() + [pod(name="a"), both])
    assert len(report.conflicts) == 2
    assert [(f.kind, f.pods) for f in report.findings if f.kind == "UnresolvedVolume"] == [
        ("UnresolvedVolume", ("ns/b",))]


def test_untranslatable_inline_volume_is_a_finding():
    # aws_ebs.go KubernetesVolumeIDToEBSVolumeID refuses an aws:// ID without vol-: CreateVolumeSpec fails.
    report = run([csidriver("ebs.csi.aws.com"),
                  pod(name="a", volumes=_inline("awsElasticBlockStore", {"volumeID": "aws://zone/disk-1"}))])
    assert [f.kind for f in report.findings] == ["UnresolvedVolume"]
    assert "is not an EBS volume ID" in report.findings[0].message
