"""agent/k8s/plugins.py: the kind of a volume source and the cluster-wide name of a volume."""

import pytest

from agent.k8s.plugins import POD_VOLUME_KINDS, PV_SOURCE_KINDS, source_kind, unique_volume_name


@pytest.mark.parametrize("pv_name, source, driver, handle, expected", [
    ("pv-1", "csi", "csi.example.com", "vol-7", "kubernetes.io/csi/csi.example.com^vol-7"),
    ("pv-1", "csi", "csi.example.com", "", "kubernetes.io/csi/csi.example.com^pv-1"),
    ("pv-1", "nfs", None, "", "kubernetes.io/nfs/pv-1"),
    ("pv-1", "hostPath", None, "", "kubernetes.io/host-path/pv-1"),
    ("pv-1", "local", None, "", "kubernetes.io/local-volume/pv-1"),
])
def test_unique_volume_name_as_upstream_builds_it(pv_name, source, driver, handle, expected):
    assert unique_volume_name(pv_name, source, driver, handle) == expected


def test_the_first_source_field_names_the_kind():
    assert source_kind({"name": "v", "persistentVolumeClaim": {}}, POD_VOLUME_KINDS) == "persistentVolumeClaim"
    assert source_kind({"name": "v", "somethingNew": {}}, POD_VOLUME_KINDS) == "unknown"
    assert source_kind({"accessModes": [], "csi": {}}, PV_SOURCE_KINDS) == "csi"
