"""In-tree volume sources that Kubernetes hands to CSI drivers (CSI migration): the driver, the volume handle
and the access modes the translation gives a volume, inline or persistent.

Pure code. kube-controller-manager and kubelet translate every migrated in-tree source before they look at it
(`CreateVolumeSpec` -> `TranslateInTreeSpecToCSI`, csi-translation-lib `plugins/*.go`), and key the volume as
the CSI plugin does (`GetUniqueVolumeNameFromSpec`: `kubernetes.io/csi/<driver>^<volumeHandle>`). So an inline
`awsElasticBlockStore` of two pods, or two PVs naming one EBS volume, is one volume to them; it is here too.
Each translation below names its upstream function; a source the translation refuses is `Untranslatable`,
which upstream reports and skips (the pod's other volumes still count).
"""

from __future__ import annotations

import re

from agent.errors import VolumeNotResolved

# In-tree source kind -> the CSI driver that serves it (csi-translation-lib plugins/*.go, `*DriverName`).
MIGRATED_TO_CSI = {
    "awsElasticBlockStore": "ebs.csi.aws.com",
    "gcePersistentDisk": "pd.csi.storage.gke.io",
    "azureDisk": "disk.csi.azure.com",
    "azureFile": "file.csi.azure.com",
    "cinder": "cinder.csi.openstack.org",
    "vsphereVolume": "csi.vsphere.vmware.com",
    "portworxVolume": "pxd.portworx.com",
}

_EBS_ID = re.compile(r"^vol-[^/]*$")  # aws_ebs.go awsVolumeRegMatch
_AZURE_SECRET = re.compile(r"azure-storage-account-(.+)-secret")  # azure_file.go secretNameFormatRE
_GCE_UNSPECIFIED = "UNSPECIFIED"
_ZONE_LABELS = ("failure-domain.beta.kubernetes.io/zone", "topology.kubernetes.io/zone")


class Untranslatable(VolumeNotResolved):
    """A migrated in-tree source csi-translation-lib refuses to translate (the volume is skipped upstream)."""


class Translated:
    """What the translation gives: driver, volume handle and the access modes of the translated spec (None:
    the PV's own modes stand)."""

    __slots__ = ("driver", "handle", "access_modes")

    def __init__(self, driver: str, handle: str, access_modes: tuple[str, ...] | None):
        self.driver, self.handle, self.access_modes = driver, handle, access_modes


def _field(source: dict, key: str) -> str:
    value = source.get(key)
    return value if isinstance(value, str) else ""


def ebs_volume_id(kubernetes_id: str, where: str) -> str:
    """aws_ebs.go `KubernetesVolumeIDToEBSVolumeID`: `aws://<zone>/vol-x`, `aws:///vol-x` and `vol-x` are one
    volume, `vol-x`."""
    if not kubernetes_id.startswith("aws://"):
        return kubernetes_id
    volume_id = kubernetes_id[len("aws://"):].partition("/")[2].strip("/")
    if not _EBS_ID.match(volume_id):
        raise Untranslatable(f"{where}: awsElasticBlockStore.volumeID {kubernetes_id!r} is not an EBS volume ID "
                             "(aws://ZONE/vol-...), so CSI migration cannot translate it")
    return volume_id


def _gce_region(zones: list[str], where: str) -> str:
    """gce_pd.go `getRegionFromZones`: every zone {locale}-{region}-{zone} of one region."""
    regions = set()
    for zone in zones:
        parts = zone.split("-")
        if len(parts) != 3:
            raise Untranslatable(f"{where}: zone {zone!r} is not of the form LOCALE-REGION-ZONE, so CSI migration "
                                 "cannot translate the gcePersistentDisk")
        regions.add("-".join(parts[:2]))
    if len(regions) != 1:
        raise Untranslatable(f"{where}: zones {','.join(zones)} span several regions, so CSI migration cannot "
                             "translate the gcePersistentDisk")
    return regions.pop()


def gce_access_modes(modes: tuple[str, ...]) -> tuple[str, ...]:
    """gce_pd.go `backwardCompatibleAccessModes`: the in-tree plugin attached every PD read-write once."""
    if not modes:
        return modes
    seen = {"ReadWriteOnce" if mode == "ReadWriteMany" else mode for mode in modes}
    if "ReadWriteOnce" in seen or "ReadOnlyMany" not in seen:
        return ("ReadWriteOnce",)
    return ("ReadOnlyMany",)


def _azure_account(secret_name: str) -> str:
    """azure_file.go `getStorageAccountName`, falling back to the secret's name as the translation does."""
    match = _AZURE_SECRET.search(secret_name)
    return match.group(1) if match else secret_name


