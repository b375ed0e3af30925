"""agent/k8s/facts.py: the values resolution gives; the PV's cluster-wide key is built once, with the PV."""

from agent.k8s.facts import ContainerUse, PersistentVolumeFacts, VolumeFacts


def test_a_pv_carries_its_unique_name():
    pv = PersistentVolumeFacts("pv-1", ("ReadWriteOnce",), "csi", "csi.example.com", volume_handle="vol-7")
    assert pv.unique_name == "kubernetes.io/csi/csi.example.com^vol-7"
    assert pv == PersistentVolumeFacts("pv-1", ("ReadWriteOnce",), "csi", "csi.example.com", volume_handle="vol-7")
    assert VolumeFacts("v", "persistentVolumeClaim", (), pv).unique_name == pv.unique_name


def test_a_pv_still_to_be_provisioned_has_no_key():
    pv = PersistentVolumeFacts("(to be provisioned by x)", (), "csi", "x", predicted_from="fast")
    assert pv.unique_name == "" and VolumeFacts("v", "ephemeral", (), pv).unique_name == ""
    assert VolumeFacts("v", "configMap", ()).unique_name == ""


def test_only_mounts_carry_a_label():
    mount, device = ContainerUse("a", "container", None), ContainerUse("b", "container", None, device=True)
    assert VolumeFacts("v", "csi", (mount, device)).mounts == [mount]
