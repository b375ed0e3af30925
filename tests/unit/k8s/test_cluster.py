"""agent/k8s/cluster.py: the index, the cheap first pass over claims, and partial resolution for the audit."""

import dataclasses

import pytest

from agent.k8s.cluster import Cluster
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
    # Keyed by the handle CSI migration translates the EBS volume ID to, not by the PV's name (issue #19 point 2).
    assert dict(expected)["v-ebs"] == "kubernetes.io/csi/ebs.csi.aws.com^v"


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
    with pytest.raises(InvalidManifest, match="^Pod: metadata must be an object, got string$"):
        Cluster([{"kind": "Pod", "metadata": "not an object"}])
    with pytest.raises(InvalidManifest, match="without kind or metadata.name"):
        Cluster([{"kind": "Pod", "metadata": {}}])


# --- input shapes: a field of the wrong JSON type names the object and the field --------------------------

def _spec(obj):
    return obj["spec"]


SHAPES = [
    (lambda p: _spec(p).__setitem__("volumes", "vol"), "Pod ns/p: spec.volumes must be a list, got string"),
    (lambda p: _spec(p)["volumes"].append("vol"), "Pod ns/p: spec.volumes[1] must be an object, got string"),
    (lambda p: _spec(p)["volumes"][0].__setitem__("persistentVolumeClaim", ["csi"]),
     "Pod ns/p: spec.volumes[0].persistentVolumeClaim must be an object, got list"),
    (lambda p: _spec(p)["volumes"][0]["persistentVolumeClaim"].__setitem__("claimName", ["csi"]),
     "Pod ns/p: spec.volumes[0].persistentVolumeClaim.claimName must be a string, got list"),
    (lambda p: _spec(p)["volumes"][0].__setitem__("name", {"n": 1}),
     "Pod ns/p: spec.volumes[0].name must be a string, got object"),
    (lambda p: _spec(p).__setitem__("securityContext", "privileged"),
     "Pod ns/p: spec.securityContext must be an object, got string"),
    (lambda p: _spec(p).__setitem__("containers", {"name": "c"}),
     "Pod ns/p: spec.containers must be a list, got object"),
    (lambda p: _spec(p).__setitem__("containers", ["c"]), "Pod ns/p: spec.containers[0] must be an object, got string"),
    (lambda p: _spec(p)["containers"][0].__setitem__("securityContext", []),
     "Pod ns/p: spec.containers[0].securityContext must be an object, got list"),
    (lambda p: _spec(p)["containers"][0].__setitem__("securityContext", {"privileged": "false"}),
     "Pod ns/p: spec.containers[0].securityContext.privileged must be a boolean, got string"),
    (lambda p: _spec(p)["containers"][0].__setitem__("volumeMounts", "vol"),
     "Pod ns/p: spec.containers[0].volumeMounts must be a list, got string"),
    (lambda p: _spec(p)["containers"][0]["volumeMounts"].insert(0, 7),
     "Pod ns/p: spec.containers[0].volumeMounts[0] must be an object, got number"),
    (lambda p: _spec(p)["containers"][0]["volumeMounts"][0].__setitem__("readOnly", "yes"),
     "Pod ns/p: spec.containers[0].volumeMounts[0].readOnly must be a boolean, got string"),
    (lambda p: _spec(p).__setitem__("initContainers", [{"name": 5}]),
     "Pod ns/p: spec.initContainers[0].name must be a string, got number"),
    (lambda p: p["metadata"].__setitem__("ownerReferences", {"kind": "Job"}),
     "Pod ns/p: metadata.ownerReferences must be a list, got object"),
    (lambda p: p["metadata"].__setitem__("ownerReferences", [{"kind": "Job", "name": "j", "controller": "yes"}]),
     "Pod ns/p: metadata.ownerReferences[0].controller must be a boolean, got string"),
    (lambda p: p["metadata"].__setitem__("labels", ["app"]), "Pod ns/p: metadata.labels must be an object, got list"),
    (lambda p: p.__setitem__("status", "Running"), "Pod ns/p: status must be an object, got string"),
    (lambda p: p.__setitem__("status", {"phase": 1}), "Pod ns/p: status.phase must be a string, got number"),
    (lambda p: _spec(p).__setitem__("nodeName", ["n1"]), "Pod ns/p: spec.nodeName must be a string, got list"),
    (lambda p: p.__setitem__("spec", []), "Pod ns/p: spec must be an object, got list"),
]


