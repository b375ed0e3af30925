"""agent/kubelet/decision.py: the KEP-1710 truth table (reference §1.2) and the special cases (§1.3, §1.6).

Objects go through agent/k8s/resolve.py as dicts, exactly as `explain` reads them, so these tests cover the
resolution of pods, claims, volumes and drivers too.
"""

import pytest

from agent.kubelet import gates as gates_mod
from agent.k8s.resolve import Cluster
from agent.kubelet.container_defaults import BUILTIN_DEFAULTS, parse_contexts
from agent.errors import InvalidFeatureGates, InvalidLabel, InvalidManifest
from agent.kubelet.decision import MountMode, NodeFacts, decide_pod
from k8s_builders import DRIVER, csidriver, pod, pv, pvc

FULL = "system_u:object_r:container_file_t:s0:c1,c2"


def decide(objects, version="1.36", overrides=None, selinux=True, defaults=BUILTIN_DEFAULTS):
    node = NodeFacts(gates_mod.resolve(version, overrides or {}), selinux, defaults)
    cluster = Cluster(objects)
    return {p.name: p for p in (decide_pod(cluster.resolve_pod(obj), node) for obj in cluster.pods)}


def one(objects, **kwargs):
    (result,) = decide(objects, **kwargs).values()
    (volume,) = result.volumes
    return volume


def outcome(volume):
    return volume.mode.value, volume.label.text if volume.label else None


# --- the upstream truth table ----------------------------------------------------------------------------

GATE_CONFIGS = {
    "RWOP": {"SELinuxChangePolicy": False, "SELinuxMount": False},
    "RWOP+ChangePolicy": {"SELinuxChangePolicy": True, "SELinuxMount": False},
    "+SELinuxMount": {"SELinuxChangePolicy": True, "SELinuxMount": True},
}
# Which gate configurations each version admits (locked GA gates cannot be turned off).
ADMITTED = {"1.33": {"RWOP", "RWOP+ChangePolicy", "+SELinuxMount"},
            "1.36": {"RWOP+ChangePolicy", "+SELinuxMount"},
            "1.37": {"+SELinuxMount"}}
DEFAULT_CONFIG = {"1.33": "RWOP+ChangePolicy", "1.36": "RWOP+ChangePolicy", "1.37": "+SELinuxMount"}

# (gate config, PV access modes, plugin supports, seLinuxOptions, policy, expected mode, expected label)
TRUTH_TABLE = [
    ("RWOP", ["ReadWriteOncePod"], True, {"level": "s0:c1,c2"}, None, "mount", FULL),
    ("RWOP", ["ReadWriteOncePod"], True, None, None, "recursive", None),
    ("RWOP", ["ReadWriteOncePod"], False, {"level": "s0:c1,c2"}, None, "recursive", FULL),
    ("RWOP", ["ReadWriteMany"], True, {"level": "s0:c1,c2"}, None, "recursive", FULL),
    # With the ChangePolicy gate off the field is ignored: Recursive does not stop the mount.
    ("RWOP", ["ReadWriteOncePod"], True, {"level": "s0:c1,c2"}, "Recursive", "mount", FULL),
    ("RWOP+ChangePolicy", ["ReadWriteMany"], True, {"level": "s0:c1,c2"}, None, "recursive", FULL),
    ("RWOP+ChangePolicy", ["ReadWriteMany"], True, {"level": "s0:c1,c2"}, "Recursive", "recursive", FULL),
    ("RWOP+ChangePolicy", ["ReadWriteMany"], True, {"level": "s0:c1,c2"}, "MountOption", "recursive", FULL),
    ("RWOP+ChangePolicy", ["ReadWriteOncePod"], True, {"level": "s0:c1,c2"}, "Recursive", "recursive", FULL),
    ("RWOP+ChangePolicy", ["ReadWriteOncePod"], True, {"level": "s0:c1,c2"}, "MountOption", "mount", FULL),
    ("RWOP+ChangePolicy", ["ReadWriteOncePod"], True, {"level": "s0:c1,c2"}, None, "mount", FULL),
    ("RWOP+ChangePolicy", ["ReadWriteOncePod", "ReadWriteOnce"], True, {"level": "s0:c1,c2"}, None,
     "recursive", FULL),
    ("+SELinuxMount", ["ReadWriteMany"], True, {"level": "s0:c1,c2"}, None, "mount", FULL),
    ("+SELinuxMount", ["ReadWriteMany"], True, {"level": "s0:c1,c2"}, "MountOption", "mount", FULL),
    ("+SELinuxMount", ["ReadWriteOnce"], True, {"level": "s0:c1,c2"}, None, "mount", FULL),
    ("+SELinuxMount", ["ReadOnlyMany"], True, {"level": "s0:c1,c2"}, None, "mount", FULL),
    ("+SELinuxMount", ["ReadWriteMany"], True, {"level": "s0:c1,c2"}, "Recursive", "recursive", FULL),
    ("+SELinuxMount", ["ReadWriteOncePod"], True, {"level": "s0:c1,c2"}, "Recursive", "recursive", FULL),
    ("+SELinuxMount", ["ReadWriteMany"], False, {"level": "s0:c1,c2"}, None, "recursive", FULL),
    ("+SELinuxMount", ["ReadWriteMany"], True, None, None, "recursive", None),
]


