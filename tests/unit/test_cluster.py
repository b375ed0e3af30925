"""agent/cluster.py: the index, the cheap first pass over claims, and partial resolution for the audit."""

import dataclasses

import pytest

from agent.cluster import Cluster
from agent.errors import InvalidInput, InvalidManifest
from k8s_builders import DRIVER, csidriver, pod, pv, pvc


def storage():
    """Claims of every kind the first pass resolves: bound CSI (with and without a volume handle), bound
    in-tree, bound in-tree migrated to CSI, unbound with a StorageClass, and a bound ephemeral claim."""
    no_handle = pv("pv-nohandle", modes=["ReadWriteMany"])
    del no_handle["spec"]["csi"]["volumeHandle"]
    return [
        csidriver(), csidriver("ebs.csi.aws.com", se_linux_mount=None),
        {"kind": "StorageClass", "metadata": {"name": "fast"}, "provisioner": DRIVER},
        pv("pv-csi", modes=["ReadWriteMany"]), pvc("csi", "pv-csi", ["ReadWriteMany"]),
        no_handle, pvc("nohandle", "pv-nohandle", ["ReadWriteMany"]),
        pv("pv-nfs", modes=["ReadWriteMany"], source={"nfs": {"server": "s", "path": "/"}}),
        pvc("nfs", "pv-nfs", ["ReadWriteMany"]),
        pv("pv-ebs", modes=["ReadWriteOnce"], source={"awsElasticBlockStore": {"volumeID": "v"}}),
        pvc("ebs", "pv-ebs", ["ReadWriteOnce"]),
        pvc("unbound", None, ["ReadWriteOnce"], storage_class="fast"),
        pv("pv-eph", modes=["ReadWriteOncePod"]), pvc("p-scratch", "pv-eph"),
    ]


def many_volumes():
    claims = ["csi", "nohandle", "nfs", "ebs", "unbound"]
    volumes = [{"name": f"v-{claim}", "persistentVolumeClaim": {"claimName": claim}} for claim in claims]
    volumes += [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {"storageClassName": "fast"}}}},
                {"name": "config", "configMap": {"name": "c"}},
                {"name": "inline", "csi": {"driver": DRIVER}}]
    return pod(volumes=volumes)


def test_claimed_volumes_name_the_volumes_resolution_finds():
    cluster = Cluster(storage())
    obj = many_volumes()
    resolved = cluster.resolve_pod(obj)
    expected = [(v.name, v.unique_name) for v in resolved.volumes if v.unique_name]
    assert cluster.claimed_volumes(obj) == expected
    assert [name for name, _ in expected] == ["v-csi", "v-nohandle", "v-nfs", "v-ebs", "scratch"]
    assert dict(expected)["v-csi"] == f"kubernetes.io/csi/{DRIVER}^pv-csi"
    assert dict(expected)["v-nfs"] == "kubernetes.io/nfs/pv-nfs"
    assert dict(expected)["v-ebs"] == "kubernetes.io/csi/ebs.csi.aws.com^pv-ebs"


@pytest.mark.parametrize("only", [set(), {"v-csi"}, {"v-ebs", "config", "scratch"}, {"nothing-of-that-name"}])
def test_resolving_only_some_volumes_gives_the_same_facts_for_them(only):
    cluster = Cluster(storage())
    obj = many_volumes()
    full = cluster.resolve_pod(obj)
    partial = Cluster(storage()).resolve_pod(obj, only)
    assert partial.volumes == tuple(v for v in full.volumes if v.name in only)
    assert partial == dataclasses.replace(full, volumes=partial.volumes)


def broken(problem):
    """A pod whose first volume is fine and whose other volume or container carries `problem`."""
    objects = storage()
    volumes = [{"name": "ok", "persistentVolumeClaim": {"claimName": "csi"}}]
    containers = None
    if problem == "claim name":
        volumes.append({"name": "bad", "persistentVolumeClaim": {}})
    elif problem == "inline driver":
        volumes.append({"name": "bad", "csi": {}})
    elif problem == "driver object":
        objects = [o for o in objects if o["metadata"]["name"] != "ebs.csi.aws.com"]
        objects.append({"kind": "CSIDriver", "metadata": {"name": "ebs.csi.aws.com"}, "spec": {"seLinuxMount": "1"}})
        volumes.append({"name": "bad", "persistentVolumeClaim": {"claimName": "ebs"}})
    elif problem == "missing claim":
        volumes.append({"name": "bad", "persistentVolumeClaim": {"claimName": "gone"}})
    elif problem == "container options":
        containers = [{"name": "a", "volumeMounts": [{"name": "ok", "mountPath": "/ok"}]},
                      {"name": "b", "securityContext": {"seLinuxOptions": {"level": "s0:c1,,c2"}}}]
    return Cluster(objects), pod(volumes=volumes, containers=containers)


@pytest.mark.parametrize("problem", ["claim name", "inline driver", "driver object", "missing claim",
                                     "container options"])
def test_volumes_left_out_are_still_checked(problem):
    cluster, obj = broken(problem)
    with pytest.raises(InvalidInput) as full:
        cluster.resolve_pod(obj)
    cluster, obj = broken(problem)
    with pytest.raises(InvalidInput) as partial:
        cluster.resolve_pod(obj, {"ok"})
    assert str(partial.value) == str(full.value)


def test_options_are_parsed_once_per_spelling_and_errors_still_name_each_pod():
    cluster = Cluster(storage())
    a, b = (cluster.resolve_pod(pod(volumes=[], name=name, options={"level": "s0:c1,c2"})) for name in "ab")
    assert a.pod_options == b.pod_options and a.pod_options is b.pod_options
    for name in ("x", "y"):
        with pytest.raises(InvalidInput, match=f"Pod ns/{name} spec.securityContext"):
            cluster.resolve_pod(pod(volumes=[], name=name, options={"level": "s0:c1,,c2"}))
    with pytest.raises(InvalidInput, match="seLinuxOptions.user must be a string"):
        cluster.resolve_pod(pod(volumes=[], name="z", options={"user": ["unhashable"], "level": "s0"}))


def test_pod_ref_is_kept():
    facts = Cluster(storage()).resolve_pod(pod(volumes=[], name="a", namespace="team"))
    assert facts.ref == "team/a" and facts.ref is facts.ref


def test_index_keeps_an_empty_namespace_apart_from_default():
    claim = pvc("csi", "pv-csi", ["ReadWriteMany"], namespace="")
    cluster = Cluster([claim])
    assert ("", "csi") in cluster.pvcs and ("default", "csi") not in cluster.pvcs
    with pytest.raises(InvalidManifest, match="without kind or metadata.name"):
        Cluster([{"kind": "Pod", "metadata": "not an object"}])
