"""agent/k8s/stored_objects.py: List items kept as their text read back as the objects the stdlib reader gives, and
every document msgspec refuses goes the stdlib way with its messages."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.k8s.resolve import Cluster
from agent.errors import InvalidManifest
from agent.k8s.manifests import load_files
from agent.k8s.stored_objects import ObjectStore, StoredObject, compact, read_list
from k8s_builders import csidriver, pod, pv, pvc

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(extra=st.dictionaries(st.text(), JSON_VALUES, max_size=5), name=st.text(min_size=1),
       namespace=st.none() | st.text())
def test_a_stored_item_reads_back_as_json_loads_reads_it(extra, name, namespace):
    item = {**extra, "kind": "Pod", "metadata": {"name": name, "namespace": namespace}}
    data = json.dumps({"kind": "List", "items": [item]}).encode()
    (stored,) = read_list(data, "dump.json")
    assert type(stored) is StoredObject and (stored.kind, stored.name, stored.namespace) == ("Pod", name, namespace)
    assert stored.decode() == json.loads(data)["items"][0]


def test_items_with_an_envelope_to_check_are_parsed_for_the_usual_checks():
    items = [None, {"kind": "PodList", "items": []}, {"kind": "Pod", "metadata": {"name": 5}}, 7,
             {"kind": "Pod", "metadata": {"name": "a", "uid": "u"}},
             {"kind": "PersistentVolume", "metadata": {"name": "p", "uid": "u2"}}]
    out = read_list(json.dumps({"kind": "List", "items": items}).encode(), "dump.json")
    assert out[:4] == items[:4]
    assert [(o.kind, o.name, o.uid) for o in out[4:]] == [("Pod", "a", "u"), ("PersistentVolume", "p", None)]


@pytest.mark.parametrize("data", [
    b"", b"  ", b"[]", b'{"kind": "Pod", "metadata": {"name": "a"}}', b'{"kind": "List"}',
    b'{"kind": "List", "items": 5}', b'{"kind": "List", "items": [NaN]}', b'{"kind": "List", "items": [}',
    b'{"kind": "List", "items": [' + b"[" * 2000 + b"]" * 2000 + b"]}", b"\xff\xfe",
])
def test_anything_but_a_plain_json_list_is_left_to_the_stdlib_reader(data):
    assert read_list(data, "dump.json") is None


@pytest.mark.parametrize("content, message", [
    (b'{"kind": "List", "items": [}', "invalid JSON at line 1 column 28: Expecting value"),
    (b'{"kind": "List", "items": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
     "refused: objects and lists nested more than 1,000 levels deep"),
    (b'{"kind": "List", "items": [{"kind": "Pod", "metadata": {"name": "a"}, "n": ' + b"1" * 5000 + b"}]}",
     "a number has more than 4,300 digits"),
])
def test_refusals_read_as_before(tmp_path, content, message):
    path = tmp_path / "dump.json"
    path.write_bytes(content)
    with pytest.raises(InvalidManifest) as info:
        Cluster(load_files([str(path)])).pods
    assert str(info.value) == f"{path}: {message}"


def test_the_index_gives_dicts_whatever_was_stored(tmp_path):
    objects = [csidriver(), pv(modes=["ReadWriteMany"]), pvc(modes=["ReadWriteMany"]), pod(name="a")]
    path = tmp_path / "dump.json"
    path.write_text(json.dumps({"kind": "List", "items": objects}))
    stored = load_files([str(path)])
    assert all(type(obj) is StoredObject for obj in stored)
    cluster = Cluster(stored)
    assert cluster.pvs["pv1"] == objects[1] and cluster.pvcs.get(("ns", "claim")) == objects[2]
    assert cluster.pods == [objects[3]]
    store = ObjectStore(plain={"a": 1})
    assert store["plain"] == {"a": 1} and store.get("missing") is None


def test_yaml_items_are_kept_as_text_only_when_json_carries_them_whole(tmp_path):
    path = tmp_path / "dump.yaml"
    path.write_text("kind: List\nitems:\n"
                    "- {kind: Pod, metadata: {name: a, namespace: ns}, spec: {x: [1, 2.5, true, null]}}\n"
                    "- {kind: Pod, metadata: {name: b}, spec: {when: 2024-01-01}}\n"
                    "- {kind: Pod, metadata: {name: c}, spec: {1: one}}\n"
                    "- {kind: Pod, metadata: {name: d}, spec: {x: .inf}}\n")
    a, b, c, d = load_files([str(path)])
    assert type(a) is StoredObject and a.decode() == {"kind": "Pod", "metadata": {"name": "a", "namespace": "ns"},
                                                      "spec": {"x": [1, 2.5, True, None]}}
    assert [type(obj) for obj in (b, c, d)] == [dict, dict, dict]  # a date, an integer key, infinity
    # An integer past 64 bits: msgspec writes it but will not read it back; the stdlib reader does.
    assert compact({"kind": "Pod", "metadata": {"name": "e"}, "n": 2**70}, "f").decode() == {
        "kind": "Pod", "metadata": {"name": "e"}, "n": 2**70}