def _cases():
    for version in ("1.33", "1.36", "1.37"):
        for row in TRUTH_TABLE:
            config = row[0]
            yield pytest.param(version, *row, id=f"{version}-{config}-{'/'.join(row[1])}-"
                                                 f"{'supported' if row[2] else 'unsupported'}-"
                                                 f"{'label' if row[3] else 'nolabel'}-{row[4]}")


@pytest.mark.parametrize("version, config, modes, supported, options, policy, mode, label", list(_cases()))
def test_truth_table(version, config, modes, supported, options, policy, mode, label):
    objects = [csidriver(se_linux_mount=supported), pv(modes=modes), pvc(modes=modes),
               pod(options=options, policy=policy)]
    if config not in ADMITTED[version]:
        with pytest.raises(InvalidFeatureGates):
            gates_mod.resolve(version, GATE_CONFIGS[config])
        return
    volume = one(objects, version=version, overrides=GATE_CONFIGS[config])
    assert outcome(volume) == (mode, label), volume.reasons
    assert volume.error is None
    # The same row with the version's default gates, when they are this configuration.
    if DEFAULT_CONFIG[version] == config:
        assert outcome(one(objects, version=version)) == (mode, label)


def test_incomplete_options_are_filled_from_the_defaults():
    volume = one([csidriver(), pv(), pvc(), pod(options={"user": "staff_u", "level": "s0:c9"})])
    assert outcome(volume) == ("mount", "staff_u:object_r:container_file_t:s0:c9")


def test_rwop_gate_off_means_no_context_mounts_and_no_multi_label_error():
    containers = [{"name": "a", "securityContext": {"seLinuxOptions": {"level": "s0:c1"}},
                   "volumeMounts": [{"name": "vol", "mountPath": "/a"}]},
                  {"name": "b", "securityContext": {"seLinuxOptions": {"level": "s0:c2"}},
                   "volumeMounts": [{"name": "vol", "mountPath": "/b"}]}]
    volume = one([csidriver(), pv(), pvc(), pod(containers=containers)], version="1.33",
                 overrides={"SELinuxMountReadWriteOncePod": False})
    assert volume.mode is MountMode.RECURSIVE and volume.error is None
    assert any("SELinuxMountReadWriteOncePod feature gate is off" in r for r in volume.reasons)


# --- special cases ---------------------------------------------------------------------------------------

def test_missing_level_is_never_context_mounted():
    volume = one([csidriver(), pv(), pvc(), pod(options={"type": "spc_t"})])
    assert outcome(volume) == ("recursive", None)
    assert any("level is not set" in r for r in volume.reasons)


def test_container_options_replace_pod_options_as_a_whole():
    containers = [{"name": "c", "securityContext": {"seLinuxOptions": {"type": "spc_t"}},
                   "volumeMounts": [{"name": "vol", "mountPath": "/v"}]}]
    volume = one([csidriver(), pv(), pvc(), pod(options={"level": "s0:c1,c2"}, containers=containers)])
    # The container's {type} replaced the pod's {level}: no level, so no context mount.
    assert outcome(volume) == ("recursive", None)


