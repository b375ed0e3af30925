"""agent/k8s/index.py: the objects by kind and key, each pod once, and the envelope every key is read from."""

import pytest

from agent.errors import InvalidManifest
from agent.k8s.index import ObjectIndex
from k8s_builders import pod, pvc


def test_index_keeps_an_empty_namespace_apart_from_default():
    claim = pvc("csi", "pv-csi", ["ReadWriteMany"], namespace="")
    index = ObjectIndex([claim])
    assert ("", "csi") in index.pvcs and ("default", "csi") not in index.pvcs
    with pytest.raises(InvalidManifest, match="^Pod: metadata must be an object, got string$"):
        ObjectIndex([{"kind": "Pod", "metadata": "not an object"}])
    with pytest.raises(InvalidManifest, match="without kind or metadata.name"):
        ObjectIndex([{"kind": "Pod", "metadata": {}}])


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
        ObjectIndex([obj])
    assert str(err.value) == message


def test_duplicates_are_indexed_once_the_last_copy_in_the_first_place():
    first, other, again = pod(name="a"), pod(name="b"), pod(name="a", policy="Recursive")
    index = ObjectIndex([first, other, again])
    assert index.pods == [again, other]
