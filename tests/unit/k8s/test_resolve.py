"""agent/k8s/resolve.py: pod resolution, the cheap first pass over claims, partial resolution for the audit, the
storage objects a pod reads, and the shape errors of every field resolution reads."""

import dataclasses

import pytest

from agent.k8s.resolve import Cluster
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


def test_survey_names_the_volumes_resolution_finds():
    cluster = Cluster(storage())
    obj = many_volumes()
    resolved = cluster.resolve_pod(obj)
    expected = [(v.name, v.unique_name) for v in resolved.volumes if v.unique_name]
    assert cluster.survey(obj)[0] == expected
    assert [name for name, _ in expected] == ["v-csi", "v-nohandle", "v-nfs", "v-ebs", "scratch"]
    assert dict(expected)["v-csi"] == f"kubernetes.io/csi/{DRIVER}^pv-csi"
    assert dict(expected)["v-nfs"] == "kubernetes.io/nfs/pv-nfs"
    # Keyed by the handle CSI migration translates the EBS volume ID to, not by the PV's name (issue #19 point 2).
    assert dict(expected)["v-ebs"] == "kubernetes.io/csi/ebs.csi.aws.com^v"


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
    with pytest.raises(InvalidInput) as selected:
        cluster.resolve_pod(obj, select=lambda claimed: {"ok"})
    assert str(selected.value) == str(full.value)


@pytest.mark.parametrize("names", [set(), {"v-csi"}, {"v-ebs", "scratch"}, {"nothing-of-that-name"}])
def test_selected_volumes_have_the_same_facts(names):
    obj = many_volumes()
    full = Cluster(storage()).resolve_pod(obj)
    offered = []

    def select(claimed):
        offered.extend(claimed)
        return names

    selected = Cluster(storage()).resolve_pod(obj, select=select)
    assert offered == [(v.name, v.unique_name) for v in full.volumes if v.unique_name]
    assert selected.volumes == tuple(v for v in full.volumes if v.name in names)
    assert selected == dataclasses.replace(full, volumes=selected.volumes)


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
        cluster.survey(obj)[0]
        cluster.resolve_pod(obj)
    assert str(first_pass.value) == message


def test_a_volumes_string_is_not_read_as_its_letters():
    # Iterated, "vol" would be three volume entries named by their letters.
    cluster = Cluster(storage())
    obj = pod()
    obj["spec"]["volumes"] = "vol"
    with pytest.raises(InvalidManifest, match="spec.volumes must be a list, got string"):
        cluster.survey(obj)[0]


def test_well_formed_pods_read_as_before():
    # Absent and null fields read as empty, as the API serves them.
    obj = pod(volumes=[{"name": "vol", "persistentVolumeClaim": {"claimName": "csi"}}])
    obj["spec"].update(initContainers=None, ephemeralContainers=None, nodeName=None)
    obj["metadata"].update(labels=None, ownerReferences=None)
    obj["spec"]["containers"][0].update(securityContext=None, volumeDevices=None)
    facts = Cluster(storage()).resolve_pod(obj)
    assert facts.node_name == "" and facts.owners == () and facts.labels == {}
    assert [v.name for v in facts.volumes] == ["vol"]


# --- the storage objects a pod's resolution reads ---------------------------------------------------------

def test_storage_keys_name_what_resolution_reads_also_when_missing():
    cluster = Cluster(storage())
    obj = pod(volumes=[{"name": "a", "persistentVolumeClaim": {"claimName": "csi"}},
                       {"name": "b", "persistentVolumeClaim": {"claimName": "gone"}},
                       {"name": "c", "csi": {"driver": "inline.example.com"}},
                       {"name": "d", "awsElasticBlockStore": {"volumeID": "v"}},
                       {"name": "e", "configMap": {"name": "c"}}])
    assert cluster.storage_keys(obj) == {
        ("PersistentVolumeClaim", ("ns", "csi")), ("PersistentVolume", "pv-csi"), ("CSIDriver", DRIVER),
        ("PersistentVolumeClaim", ("ns", "gone")), ("CSIDriver", "inline.example.com"),
        ("CSIDriver", "ebs.csi.aws.com")}


def test_storage_keys_read_what_they_can_of_a_malformed_pod():
    cluster = Cluster(storage())
    obj = pod(volumes=[{"name": "b", "persistentVolumeClaim": {"claimName": "nfs"}}])
    obj["spec"]["volumes"][:0] = ["not an object", {"name": "a", "persistentVolumeClaim": "csi"}]
    assert cluster.storage_keys(obj) == {("PersistentVolumeClaim", ("ns", "nfs")), ("PersistentVolume", "pv-nfs")}
    obj["spec"]["volumes"] = "vol"
    assert cluster.storage_keys(obj) == set()


def test_a_pv_shared_by_pods_is_read_once():
    cluster = Cluster(storage())
    first, second = (cluster.resolve_pod(pod(name=name, volumes=[
        {"name": "vol", "persistentVolumeClaim": {"claimName": "csi"}}])) for name in "ab")
    assert first.volumes[0].pv is second.volumes[0].pv
    cluster.storage_changed()
    again = cluster.resolve_pod(pod(volumes=[{"name": "vol", "persistentVolumeClaim": {"claimName": "csi"}}]))
    assert again.volumes[0].pv == first.volumes[0].pv and again.volumes[0].pv is not first.volumes[0].pv
