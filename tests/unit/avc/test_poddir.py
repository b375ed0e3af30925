"""agent/avc/poddir.py: pods by UID and MCS level, ambiguous levels, and pod maps from kubectl JSON or the
short form."""

import pytest

from agent.avc.poddir import LevelIndex, PodDirectory, PodRef, pods_from_json
from agent.errors import InvalidInput
from tests.unit.avc.test_cgroup import CID, UID

POD = PodRef("shop", "web-7f9c-abcde", UID, "s0:c1,c2", "web", ((CID, "nginx"),))


def test_shared_level_is_ambiguous():
    a = PodRef("ns", "a", "u1", "s0:c1,c2")
    b = PodRef("ns", "b", "u2", "s0:c1,c2")
    pods = PodDirectory([a, b])
    assert pods.by_level("s0:c1,c2") is None
    assert pods.by_uid("u2") == b


def test_updating_a_pod_keeps_its_level():
    pods = PodDirectory([POD])
    updated = PodRef(POD.namespace, POD.name, POD.uid, POD.level, POD.workload, ((CID, "nginx"), ("b" * 64, "side")))
    pods.add(updated)
    assert pods.by_level(POD.level) is updated and pods.by_uid(UID) is updated and len(pods) == 1


def test_a_changed_level_drops_the_old_mapping():
    a = PodRef("ns", "a", "u1", "s0:c1,c2")
    b = PodRef("ns", "b", "u2", "s0:c1,c2")
    pods = PodDirectory([a, b])
    assert pods.by_level("s0:c1,c2") is None
    moved = PodRef("ns", "a", "u1", "s0:c3,c4")
    pods.add(moved)
    assert pods.by_level("s0:c3,c4") is moved
    assert pods.by_level("s0:c1,c2") is b  # a no longer shares it
    pods.remove(b)
    assert pods.by_level("s0:c1,c2") is None and pods.by_uid("u2") is None and len(pods) == 1


def test_pods_without_uid_are_told_apart_by_name():
    pods = PodDirectory([PodRef("ns", "a", None, "s0:c1,c2")])
    pods.add(PodRef("ns", "a", None, "s0:c1,c2", "web"))
    assert pods.by_level("s0:c1,c2").workload == "web"
    pods.add(PodRef("ns", "b", None, "s0:c1,c2"))
    assert pods.by_level("s0:c1,c2") is None


KUBECTL = {
    "apiVersion": "v1", "kind": "List", "items": [{
        "kind": "Pod",
        "metadata": {"name": "web-7f9c-abcde", "namespace": "shop", "uid": UID,
                     "labels": {"pod-template-hash": "7f9c"},
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7f9c"}]},
        "spec": {"securityContext": {"seLinuxOptions": {"level": "s0:c2,c1"}}},
        "status": {"containerStatuses": [{"name": "nginx", "containerID": f"cri-o://{CID}"}]},
    }],
}


def test_pods_from_kubectl_json():
    [pod] = pods_from_json(KUBECTL)
    assert pod == POD


def test_pods_from_short_form():
    [pod] = pods_from_json([{"namespace": "shop", "name": "web-7f9c-abcde", "uid": UID, "level": "s0:c1,c2",
                             "workload": "web", "containers": {f"containerd://{CID}": "nginx"}}])
    assert pod == POD


@pytest.mark.parametrize("document", [42, {"kind": "Service"}, [1], [{"name": "x"}],
                                      [{"namespace": "a", "name": "b", "containers": []}]])
def test_bad_pod_maps(document):
    with pytest.raises(InvalidInput):
        pods_from_json(document)


def test_a_level_index_counts_a_pod_once():
    index, a = LevelIndex(), PodRef("ns", "a", "u1")
    index.add("s0:c1,c2", a)
    index.add("s0:c1,c2", a)
    assert index.get("s0:c1,c2") is a and "s0:c1,c2" in index
    index.discard("s0:c1,c2", a)
    assert index.get("s0:c1,c2") is None and "s0:c1,c2" not in index


def test_levels_in_pod_maps_are_canonical_and_bad_ones_dropped():
    [pod, bad] = pods_from_json([{"namespace": "a", "name": "b", "level": "s0:c9,c1"},
                                 {"namespace": "a", "name": "c", "level": "s0:c1,x"}])
    assert pod.level == "s0:c1,c9" and bad.level is None