@pytest.mark.parametrize("mutate, message", SHAPES)
def test_malformed_pod_fields_are_named(mutate, message):
    obj = pod(volumes=[{"name": "vol", "persistentVolumeClaim": {"claimName": "csi"}}])
    mutate(obj)
    with pytest.raises(InvalidManifest) as err:
        Cluster(storage()).resolve_pod(obj)
    assert str(err.value) == message


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o["pv"].__setitem__("spec", "csi"), "PersistentVolume pv-csi: spec must be an object, got string"),
    (lambda o: o["pv"]["spec"].__setitem__("csi", "csi.example.com"),
     "PersistentVolume pv-csi: spec.csi must be an object, got string"),
    (lambda o: o["pv"]["spec"].__setitem__("accessModes", "ReadWriteMany"),
     "PersistentVolume pv-csi: spec.accessModes must be a list, got string"),
    (lambda o: o["pv"]["spec"]["csi"].__setitem__("volumeHandle", 3),
     "PersistentVolume pv-csi: spec.csi.volumeHandle must be a string, got number"),
    (lambda o: o["pvc"].__setitem__("spec", ["pv-csi"]),
     "PersistentVolumeClaim ns/csi: spec must be an object, got list"),
    (lambda o: o["pvc"]["spec"].__setitem__("volumeName", ["pv-csi"]),
     "PersistentVolumeClaim ns/csi: spec.volumeName must be a string, got list"),
    (lambda o: o["driver"].__setitem__("spec", True), f"CSIDriver {DRIVER}: spec must be an object, got boolean"),
])
def test_malformed_storage_fields_are_named(mutate, message):
    objects = storage()
    mutate({"pv": next(o for o in objects if o["metadata"]["name"] == "pv-csi"),
            "pvc": next(o for o in objects if o["metadata"]["name"] == "csi"),
            "driver": objects[0]})
    cluster = Cluster(objects)
    obj = pod(volumes=[{"name": "vol", "persistentVolumeClaim": {"claimName": "csi"}}])
    with pytest.raises(InvalidManifest) as first_pass:
        cluster.claimed_volumes(obj)
        cluster.resolve_pod(obj)  # a CSIDriver is read only here
    assert str(first_pass.value) == message


def test_a_volumes_string_is_not_read_as_its_letters():
    # Iterated, "vol" would be three volume entries named by their letters.
    cluster = Cluster(storage())
    obj = pod()
    obj["spec"]["volumes"] = "vol"
    with pytest.raises(InvalidManifest, match="spec.volumes must be a list, got string"):
        cluster.claimed_volumes(obj)


@pytest.mark.parametrize("obj, message", [
    ({"kind": "Pod", "metadata": {"name": ["p"]}}, "Pod: metadata.name must be a string, got list"),
    ({"kind": "Pod", "metadata": {"name": "p", "namespace": 1}},
     "Pod p: metadata.namespace must be a string, got number"),
    ({"kind": ["Pod"], "metadata": {"name": "p"}}, "object: kind must be a string, got list"),
    ({"kind": "Pod", "metadata": {"name": "p", "uid": 1}}, "Pod default/p: metadata.uid must be a string, got number"),
    ("Pod", "expected a Kubernetes object, got string"),
])
def test_malformed_envelopes_are_named(obj, message):
    with pytest.raises(InvalidManifest) as err:
        Cluster([obj])
    assert str(err.value) == message


def test_well_formed_pods_read_as_before():
    # Absent and null fields read as empty, as the API serves them.
    obj = pod(volumes=[{"name": "vol", "persistentVolumeClaim": {"claimName": "csi"}}])
    obj["spec"].update(initContainers=None, ephemeralContainers=None, nodeName=None)
    obj["metadata"].update(labels=None, ownerReferences=None)
    obj["spec"]["containers"][0].update(securityContext=None, volumeDevices=None)
    facts = Cluster(storage()).resolve_pod(obj)
    assert facts.node_name == "" and facts.owners == () and facts.labels == {}
    assert [v.name for v in facts.volumes] == ["vol"]


def test_duplicates_are_indexed_once_the_last_copy_in_the_first_place():
    first, other, again = pod(name="a"), pod(name="b"), pod(name="a", policy="Recursive")
    cluster = Cluster([first, other, again])
    assert cluster.pods == [again, other]