def translate_inline(kind: str, source: dict, volume_name: str, namespace: str, where: str) -> Translated:
    """`TranslateInTreeInlineVolumeToCSI` of each plugin: the inline volume as the PV it becomes."""
    driver = MIGRATED_TO_CSI[kind]
    read_only = source.get("readOnly") is True
    if kind == "awsElasticBlockStore":  # aws_ebs.go
        return Translated(driver, ebs_volume_id(_field(source, "volumeID"), where), ("ReadWriteOnce",))
    if kind == "gcePersistentDisk":  # gce_pd.go: zone and project are left for the node to fill in
        handle = f"projects/{_GCE_UNSPECIFIED}/zones/{_GCE_UNSPECIFIED}/disks/{_field(source, 'pdName')}"
        return Translated(driver, handle, ("ReadOnlyMany",) if read_only else ("ReadWriteOnce",))
    if kind == "azureDisk":  # azure_disk.go: the disk URI
        return Translated(driver, _field(source, "diskURI"), ("ReadWriteOnce",))
    if kind == "azureFile":  # azure_file.go: rg#account#share#<pod volume name>#<pod namespace>
        handle = f"#{_azure_account(_field(source, 'secretName'))}#{_field(source, 'shareName')}#{volume_name}#" \
                 f"{namespace or 'default'}"
        return Translated(driver, handle, ("ReadWriteMany",))
    if kind == "cinder":  # openstack_cinder.go
        return Translated(driver, _field(source, "volumeID"), ("ReadWriteOnce",))
    if kind == "vsphereVolume":  # vsphere_volume.go
        return Translated(driver, _field(source, "volumePath"), ("ReadWriteOnce",))
    # portworx.go
    return Translated(driver, _field(source, "volumeID"), ("ReadOnlyMany",) if read_only else ("ReadWriteOnce",))


def translate_pv(kind: str, source: dict, pv: dict, name: str) -> Translated:
    """`TranslateInTreePVToCSI` of each plugin: the handle the PV's translation gets, so that two PVs of one
    backend volume are one volume."""
    driver = MIGRATED_TO_CSI[kind]
    where = f"PersistentVolume {name}"
    if kind == "awsElasticBlockStore":
        return Translated(driver, ebs_volume_id(_field(source, "volumeID"), where), None)
    if kind == "gcePersistentDisk":
        # The beta zone label first, then the GA one; several zones (joined by "__") make a regional disk.
        meta = pv.get("metadata")
        labels = meta.get("labels") if isinstance(meta, dict) else None
        labels = labels if isinstance(labels, dict) else {}
        zones_label = labels.get(_ZONE_LABELS[0]) or labels.get(_ZONE_LABELS[1]) or ""
        zones = zones_label.split("__") if isinstance(zones_label, str) else [""]
        disk = _field(source, "pdName")
        if len(zones) == 1 and zones[0]:
            handle = f"projects/{_GCE_UNSPECIFIED}/zones/{zones[0]}/disks/{disk}"
        elif len(zones) > 1:
            handle = f"projects/{_GCE_UNSPECIFIED}/regions/{_gce_region(zones, where)}/disks/{disk}"
        else:
            handle = f"projects/{_GCE_UNSPECIFIED}/zones/{_GCE_UNSPECIFIED}/disks/{disk}"
        return Translated(driver, handle, None)  # its access modes: gce_access_modes
    if kind == "azureDisk":
        return Translated(driver, _field(source, "diskURI"), None)
    if kind == "azureFile":
        # rg#account#share#<PV name>#<secret namespace, else the claim's namespace>: one key per PV.
        meta = pv.get("metadata")
        annotations = meta.get("annotations") if isinstance(meta, dict) else None
        group = annotations.get("kubernetes.io/azure-file-resource-group", "") if isinstance(annotations, dict) \
            else ""
        namespace = source.get("secretNamespace")
        if not isinstance(namespace, str) or not namespace:
            spec = pv.get("spec")
            claim_ref = spec.get("claimRef") if isinstance(spec, dict) else None
            namespace = claim_ref.get("namespace") if isinstance(claim_ref, dict) else None
        if not isinstance(namespace, str) or not namespace:
            raise Untranslatable(f"{where}: azureFile has no secretNamespace and the PV no claimRef namespace, so "
                                 "CSI migration cannot translate it")
        handle = f"{group if isinstance(group, str) else ''}#{_azure_account(_field(source, 'secretName'))}#" \
                 f"{_field(source, 'shareName')}#{name}#{namespace}"
        return Translated(driver, handle, None)
    if kind == "cinder":
        return Translated(driver, _field(source, "volumeID"), None)
    if kind == "vsphereVolume":
        return Translated(driver, _field(source, "volumePath"), None)
    return Translated(driver, _field(source, "volumeID"), None)
