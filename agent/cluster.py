"""Kubernetes objects as values: an index of Pods, PVCs, PVs, CSIDrivers and StorageClasses, and the
per-volume facts kubelet looks at when it decides how to label a volume.

Pure code: takes the parsed API objects (dicts), returns frozen dataclasses. A reference that does not resolve
(a PVC or PV missing from the input) is an `InvalidManifest` naming the object, never a guess.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from agent.defaults import SELinuxOptions
from agent.errors import InvalidManifest

# In-tree volume sources that kubelet hands to a CSI driver through CSI migration: the CSIDriver object of
# the named driver then decides seLinuxMount (pkg/volume/csimigration).
MIGRATED_TO_CSI = {
    "awsElasticBlockStore": "ebs.csi.aws.com",
    "gcePersistentDisk": "pd.csi.storage.gke.io",
    "azureDisk": "disk.csi.azure.com",
    "azureFile": "file.csi.azure.com",
    "cinder": "cinder.csi.openstack.org",
    "vsphereVolume": "csi.vsphere.vmware.com",
    "portworxVolume": "pxd.portworx.com",
}
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

_POD_VOLUME_KINDS = (
    "persistentVolumeClaim", "ephemeral", "csi", "emptyDir", "secret", "configMap", "projected", "downwardAPI",
    "hostPath", "nfs", "iscsi", "fc", "image", "local", "cephfs", "rbd", "glusterfs", "gitRepo", "flexVolume",
    "flocker", "quobyte", "scaleIO", "storageos", "photonPersistentDisk", "azureFile", "azureDisk",
    "awsElasticBlockStore", "gcePersistentDisk", "cinder", "vsphereVolume", "portworxVolume",
)
_PV_SOURCE_KINDS = (
    "csi", "iscsi", "fc", "nfs", "hostPath", "local", "cephfs", "rbd", "glusterfs", "flexVolume",
    "awsElasticBlockStore", "gcePersistentDisk", "azureDisk", "azureFile", "cinder", "vsphereVolume",
    "portworxVolume", "quobyte", "scaleIO", "storageos", "photonPersistentDisk", "flocker",
)
_POD_VOLUME_KIND_SET = frozenset(_POD_VOLUME_KINDS)
_PV_SOURCE_KIND_SET = frozenset(_PV_SOURCE_KINDS)
ACCESS_MODE_SHORT = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX",
                     "ReadWriteOncePod": "RWOP"}


def plugin_name_of(kind: str) -> str:
    """Kubelet's volume plugin name for an in-tree kind (the `volume_plugin` metric label)."""
    return {"hostPath": "kubernetes.io/host-path", "emptyDir": "kubernetes.io/empty-dir",
            "configMap": "kubernetes.io/configmap", "downwardAPI": "kubernetes.io/downward-api",
            "local": "kubernetes.io/local-volume"}.get(kind, f"kubernetes.io/{kind.lower()}")


def _get(obj, *path, default=None):
    for key in path:
        if not isinstance(obj, dict):
            return default
        obj = obj.get(key)
        if obj is None:
            return default
    return obj


def object_ref(obj: dict) -> str:
    kind = obj.get("kind", "object")
    namespace = _get(obj, "metadata", "namespace")
    name = _get(obj, "metadata", "name", default="<unnamed>")
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


@dataclass(frozen=True)
class ContainerUse:
    """One container's use of a volume, with the container's effective seLinuxOptions."""

    container: str
    kind: str  # "initContainer", "container" or "ephemeralContainer"
    options: SELinuxOptions | None
    device: bool = False  # volumeDevices (raw block) instead of volumeMounts
    privileged: bool = False
    read_only: bool = False


