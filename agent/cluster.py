"""Kubernetes objects as values: an index of Pods, PVCs, PVs, CSIDrivers and StorageClasses, and the
per-volume facts kubelet looks at when it decides how to label a volume.

Pure code: takes the parsed API objects (dicts), returns frozen dataclasses. A reference that does not resolve
(a PVC or PV missing from the input) is an `InvalidManifest` naming the object, never a guess.
"""

from __future__ import annotations

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
_CONTAINER_LISTS = (("initContainer", "initContainers"), ("container", "containers"),
                    ("ephemeralContainer", "ephemeralContainers"))
ACCESS_MODE_SHORT = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX",
                     "ReadWriteOncePod": "RWOP"}


def plugin_name_of(kind: str) -> str:
    """Kubelet's volume plugin name for an in-tree kind (the `volume_plugin` metric label)."""
    return {"hostPath": "kubernetes.io/host-path", "emptyDir": "kubernetes.io/empty-dir",
            "configMap": "kubernetes.io/configmap", "downwardAPI": "kubernetes.io/downward-api",
            "local": "kubernetes.io/local-volume"}.get(kind, f"kubernetes.io/{kind.lower()}")


class _stored:
    """A value computed on first access and kept on the instance, like functools.cached_property but without
    the lock Python 3.11 takes on every first access: the audit asks each of ~40k pods for its ref."""

    def __init__(self, func):
        self.func, self.name = func, func.__name__

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.func(instance)
        return value


def _get(obj, *path, default=None):
    for key in path:
        if not isinstance(obj, dict):
            return default
        obj = obj.get(key)
        if obj is None:
            return default
    return obj


def unique_volume_name(pv_name: str, source: str, csi_driver: str | None, volume_handle: str) -> str:
    """A bound PV's cluster-wide key (`PersistentVolumeFacts.unique_name`), from its parts."""
    if source == "csi" and volume_handle:
        return f"kubernetes.io/csi/{csi_driver}^{volume_handle}"
    if csi_driver:
        return f"kubernetes.io/csi/{csi_driver}^{pv_name}"
    return f"{plugin_name_of(source)}/{pv_name}"