def test_container_level_overrides_pod_level():
    containers = [{"name": "c", "securityContext": {"seLinuxOptions": {"level": "s0:c7,c8"}},
                   "volumeMounts": [{"name": "vol", "mountPath": "/v"}]}]
    volume = one([csidriver(), pv(), pvc(), pod(options={"level": "s0:c1,c2"}, containers=containers)])
    assert outcome(volume) == ("mount", "system_u:object_r:container_file_t:s0:c7,c8")


def _two_containers(level_a, level_b, kind_b="containers"):
    a = {"name": "a", "volumeMounts": [{"name": "vol", "mountPath": "/a"}],
         "securityContext": {"seLinuxOptions": level_a} if level_a is not None else {}}
    b = {"name": "b", "volumeMounts": [{"name": "vol", "mountPath": "/b"}],
         "securityContext": {"seLinuxOptions": level_b} if level_b is not None else {}}
    spec = {"containers": [a]}
    spec.setdefault(kind_b, []).append(b)
    return spec


@pytest.mark.parametrize("kind_b", ["containers", "initContainers", "ephemeralContainers"])
def test_multiple_labels_block_the_pod_when_the_volume_is_eligible(kind_b):
    spec = _two_containers({"level": "s0:c2"}, {"level": "s0:c1"}, kind_b)
    obj = pod(options=None, containers=spec["containers"])
    obj["spec"].update({k: v for k, v in spec.items() if k != "containers"})
    volume = one([csidriver(), pv(), pvc(), obj])
    assert volume.mode is MountMode.SKIP
    assert volume.error == ("multiple SELinux labels found: system_u:object_r:container_file_t:s0:c1,"
                            "system_u:object_r:container_file_t:s0:c2")


def test_multiple_labels_only_warn_when_the_access_mode_is_not_eligible():
    spec = _two_containers({"level": "s0:c2"}, {"level": "s0:c1"})
    volume = one([csidriver(), pv(modes=["ReadWriteMany"]), pvc(modes=["ReadWriteMany"]),
                  pod(options=None, containers=spec["containers"])])
    assert outcome(volume) == ("recursive", None) and volume.error is None
    assert "kubelet only warns" in volume.reasons[0]


def test_empty_options_count_as_an_empty_label():
    # `seLinuxOptions: {}` adds "" to kubelet's label set, so it differs from a real label.
    spec = _two_containers({}, {"level": "s0:c1"})
    volume = one([csidriver(), pv(), pvc(), pod(options=None, containers=spec["containers"])])
    assert volume.error == "multiple SELinux labels found: ,system_u:object_r:container_file_t:s0:c1"


def test_a_container_without_options_adds_nothing():
    spec = _two_containers(None, {"level": "s0:c1"})
    volume = one([csidriver(), pv(), pvc(), pod(options=None, containers=spec["containers"])])
    assert outcome(volume) == ("mount", "system_u:object_r:container_file_t:s0:c1")


def test_same_label_spelled_differently_is_two_labels_to_kubelet():
    # kubelet keeps labels in a set of strings, so two spellings of one context block the pod.
    spec = _two_containers({"level": "s0:c1,c2"}, {"level": "s0:c2,c1"})
    volume = one([csidriver(), pv(), pvc(), pod(options=None, containers=spec["containers"])])
    assert volume.mode is MountMode.SKIP and volume.error.startswith("multiple SELinux labels found")
    assert "differ only in spelling" in volume.reasons[0]


@pytest.mark.parametrize("source", [{"emptyDir": {}}, {"secret": {"secretName": "s"}},
                                    {"configMap": {"name": "c"}}, {"projected": {"sources": []}},
                                    {"downwardAPI": {"items": []}}])
@pytest.mark.parametrize("version", ["1.33", "1.36", "1.37"])
def test_emptydir_family_is_always_relabelled(source, version):
    volume = one([pod(volumes=[{"name": "v", **source}])], version=version)
    assert outcome(volume) == ("recursive", FULL)


@pytest.mark.parametrize("source", [{"hostPath": {"path": "/data"}}, {"nfs": {"server": "s", "path": "/"}}])
def test_hostpath_and_nfs_are_never_relabelled(source):
    volume = one([pod(volumes=[{"name": "v", **source}])], version="1.37")
    assert volume.mode is MountMode.SKIP
    assert "never relabelled" in volume.reasons[-1]