@dataclass(frozen=True)
class PersistentVolumeFacts:
    name: str
    access_modes: tuple[str, ...]
    source: str  # the PV's volume source kind: csi, iscsi, nfs, ...
    csi_driver: str | None
    volume_mode: str = "Filesystem"
    mount_options: tuple[str, ...] = ()
    predicted_from: str | None = None  # StorageClass name when the claim is not bound yet
    volume_handle: str = ""  # spec.csi.volumeHandle

    @property
    def unique_name(self) -> str:
        """The cluster-wide key, as GetUniqueVolumeNameFromSpec builds it: for CSI
        `kubernetes.io/csi/<driver>^<volumeHandle>`, so two PVs of one backend volume are one volume."""
        if self.predicted_from:
            return ""
        if self.source == "csi" and self.volume_handle:
            return f"kubernetes.io/csi/{self.csi_driver}^{self.volume_handle}"
        if self.csi_driver:
            return f"kubernetes.io/csi/{self.csi_driver}^{self.name}"
        return f"{plugin_name_of(self.source)}/{self.name}"

    @property
    def access_mode_label(self) -> str:
        """Kubelet's metric label: the widest mode, RWX > ROX > RWO > RWOP (getVolumeAccessMode)."""
        for mode in ("ReadWriteMany", "ReadOnlyMany", "ReadWriteOnce", "ReadWriteOncePod"):
            if mode in self.access_modes:
                return ACCESS_MODE_SHORT[mode]
        return ""


@dataclass(frozen=True)
class CSIDriverFacts:
    name: str
    se_linux_mount: bool | None  # None: field unset, or the object is missing
    present: bool = True


@dataclass(frozen=True)
class VolumeFacts:
    """What kubelet knows about one pod volume when it computes the SELinux mount label."""

    name: str
    source: str  # pod volume source kind: persistentVolumeClaim, ephemeral, csi, emptyDir, ...
    uses: tuple[ContainerUse, ...]
    pv: PersistentVolumeFacts | None = None
    claim: str | None = None
    csi: CSIDriverFacts | None = None
    in_tree: str | None = None  # in-tree plugin kind when no CSI driver handles it

    @property
    def plugin_name(self) -> str:
        """Kubelet's volume_plugin metric label."""
        if self.csi:
            return f"kubernetes.io/csi/{self.csi.name}"
        return plugin_name_of(self.in_tree or self.source)

    @property
    def access_mode_label(self) -> str:
        return self.pv.access_mode_label if self.pv else "inline"

    @property
    def unique_name(self) -> str:
        """The cluster-wide key of a persistent volume ("" for inline volumes, which are never shared)."""
        return self.pv.unique_name if self.pv else ""


@dataclass(frozen=True)
class OwnerRef:
    kind: str
    name: str


@dataclass(frozen=True)
class PodFacts:
    namespace: str
    name: str
    uid: str
    phase: str
    node_name: str
    change_policy: str | None  # spec.securityContext.seLinuxChangePolicy
    os_name: str
    volumes: tuple[VolumeFacts, ...]
    owners: tuple[OwnerRef, ...] = ()
    pod_options: SELinuxOptions | None = None
    labels: dict = field(default_factory=dict, compare=False, hash=False)

    @functools.cached_property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


