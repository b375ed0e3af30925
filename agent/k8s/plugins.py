"""The volume plugins kubelet knows by name: which kinds a pod volume or a PV may be, which of them CSI migration
hands to a CSI driver, which can be context-mounted, and the names that key a volume cluster-wide."""

from __future__ import annotations

# In-tree volume sources that kubelet hands to a CSI driver through CSI migration (agent/k8s/migration.py): the
# CSIDriver object of the named driver then decides seLinuxMount, and the translated handle keys the volume.
MIGRATED_PROVISIONERS = {
    "kubernetes.io/aws-ebs": "ebs.csi.aws.com",
    "kubernetes.io/gce-pd": "pd.csi.storage.gke.io",
    "kubernetes.io/azure-disk": "disk.csi.azure.com",
    "kubernetes.io/azure-file": "file.csi.azure.com",
    "kubernetes.io/cinder": "cinder.csi.openstack.org",
    "kubernetes.io/vsphere-volume": "csi.vsphere.vmware.com",
    "kubernetes.io/portworx-volume": "pxd.portworx.com",
}
# In-tree plugins whose SupportsSELinuxContextMount returns true (pkg/volume/iscsi, pkg/volume/fc).
CONTEXT_MOUNT_IN_TREE = {"iscsi", "fc"}
# Plugins whose mounter reports SELinuxRelabel=false: neither kubelet nor the runtime relabels them.
NEVER_RELABELLED = {"hostPath", "nfs"}
# Volumes built on emptyDir: never context-mounted, always relabelled by the runtime (KEP-1710).
EMPTYDIR_FAMILY = {"emptyDir", "secret", "configMap", "projected", "downwardAPI"}

# The source fields of a pod volume (core/v1 VolumeSource) and of a PV (PersistentVolumeSource): the first one an
# entry has names its kind.
POD_VOLUME_KINDS = frozenset((
    "persistentVolumeClaim", "ephemeral", "csi", "emptyDir", "secret", "configMap", "projected", "downwardAPI",
    "hostPath", "nfs", "iscsi", "fc", "image", "local", "cephfs", "rbd", "glusterfs", "gitRepo", "flexVolume",
    "flocker", "quobyte", "scaleIO", "storageos", "photonPersistentDisk", "azureFile", "azureDisk",
    "awsElasticBlockStore", "gcePersistentDisk", "cinder", "vsphereVolume", "portworxVolume",
))
PV_SOURCE_KINDS = frozenset((
    "csi", "iscsi", "fc", "nfs", "hostPath", "local", "cephfs", "rbd", "glusterfs", "flexVolume",
    "awsElasticBlockStore", "gcePersistentDisk", "azureDisk", "azureFile", "cinder", "vsphereVolume",
    "portworxVolume", "quobyte", "scaleIO", "storageos", "photonPersistentDisk", "flocker",
))


_KIND_NAMES = {kind: kind for kind in POD_VOLUME_KINDS | PV_SOURCE_KINDS}


def source_kind(source: dict, kinds: frozenset) -> str:
    """The kind of a pod volume or PV spec: its first field that names a volume source, or "unknown". The name
    is this module's string, not the input's: facts kept for every PV of a dump share it."""
    for key in source:
        if key in kinds:
            return _KIND_NAMES[key]
    return "unknown"


def plugin_name_of(kind: str) -> str:
    """Kubelet's volume plugin name for an in-tree kind (the `volume_plugin` metric label)."""
    return {"hostPath": "kubernetes.io/host-path", "emptyDir": "kubernetes.io/empty-dir",
            "configMap": "kubernetes.io/configmap", "downwardAPI": "kubernetes.io/downward-api",
            "local": "kubernetes.io/local-volume"}.get(kind, f"kubernetes.io/{kind.lower()}")


def unique_volume_name(pv_name: str, source: str, csi_driver: str | None, volume_handle: str) -> str:
    """A bound PV's cluster-wide key, as GetUniqueVolumeNameFromSpec builds it from the PV's parts."""
    # CSI, and in-tree sources migrated to CSI once translated: the CSI plugin's GetVolumeName, driver^handle.
    if csi_driver and volume_handle:
        return f"kubernetes.io/csi/{csi_driver}^{volume_handle}"
    if csi_driver:
        return f"kubernetes.io/csi/{csi_driver}^{pv_name}"
    return f"{plugin_name_of(source)}/{pv_name}"