def _pv_source(name: str, spec: dict) -> tuple[str, str | None, str]:
    """A PV spec's volume source kind, the CSI driver that serves it (through migration for in-tree kinds), and
    the CSI volume handle."""
    source = "unknown"
    for key in spec:
        if key in _PV_SOURCE_KIND_SET:
            source = key
            break
    if source != "csi":
        return source, MIGRATED_TO_CSI.get(source), ""
    csi = spec["csi"]
    driver = csi.get("driver") if isinstance(csi, dict) else None
    if not driver:
        raise InvalidManifest(f"PersistentVolume {name}: spec.csi.driver is missing")
    handle = csi.get("volumeHandle")
    return source, driver, "" if handle is None else handle


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
        return unique_volume_name(self.name, self.source, self.csi_driver, self.volume_handle)

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

    @_stored
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
        self._source_cache: dict[str, tuple[str, str | None]] = {}  # PV name -> (unique name, CSI driver)
        self._driver_cache: dict[str, CSIDriverFacts] = {}
        # seLinuxOptions by their four raw fields, parsed and validated once: most pods spell theirs like their
        # neighbours. Derived from the pod alone, so storage changes never invalidate it.
        self._options_cache: dict[tuple, SELinuxOptions] = {}
        for obj in objects:
            self.add(obj)

    def add(self, obj: dict) -> None:
        if not isinstance(obj, dict):
            raise InvalidManifest(f"expected a Kubernetes object, got {type(obj).__name__}")
        kind = obj.get("kind")
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not kind or not name:
            raise InvalidManifest(f"object without kind or metadata.name: {str(obj)[:120]}")
        namespace = meta.get("namespace")
        if namespace is None:
            namespace = "default"
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

    def storage_changed(self) -> None:
        """Forget resolved PVs, claim sources and drivers: a live model calls this after replacing or removing
        a PVC, PV, CSIDriver or StorageClass in the index."""
        self._pv_cache.clear()
        self._source_cache.clear()
        self._driver_cache.clear()

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
        source, driver, handle = _pv_source(name, spec)
        return PersistentVolumeFacts(
            name=name, access_modes=tuple(spec.get("accessModes") or ()), source=source, csi_driver=driver,
            volume_mode=spec.get("volumeMode") or "Filesystem",
            mount_options=tuple(spec.get("mountOptions") or ()), volume_handle=handle,
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

    def _claim_volume(self, namespace: str, pod_name, claim_name: str, template: dict | None):
        """The PV behind a pod's claim (predicted from its StorageClass when unbound). Errors name the pod."""
        pvc = self.pvcs.get((namespace, claim_name))
        if pvc is None:
            if template is not None:
                return self._predicted_pv(f"Pod {namespace}/{pod_name}", template.get("spec") or {},
                                          f"the ephemeral claim {namespace}/{claim_name}")
            raise InvalidManifest(
                f"Pod {namespace}/{pod_name}: PersistentVolumeClaim {namespace}/{claim_name} is not in the input")
        spec = pvc.get("spec")
        pv_name = spec.get("volumeName") if isinstance(spec, dict) else None
        if not pv_name:
            return self._predicted_pv(f"Pod {namespace}/{pod_name}", spec or {},
                                      f"PersistentVolumeClaim {namespace}/{claim_name}")
        found = self._pv_cache.get(pv_name)
        if found is not None:
            return found
        pv = self.pvs.get(pv_name)
        if pv is None:
            raise InvalidManifest(
                f"Pod {namespace}/{pod_name}: PersistentVolume {pv_name} (bound to PersistentVolumeClaim "
                f"{namespace}/{claim_name}) is not in the input")
        found = self._pv_cache[pv_name] = self._pv_facts(pv)
        return found

    def claimed_volumes(self, pod: dict) -> list[tuple[str, str]]:
        """(volume name, unique name) of each persistent volume entry of a pod, without resolving the rest of the
        pod: a cheap first pass that tells which pods share a volume at all. Unbound claims are left out."""
        meta = pod.get("metadata") or {}
        volumes = (pod.get("spec") or {}).get("volumes")
        if not volumes:
            return []
        namespace = meta.get("namespace") or "default"
        name = meta.get("name")
        out = []
        for volume in volumes:
            if "persistentVolumeClaim" in volume:
                claim = (volume["persistentVolumeClaim"] or {}).get("claimName")
                template = None
            elif "ephemeral" in volume:
                claim = f"{name}-{volume.get('name')}"
                template = _get(volume, "ephemeral", "volumeClaimTemplate") or {}
            else:
                continue
            if not claim:
                continue
            key, _ = self._claim_source(namespace, name, claim, template)
            if key:
                out.append((volume.get("name"), key))
        return out

    def _claim_source(self, namespace: str, pod_name, claim_name: str,
                      template: dict | None) -> tuple[str, str | None]:
        """The unique name and CSI driver of the volume behind a claim, as `_claim_volume` gives them, without
        building the PV's facts when the claim is bound to a PV of the input: the first pass asks this for every
        claim, and most claims go no further."""
        pvc = self.pvcs.get((namespace, claim_name))
        spec = pvc.get("spec") if pvc is not None else None
        pv_name = spec.get("volumeName") if isinstance(spec, dict) else None
        found = self._source_cache.get(pv_name) if pv_name else None
        if found is not None:
            return found
        pv = self.pvs.get(pv_name) if pv_name else None
        if pv is None:  # unbound, or an error to raise
            facts = self._claim_volume(namespace, pod_name, claim_name, template)
            return facts.unique_name, facts.csi_driver
        source, driver, handle = _pv_source(pv_name, pv.get("spec") or {})
        found = self._source_cache[pv_name] = (unique_volume_name(pv_name, source, driver, handle), driver)
        return found

    def _selinux_options(self, raw, ref: str, container: str | None) -> SELinuxOptions | None:
        """A pod's (container None) or a container's seLinuxOptions, parsed and validated once per spelling."""
        if raw is None:
            return None
        key = None
        if isinstance(raw, dict):
            key = (raw.get("user"), raw.get("role"), raw.get("type"), raw.get("level"))
            try:
                found = self._options_cache.get(key)
            except TypeError:  # an unhashable value: let from_api say what is wrong with it
                found = key = None
            if found is not None:
                return found
        where = (f"Pod {ref} spec.securityContext" if container is None else
                 f"Pod {ref} container {container} securityContext")
        options = SELinuxOptions.from_api(raw, where)
        options.validate(where)
        if key is not None:
            self._options_cache[key] = options
        return options

    def resolve_pod(self, pod: dict, only: set | None = None) -> PodFacts:
        """The pod's facts. With `only`, the volumes not named there are checked just the same but left out of
        `volumes`: the audit needs facts only for the volumes a pod may share."""
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        namespace = meta.get("namespace") or "default"
        name = meta.get("name")
        ref = f"{namespace}/{name}"
        if not isinstance(spec, dict):
            raise InvalidManifest(f"Pod {ref}: spec must be an object")
        pod_sc = spec.get("securityContext") or {}
        pod_options = self._selinux_options(pod_sc.get("seLinuxOptions"), ref, None)
        change_policy = pod_sc.get("seLinuxChangePolicy")
        if change_policy not in (None, "Recursive", "MountOption"):
            raise InvalidManifest(
                f"Pod {ref}: spec.securityContext.seLinuxChangePolicy {change_policy!r} is not Recursive or "
                "MountOption")
        uses = self._container_uses(spec, pod_options, ref, only)
        volumes = []
        for volume in spec.get("volumes") or ():
            facts = self._volume_facts(volume, namespace, name, uses, only)
            if facts is not None:
                volumes.append(facts)

        owners = tuple([OwnerRef(o.get("kind", ""), o.get("name", "")) for o in meta.get("ownerReferences") or ()])
        return PodFacts(
            namespace=namespace, name=name, uid=meta.get("uid", ""),
            phase=_get(pod, "status", "phase", default="") or "",
            node_name=spec.get("nodeName") or "", change_policy=change_policy,
            os_name=_get(spec, "os", "name", default="") or "", volumes=tuple(volumes), owners=owners,
            pod_options=pod_options, labels=dict(meta.get("labels") or {}),
        )

    def _container_uses(self, spec: dict, pod_options: SELinuxOptions | None, ref: str,
                        only: set | None) -> dict[str, list[ContainerUse]]:
        """Each container's mounts and devices by volume name, with the container's effective options. Every
        container's options are checked, also where none of its volumes is in `only`."""
        uses: dict[str, list[ContainerUse]] = {}
        for kind, key in _CONTAINER_LISTS:
            for container in spec.get(key) or ():
                cname = container.get("name", "<unnamed>")
                csc = container.get("securityContext") or {}
                own = csc.get("seLinuxOptions")
                # A container's seLinuxOptions replace the pod's as a whole (DetermineEffectiveSecurityContext).
                effective = pod_options if own is None else self._selinux_options(own, ref, cname)
                privileged = bool(csc.get("privileged"))
                for mount in container.get("volumeMounts") or ():
                    if only is None or mount.get("name") in only:
                        uses.setdefault(mount.get("name"), []).append(ContainerUse(
                            cname, kind, effective, privileged=privileged, read_only=bool(mount.get("readOnly"))))
                for device in container.get("volumeDevices") or ():
                    if only is None or device.get("name") in only:
                        uses.setdefault(device.get("name"), []).append(
                            ContainerUse(cname, kind, effective, device=True, privileged=privileged))
        return uses

    def _volume_facts(self, volume: dict, namespace: str, pod_name, uses: dict,
                      only: set | None) -> VolumeFacts | None:
        """One pod volume resolved against the index; None (after the same checks) when `only` leaves it out."""
        vname = volume.get("name")
        wanted = only is None or vname in only
        source = "unknown"
        for key in volume:
            if key in _POD_VOLUME_KIND_SET:
                source = key
                break
        pv = claim = csi = in_tree = None
        if source == "persistentVolumeClaim" or source == "ephemeral":
            if source == "persistentVolumeClaim":
                reference = volume["persistentVolumeClaim"]
                claim = reference.get("claimName") if isinstance(reference, dict) else None
                if not claim:
                    raise InvalidManifest(
                        f"Pod {namespace}/{pod_name}: volume {vname}: persistentVolumeClaim.claimName is missing")
                template = None
            else:
                # Generic ephemeral volumes are PVCs named <pod>-<volume> (KEP-1698), eligible like any PV.
                claim = f"{pod_name}-{vname}"
                template = _get(volume, "ephemeral", "volumeClaimTemplate") or {}
            if not wanted:  # the same checks, without building the PV's facts
                _, driver = self._claim_source(namespace, pod_name, claim, template)
                if driver:
                    self.csi_driver(driver)
                return None
            pv = self._claim_volume(namespace, pod_name, claim, template)
            if pv.csi_driver:
                csi = self.csi_driver(pv.csi_driver)
            else:
                in_tree = pv.source
        elif source == "csi":
            driver = _get(volume, "csi", "driver")
            if not driver:
                raise InvalidManifest(f"Pod {namespace}/{pod_name}: volume {vname}: csi.driver is missing")
            csi = self.csi_driver(driver)
        elif source in MIGRATED_TO_CSI:
            csi = self.csi_driver(MIGRATED_TO_CSI[source])
        else:
            in_tree = source
        if not wanted:
            return None
        return VolumeFacts(vname, source, tuple(uses.get(vname, ())), pv, claim, csi, in_tree)