class Cluster:
    """An index of the objects given, and the resolution of each pod's volumes against it."""

    def __init__(self, objects: list[dict]):
        self.pods: list[dict] = []
        self.pvcs: dict[tuple[str, str], dict] = {}
        self.pvs: dict[str, dict] = {}
        self.csi_drivers: dict[str, dict] = {}
        self.storage_classes: dict[str, dict] = {}
        self.other: dict[str, dict] = {}  # owner objects: ReplicaSet, Job, ... by "Kind ns/name"
        # Resolved values, shared by every pod that uses the same PV or driver.
        self._pv_cache: dict[str, PersistentVolumeFacts] = {}
        self._driver_cache: dict[str, CSIDriverFacts] = {}
        for obj in objects:
            self.add(obj)

    def add(self, obj: dict) -> None:
        if not isinstance(obj, dict):
            raise InvalidManifest(f"expected a Kubernetes object, got {type(obj).__name__}")
        kind = obj.get("kind")
        name = _get(obj, "metadata", "name")
        if not kind or not name:
            raise InvalidManifest(f"object without kind or metadata.name: {str(obj)[:120]}")
        namespace = _get(obj, "metadata", "namespace", default="default")
        if kind == "Pod":
            self.pods.append(obj)
        elif kind == "PersistentVolumeClaim":
            self.pvcs[(namespace, name)] = obj
        elif kind == "PersistentVolume":
            self.pvs[name] = obj
        elif kind == "CSIDriver":
            self.csi_drivers[name] = obj
        elif kind == "StorageClass":
            self.storage_classes[name] = obj
        else:
            self.other[f"{kind} {namespace}/{name}"] = obj

    # --- resolution ---------------------------------------------------------------------------------------

    def csi_driver(self, name: str) -> CSIDriverFacts:
        found = self._driver_cache.get(name)
        if found is None:
            found = self._driver_cache[name] = self._csi_driver(name)
        return found

    def _csi_driver(self, name: str) -> CSIDriverFacts:
        obj = self.csi_drivers.get(name)
        if obj is None:
            return CSIDriverFacts(name, None, present=False)
        value = _get(obj, "spec", "seLinuxMount")
        if value is not None and not isinstance(value, bool):
            raise InvalidManifest(f"CSIDriver {name}: spec.seLinuxMount must be true or false")
        return CSIDriverFacts(name, value)

    def _pv_facts(self, pv: dict) -> PersistentVolumeFacts:
        name = _get(pv, "metadata", "name")
        spec = pv.get("spec") or {}
        modes = tuple(spec.get("accessModes") or ())
        source = next((key for key in spec if key in _PV_SOURCE_KIND_SET), "unknown")
        driver = _get(spec, "csi", "driver") if source == "csi" else MIGRATED_TO_CSI.get(source)
        if source == "csi" and not driver:
            raise InvalidManifest(f"PersistentVolume {name}: spec.csi.driver is missing")
        return PersistentVolumeFacts(
            name=name, access_modes=modes, source=source, csi_driver=driver,
            volume_mode=spec.get("volumeMode") or "Filesystem",
            mount_options=tuple(spec.get("mountOptions") or ()),
            volume_handle=_get(spec, "csi", "volumeHandle", default="") if source == "csi" else "",
        )

    def _predicted_pv(self, where: str, claim_spec: dict, claim_ref: str) -> PersistentVolumeFacts:
        """An unbound claim: predict the PV from its StorageClass, the way the provisioner will create it."""
        class_name = claim_spec.get("storageClassName")
        storage_class = self.storage_classes.get(class_name) if class_name else None
        if storage_class is None:
            raise InvalidManifest(
                f"{where}: {claim_ref} is not bound to a PersistentVolume, and its StorageClass "
                f"{class_name or '(none)'} is not in the input to predict one from")
        provisioner = storage_class.get("provisioner") or ""
        driver = MIGRATED_PROVISIONERS.get(provisioner, provisioner)
        return PersistentVolumeFacts(
            name=f"(to be provisioned by {provisioner})", access_modes=tuple(claim_spec.get("accessModes") or ()),
            source="csi", csi_driver=driver, volume_mode=claim_spec.get("volumeMode") or "Filesystem",
            mount_options=tuple(storage_class.get("mountOptions") or ()), predicted_from=class_name,
        )

    def _claim_volume(self, pod_ref: str, namespace: str, claim_name: str, template: dict | None):
        where = f"Pod {pod_ref}"
        pvc = self.pvcs.get((namespace, claim_name))
        if pvc is None:
            if template is not None:
                return self._predicted_pv(where, template.get("spec") or {},
                                          f"the ephemeral claim {namespace}/{claim_name}")
            raise InvalidManifest(f"{where}: PersistentVolumeClaim {namespace}/{claim_name} is not in the input")
        pv_name = _get(pvc, "spec", "volumeName")
        if not pv_name:
            return self._predicted_pv(where, pvc.get("spec") or {},
                                      f"PersistentVolumeClaim {namespace}/{claim_name}")
        found = self._pv_cache.get(pv_name)
        if found is not None:
            return found
        pv = self.pvs.get(pv_name)
        if pv is None:
            raise InvalidManifest(
                f"{where}: PersistentVolume {pv_name} (bound to PersistentVolumeClaim {namespace}/{claim_name}) "
                "is not in the input")
        found = self._pv_cache[pv_name] = self._pv_facts(pv)
        return found

    def volume_keys(self, pod: dict) -> list[str]:
        """The unique names of the persistent volumes a pod uses, without resolving the rest of the pod: a cheap
        first pass that tells which pods share a volume at all."""
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        namespace = meta.get("namespace") or "default"
        keys = []
        for volume in spec.get("volumes") or ():
            if "persistentVolumeClaim" in volume:
                claim = (volume["persistentVolumeClaim"] or {}).get("claimName")
                template = None
            elif "ephemeral" in volume:
                claim = f"{meta.get('name')}-{volume.get('name')}"
                template = _get(volume, "ephemeral", "volumeClaimTemplate") or {}
            else:
                continue
            if not claim:
                continue
            key = self._claim_volume(f"{namespace}/{meta.get('name')}", namespace, claim, template).unique_name
            if key:
                keys.append(key)
        return keys

    def resolve_pod(self, pod: dict) -> PodFacts:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        namespace = meta.get("namespace") or "default"
        name = meta.get("name")
        ref = f"{namespace}/{name}"
        where = f"Pod {ref}"
        if not isinstance(spec, dict):
            raise InvalidManifest(f"{where}: spec must be an object")
        pod_sc = spec.get("securityContext") or {}
        pod_options = SELinuxOptions.from_api(pod_sc.get("seLinuxOptions"), f"{where} spec.securityContext")
        if pod_options:
            pod_options.validate(f"{where} spec.securityContext")
        change_policy = pod_sc.get("seLinuxChangePolicy")
        if change_policy not in (None, "Recursive", "MountOption"):
            raise InvalidManifest(
                f"{where}: spec.securityContext.seLinuxChangePolicy {change_policy!r} is not Recursive or MountOption")

        uses: dict[str, list[ContainerUse]] = {}
        for kind, key in (("initContainer", "initContainers"), ("container", "containers"),
                          ("ephemeralContainer", "ephemeralContainers")):
            for container in spec.get(key) or ():
                cname = container.get("name", "<unnamed>")
                csc = container.get("securityContext") or {}
                own = SELinuxOptions.from_api(csc.get("seLinuxOptions"),
                                              f"{where} container {cname} securityContext")
                if own:
                    own.validate(f"{where} container {cname} securityContext")
                # A container's seLinuxOptions replace the pod's as a whole (DetermineEffectiveSecurityContext).
                effective = own if own is not None else pod_options
                privileged = bool(csc.get("privileged"))
                for mount in container.get("volumeMounts") or ():
                    uses.setdefault(mount.get("name"), []).append(ContainerUse(
                        cname, kind, effective, privileged=privileged, read_only=bool(mount.get("readOnly"))))
                for device in container.get("volumeDevices") or ():
                    uses.setdefault(device.get("name"), []).append(
                        ContainerUse(cname, kind, effective, device=True, privileged=privileged))

        volumes = []
        for volume in spec.get("volumes") or ():
            vname = volume.get("name")
            source = next((key for key in volume if key in _POD_VOLUME_KIND_SET), "unknown")
            facts = dict(name=vname, source=source, uses=tuple(uses.get(vname, ())))
            if source == "persistentVolumeClaim":
                claim = _get(volume, "persistentVolumeClaim", "claimName")
                if not claim:
                    raise InvalidManifest(f"{where}: volume {vname}: persistentVolumeClaim.claimName is missing")
                pv = self._claim_volume(ref, namespace, claim, None)
                facts.update(pv=pv, claim=claim)
            elif source == "ephemeral":
                # Generic ephemeral volumes are PVCs named <pod>-<volume> (KEP-1698), eligible like any PV.
                claim = f"{name}-{vname}"
                template = _get(volume, "ephemeral", "volumeClaimTemplate") or {}
                pv = self._claim_volume(ref, namespace, claim, template)
                facts.update(pv=pv, claim=claim)
            elif source == "csi":
                driver = _get(volume, "csi", "driver")
                if not driver:
                    raise InvalidManifest(f"{where}: volume {vname}: csi.driver is missing")
                facts.update(csi=self.csi_driver(driver))
            elif source in MIGRATED_TO_CSI:
                facts.update(csi=self.csi_driver(MIGRATED_TO_CSI[source]))
            else:
                facts.update(in_tree=source)
            pv = facts.get("pv")
            if pv is not None:
                if pv.csi_driver:
                    facts.update(csi=self.csi_driver(pv.csi_driver))
                else:
                    facts.update(in_tree=pv.source)
            volumes.append(VolumeFacts(**facts))

        owners = tuple(OwnerRef(o.get("kind", ""), o.get("name", "")) for o in meta.get("ownerReferences") or ())
        return PodFacts(
            namespace=namespace, name=name, uid=meta.get("uid", ""),
            phase=_get(pod, "status", "phase", default="") or "",
            node_name=spec.get("nodeName") or "", change_policy=change_policy,
            os_name=_get(spec, "os", "name", default="") or "", volumes=tuple(volumes), owners=owners,
            pod_options=pod_options, labels=dict(meta.get("labels") or {}),
        )