def test_nfs_persistent_volume_is_never_relabelled():
    volume = one([pv(source={"nfs": {"server": "s", "path": "/x"}}, modes=["ReadWriteMany"]),
                  pvc(modes=["ReadWriteMany"]), pod()], version="1.37")
    assert volume.mode is MountMode.SKIP


@pytest.mark.parametrize("version", ["1.33", "1.36", "1.37"])
def test_inline_csi_ephemeral_volume_is_never_context_mounted(version):
    volume = one([csidriver(), pod(volumes=[{"name": "v", "csi": {"driver": DRIVER}}])], version=version)
    assert outcome(volume) == ("recursive", FULL)
    assert any("inline volumes never are" in r for r in volume.reasons)


def test_generic_ephemeral_volume_is_eligible_like_a_pv():
    objects = [csidriver(), pv(), pvc(name="p-scratch"),
               pod(volumes=[{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
                   "accessModes": ["ReadWriteOncePod"], "storageClassName": "fast"}}}}])]
    assert outcome(one(objects)) == ("mount", FULL)


def test_generic_ephemeral_volume_predicted_from_its_storage_class():
    storage_class = {"kind": "StorageClass", "metadata": {"name": "fast"}, "provisioner": DRIVER}
    objects = [csidriver(), storage_class,
               pod(volumes=[{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
                   "accessModes": ["ReadWriteOncePod"], "storageClassName": "fast"}}}}])]
    volume = one(objects)
    assert outcome(volume) == ("mount", FULL)
    assert "StorageClass fast" in volume.reasons[0]


def test_unbound_claim_without_storage_class_is_an_error():
    with pytest.raises(InvalidManifest) as info:
        decide([csidriver(), pvc(volume=None, storage_class="gone"), pod()])
    assert "PersistentVolumeClaim ns/claim is not bound" in str(info.value)


@pytest.mark.parametrize("version", ["1.33", "1.37"])
def test_block_volumes_get_no_label(version):
    containers = [{"name": "c", "volumeDevices": [{"name": "vol", "devicePath": "/dev/xvda"}]}]
    volume = one([csidriver(), pv(mode="Block"), pvc(), pod(containers=containers)], version=version)
    assert volume.mode is MountMode.SKIP
    assert "raw block device" in volume.reasons[0]


def test_block_persistent_volume_mounted_as_a_filesystem_is_skipped():
    volume = one([csidriver(), pv(mode="Block"), pvc(), pod()])
    assert volume.mode is MountMode.SKIP


def test_volume_not_mounted_by_any_container():
    volume = one([csidriver(), pv(), pvc(), pod(containers=[{"name": "c"}])])
    assert volume.mode is MountMode.SKIP and volume.reasons == ("no container mounts this volume",)


def test_selinux_disabled_skips_everything():
    result = decide([csidriver(), pv(), pvc(), pod(volumes=[
        {"name": "vol", "persistentVolumeClaim": {"claimName": "claim"}}, {"name": "e", "emptyDir": {}}])],
        selinux=False)
    assert {v.mode for v in result["p"].volumes} == {MountMode.SKIP}


def test_windows_pod_is_skipped():
    volume = one([csidriver(), pv(), pvc(), pod(os={"name": "windows"})])
    assert volume.mode is MountMode.SKIP


def test_missing_csidriver_counts_as_unsupported():
    volume = one([pv(), pvc(), pod()])
    assert outcome(volume) == ("recursive", FULL)
    assert any("kubelet treats a missing CSIDriver as seLinuxMount: false" in r for r in volume.reasons)


def test_unset_selinuxmount_field_counts_as_false():
    volume = one([csidriver(se_linux_mount=None), pv(), pvc(), pod()])
    assert volume.mode is MountMode.RECURSIVE


@pytest.mark.parametrize("source", [{"iscsi": {"targetPortal": "t", "iqn": "i", "lun": 0}},
                                    {"fc": {"wwids": ["x"]}}])
def test_in_tree_iscsi_and_fc_support_context_mounts(source):
    assert outcome(one([pv(source=source), pvc(), pod()])) == ("mount", FULL)


def test_in_tree_iscsi_inline_is_not_eligible():
    volume = one([pod(volumes=[{"name": "v", "iscsi": {"targetPortal": "t", "iqn": "i", "lun": 0}}])])
    assert volume.mode is MountMode.RECURSIVE


def test_migrated_in_tree_pv_uses_the_csi_driver_object():
    objects = [csidriver("ebs.csi.aws.com"), pv(source={"awsElasticBlockStore": {"volumeID": "v"}}), pvc(), pod()]
    assert outcome(one(objects)) == ("mount", FULL)
    objects[0] = csidriver("ebs.csi.aws.com", False)
    assert one(objects).mode is MountMode.RECURSIVE


def test_node_defaults_decide_role_and_type():
    debian = parse_contexts('process = "system_u:system_r:container_t:s0"\n'
                            'file = "system_u:object_r:svirt_lxc_file_t:s0"\n', "lxc_contexts")
    volume = one([csidriver(), pv(), pvc(), pod(options={"type": "spc_t", "level": "s0:c3"})], defaults=debian)
    assert outcome(volume) == ("mount", "system_u:object_r:svirt_lxc_file_t:s0:c3")


def test_privileged_container_is_noted_but_still_mounted():
    containers = [{"name": "c", "securityContext": {"privileged": True},
                   "volumeMounts": [{"name": "vol", "mountPath": "/v"}]}]
    volume = one([csidriver(), pv(), pvc(), pod(containers=containers)])
    assert volume.mode is MountMode.CONTEXT
    assert any("privileged container(s) c" in r for r in volume.reasons)


def test_several_volumes_decide_independently():
    result = decide([csidriver(), pv(), pvc(), pod(volumes=[
        {"name": "vol", "persistentVolumeClaim": {"claimName": "claim"}},
        {"name": "cache", "emptyDir": {}}, {"name": "host", "hostPath": {"path": "/x"}}])])
    assert [v.mode.value for v in result["p"].volumes] == ["mount", "recursive", "skip"]


@pytest.mark.parametrize("objects, words", [
    ([pod()], "PersistentVolumeClaim ns/claim is not in the input"),
    ([pvc(), pod()], "PersistentVolume pv1 (bound to PersistentVolumeClaim ns/claim) is not in the input"),
    ([pv(), pvc(), pod(policy="Sometimes")], "seLinuxChangePolicy 'Sometimes'"),
    ([pv(source={"csi": {}}), pvc(), pod()], "spec.csi.driver is missing"),
])
def test_unresolvable_input_names_the_object(objects, words):
    with pytest.raises(InvalidManifest) as info:
        decide(objects)
    assert words in str(info.value)


def test_malformed_level_is_refused_before_anything_else():
    with pytest.raises(InvalidLabel) as info:
        decide([csidriver(), pv(), pvc(), pod(options={"level": 's0:c1",ro'})])
    assert "Pod ns/p spec.securityContext" in str(info.value)


# Inline volumes of CSI-migrated plugins: kubelet's desired_state_of_world_populator translates them
# (csi-translation-lib TranslateInTreeInlineVolumeToCSI) before AddPodToVolume, so pkg/volume/util/selinux.go
# VolumeSupportsSELinuxMount sees a spec with a PersistentVolume and the translated access modes. (A recursive
# decision carries the label the runtime relabels with.)
@pytest.mark.parametrize("version, se_linux_mount, mode, label", [
    ("1.37", True, MountMode.CONTEXT, FULL),  # SELinuxMount on: every access mode is eligible
    ("1.36", True, MountMode.RECURSIVE, FULL),  # RWOP only, and the translation gives ReadWriteOnce
    ("1.37", False, MountMode.RECURSIVE, FULL),  # the driver does not support context mounts
])
def test_inline_migrated_volume_is_judged_as_its_translated_pv(version, se_linux_mount, mode, label):
    volume = one([csidriver("ebs.csi.aws.com", se_linux_mount=se_linux_mount),
                  pod(volumes=[{"name": "disk", "awsElasticBlockStore": {"volumeID": "vol-1"}}])], version=version)
    assert volume.mode is mode
    assert (volume.label.text if volume.label else None) == label
    assert any("CSI migration" in reason and "ReadWriteOnce" in reason for reason in volume.reasons)


def test_inline_volume_that_is_not_migrated_is_never_context_mounted():
    volume = one([csidriver(), pod(volumes=[{"name": "inline", "csi": {"driver": DRIVER}}])], version="1.37")
    assert volume.mode is MountMode.RECURSIVE
