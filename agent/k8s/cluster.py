"""Kubernetes objects as values: an index of Pods, PVCs, PVs, CSIDrivers and StorageClasses, and the
per-volume facts kubelet looks at when it decides how to label a volume.

Pure code: takes the parsed API objects (dicts), returns frozen dataclasses. A reference that does not resolve
(a PVC or PV missing from the input) is an `InvalidManifest` naming the object, never a guess.

Input shapes are checked where they are read, with a cheap type check of each field the code uses: a field of
the wrong JSON type is an `InvalidManifest` naming the object and the field path (`Pod ns/web-0:
spec.volumes[2] must be an object, got string`), never a traceback and never a string iterated as a list. The
audit reads a few fields of every pod (metadata, status.phase, spec.volumes and their claims, the container
lists), and all the rest only of the pods that share a volume or have several containers; a field nothing reads
(the securityContext of a lone pod, a PV no pod claims) is not checked: it cannot change the result, and
checking every field of every object would cost as much as the audit itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.k8s.selinux_options import SELinuxOptions
from agent.errors import InvalidManifest, VolumeNotResolved
from agent.k8s.migration import MIGRATED_TO_CSI, gce_access_modes, translate_inline, translate_pv
from agent.k8s.stored_objects import ObjectStore, StoredObject, decoded

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
_CONTAINER_KEYS = tuple(key for _, key in _CONTAINER_LISTS)
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


_JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
               type(None): "null"}


def json_type(value) -> str:
    """The JSON name of a parsed value's type: what the user wrote, not Python's name for it."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def shape_error(where: str, path: str, expected: str, value) -> InvalidManifest:
    """`Pod ns/web-0: spec.volumes[2] must be an object, got string`."""
    return InvalidManifest(f"{where}: {path} must be {expected}, got {json_type(value)}")


def _position(items: list, item) -> int:
    """The index of `item` in `items` by identity: loops keep to plain iteration and ask only when they fail."""
    return next(index for index, candidate in enumerate(items) if candidate is item)


def _object(value, where: str, path: str) -> dict:
    """An optional object field: absent or null reads as {}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise shape_error(where, path, "an object", value)
    return value


def _string(value, where: str, path: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise shape_error(where, path, "a string", value)
    return value


def _strings(value, where: str, path: str) -> tuple[str, ...]:
    """An optional list of strings (access modes, mount options) as a tuple."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise shape_error(where, path, "a list", value)
    for item in value:
        if not isinstance(item, str):
            raise shape_error(where, f"{path}[{_position(value, item)}]", "a string", item)
    return tuple(value)


def _objects(value, where: str, path: str) -> list:
    """An optional list of objects; absent or null reads as []."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise shape_error(where, path, "a list", value)
    for item in value:
        if not isinstance(item, dict):
            raise shape_error(where, f"{path}[{_position(value, item)}]", "an object", item)
    return value


def object_key(obj, kind: str | None = None) -> tuple[str, str | None, str]:
    """(kind, namespace or None, name) of an API object, its envelope checked: what every index keys on. With
    `kind`, the object may leave its own out, as the items of an API list response do."""
    if not isinstance(obj, dict):
        raise InvalidManifest(f"expected a Kubernetes object, got {json_type(obj)}")
    if kind is None:
        kind = obj.get("kind")
    meta = obj.get("metadata")
    if kind is not None and not isinstance(kind, str):
        raise shape_error("object", "kind", "a string", kind)
    if meta is not None and not isinstance(meta, dict):
        raise shape_error(kind or "object", "metadata", "an object", meta)
    name = meta.get("name") if meta else None
    if not kind or not name:
        # Named by the keys it has, never by formatting the object: that costs what the object expands to.
        raise InvalidManifest(f"object without kind or metadata.name (an object with keys "
                              f"{', '.join(sorted(map(str, obj))[:8])[:120]})")
    namespace = meta.get("namespace")
    if not isinstance(name, str):
        raise shape_error(kind, "metadata.name", "a string", name)
    if namespace is not None and not isinstance(namespace, str):
        raise shape_error(f"{kind} {name}", "metadata.namespace", "a string", namespace)
    return kind, namespace, name


def owner_references(raw, where: str, path: str = "metadata.ownerReferences") -> tuple[OwnerRef, ...]:
    """An object's ownerReferences, checked. `where` names the object, for messages."""
    if type(raw) is list:
        out = []
        for ref in raw:
            kind = ref.get("kind") if type(ref) is dict else None
            name = ref.get("name") if kind is not None else None
            controller = ref.get("controller") if name is not None else None
            if type(kind) is not str or type(name) is not str or (
                    controller is not None and type(controller) is not bool):
                break
            out.append(OwnerRef(kind, name, controller is True))
        else:
            return tuple(out)
    # Absent, or an entry that is malformed or lacks a kind or name: the slow reading, which says what is wrong.
    out = []
    for index, ref in enumerate(_objects(raw, where, path)):
        controller = ref.get("controller")
        if controller is not None and not isinstance(controller, bool):
            raise shape_error(where, f"{path}[{index}].controller", "a boolean", controller)
        out.append(OwnerRef(_string(ref.get("kind"), where, f"{path}[{index}].kind"),
                            _string(ref.get("name"), where, f"{path}[{index}].name"), bool(controller)))
    return tuple(out)


def pod_phase(pod: dict) -> str:
    """status.phase of a pod ("" when unset), checked: the audit reads it for every pod."""
    status = pod.get("status")
    if status is None:
        return ""
    if not isinstance(status, dict):
        raise shape_error(_pod_where(pod), "status", "an object", status)
    phase = status.get("phase")
    if phase is None:
        return ""
    if not isinstance(phase, str):
        raise shape_error(_pod_where(pod), "status.phase", "a string", phase)
    return phase


def _pod_where(pod: dict) -> str:
    """`Pod ns/name` for messages, from a pod whose metadata may itself be malformed."""
    meta = pod.get("metadata")
    if not isinstance(meta, dict):
        return "Pod"
    return f"Pod {meta.get('namespace') or 'default'}/{meta.get('name')}"


def unique_volume_name(pv_name: str, source: str, csi_driver: str | None, volume_handle: str) -> str:
    """A bound PV's cluster-wide key (`PersistentVolumeFacts.unique_name`), from its parts."""
    # CSI, and in-tree sources migrated to CSI once translated: the CSI plugin's GetVolumeName, driver^handle.
    if csi_driver and volume_handle:
        return f"kubernetes.io/csi/{csi_driver}^{volume_handle}"
    if csi_driver:
        return f"kubernetes.io/csi/{csi_driver}^{pv_name}"
    return f"{plugin_name_of(source)}/{pv_name}"


def _pv_spec(pv: dict, name: str) -> dict:
    spec = pv.get("spec")
    return spec if type(spec) is dict else _object(spec, f"PersistentVolume {name}", "spec")


def _pv_source(pv: dict, name: str, spec: dict) -> tuple[str, str | None, str]:
    """A PV spec's volume source kind, the CSI driver that serves it (through migration for in-tree kinds), and
    the CSI volume handle (translated by CSI migration for in-tree kinds, as upstream keys them)."""
    source = "unknown"
    for key in spec:
        if key in _PV_SOURCE_KIND_SET:
            source = key
            break
    if source in MIGRATED_TO_CSI:
        translated = translate_pv(source, _object(spec[source], f"PersistentVolume {name}", f"spec.{source}"), pv,
                                  name)
        return source, translated.driver, translated.handle
    if source != "csi":
        return source, None, ""
    csi = spec["csi"]
    driver = csi.get("driver") if type(csi) is dict else None
    handle = csi.get("volumeHandle") if driver else None
    if type(driver) is str and driver and type(handle) is str:
        return source, driver, handle
    where = f"PersistentVolume {name}"
    csi = _object(csi, where, "spec.csi")
    driver = _string(csi.get("driver"), where, "spec.csi.driver")
    if not driver:
        raise InvalidManifest(f"{where}: spec.csi.driver is missing")
    return source, driver, _string(csi.get("volumeHandle"), where, "spec.csi.volumeHandle")


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
    volume_handle: str = ""  # spec.csi.volumeHandle, or the handle CSI migration translates an in-tree source to
    inline: bool = False  # an inline in-tree pod volume, as the PV CSI migration translates it to

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
        """The cluster-wide key of a persistent volume, or of an inline volume CSI migration translates (its
        handle, as a PV of the same disk has it); "" for other inline volumes, which the controller never shares."""
        return self.pv.unique_name if self.pv else ""


@dataclass(frozen=True)
class OwnerRef:
    kind: str
    name: str
    controller: bool = False  # ownerReferences[].controller: the one owner that manages the object


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
    unresolved: tuple[str, ...] = ()  # volumes left out by a partial resolution, and why (resolve_pod)

    @_stored
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


class Cluster:
    """An index of the objects given, and the resolution of each pod's volumes against it."""

    def __init__(self, objects: list[dict]):
        # Pods by (namespace, name): a dump read twice, or two dumps that overlap, hold each pod once, the last
        # copy read in the place of the first. A pod under another name with the uid of one already read
        # replaces it too.
        # Stores give plain dicts; an object of a large dump is kept as its text until read (stored_objects.py).
        self._pods: ObjectStore = ObjectStore()
        self._pod_uids: dict[str, tuple[str, str]] = {}
        self.pvcs: ObjectStore = ObjectStore()
        self.pvs: ObjectStore = ObjectStore()
        self.csi_drivers: ObjectStore = ObjectStore()
        self.storage_classes: ObjectStore = ObjectStore()
        self.other: ObjectStore = ObjectStore()  # owner objects: ReplicaSet, Job, ... by "Kind ns/name"
        # Resolved values, shared by every pod that uses the same PV or driver.
        self._pv_cache: dict[str, PersistentVolumeFacts] = {}
        self._source_cache: dict[str, tuple[str, str | None]] = {}  # PV name -> (unique name, CSI driver)
        self._driver_cache: dict[str, CSIDriverFacts] = {}
        # seLinuxOptions by their four raw fields, parsed and validated once: most pods spell theirs like their
        # neighbours. Derived from the pod alone, so storage changes never invalidate it.
        self._options_cache: dict[tuple, SELinuxOptions] = {}
        for obj in objects:
            self.add(obj)

    @property
    def pods(self) -> list[dict]:
        """The pods, each once, in the order they were first read."""
        return [decoded(value) for value in dict.values(self._pods)]

    def stored_pods(self) -> list:
        """The pods as stored: dicts, or StoredObjects to decode (`decoded`) when read. A pass over a large dump
        keeps these, not the dicts, between two reads of a pod."""
        return list(dict.values(self._pods))

    def add(self, obj) -> None:
        if type(obj) is StoredObject:  # its envelope was checked when it was read
            kind, namespace, name, uid = obj.kind, obj.namespace, obj.name, obj.uid
        else:
            kind, namespace, name, uid = self._envelope(obj)
        if namespace is None:
            namespace = "default"
        if kind == "Pod":
            key = (namespace, name)
            if uid is not None:
                if type(uid) is not str:
                    raise shape_error(f"Pod {namespace}/{name}", "metadata.uid", "a string", uid)
                previous = self._pod_uids.setdefault(uid, key)
                if previous is not key and previous != key:
                    self._same_uid(uid, previous, key)
            self._pods[key] = obj
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

    @staticmethod
    def _envelope(obj) -> tuple:
        """(kind, namespace, name, uid) of a parsed object, checked (the uid only for a pod)."""
        # The usual object is checked inline (a dump holds hundreds of thousands); anything else goes to
        # object_key, which raises with the reason.
        try:
            meta = obj["metadata"]
            kind = obj["kind"]
            name = meta["name"]
            namespace = meta.get("namespace")
        except (KeyError, TypeError, AttributeError):
            kind, namespace, name = object_key(obj)
            meta = obj["metadata"]
        if type(name) is not str or type(kind) is not str or not name or not kind or (
                namespace is not None and type(namespace) is not str):
            kind, namespace, name = object_key(obj)
        return kind, namespace, name, meta.get("uid") if kind == "Pod" else None

    def _same_uid(self, uid: str, previous: tuple[str, str], key: tuple[str, str]) -> None:
        """A pod read under another name than an earlier one of the same uid: one object, renamed between two
        dumps, is counted once (the earlier name is dropped unless a later copy gave it another uid)."""
        self._pod_uids[uid] = key
        kept = dict.get(self._pods, previous)
        if kept is not None and (kept.uid if type(kept) is StoredObject else kept["metadata"].get("uid")) == uid:
            del self._pods[previous]

    def storage_changed(self) -> None:
        """Forget resolved PVs, claim sources and drivers: a live model calls this after replacing or removing
        a PVC, PV, CSIDriver or StorageClass in the index."""
        self._pv_cache.clear()
        self._source_cache.clear()
        self._driver_cache.clear()

    def storage_keys(self, pod: dict) -> set[tuple]:
        """The storage objects resolving the pod reads, as (kind, key): ("PersistentVolumeClaim", (namespace,
        name)), ("PersistentVolume", name), ("CSIDriver", name), also those missing from the index. A live model
        re-evaluates a pod when one of them changes. Reads what it can of a malformed pod, without raising:
        such a pod waits for a change of its own."""
        meta, spec = pod.get("metadata"), pod.get("spec")
        volumes = spec.get("volumes") if isinstance(spec, dict) else None
        if not isinstance(meta, dict) or not isinstance(volumes, list):
            return set()
        namespace = meta.get("namespace") or "default"
        keys: set[tuple] = set()
        for volume in volumes:
            if not isinstance(volume, dict):
                continue
            if "persistentVolumeClaim" not in volume and "ephemeral" not in volume:
                driver = _get(volume, "csi", "driver") if "csi" in volume else None
                driver = driver or next((MIGRATED_TO_CSI[key] for key in volume if key in MIGRATED_TO_CSI), None)
                if isinstance(driver, str):
                    keys.add(("CSIDriver", driver))
                continue
            try:
                claim = _volume_claim(pod, volumes, volume)[0]
            except InvalidManifest:
                continue  # a malformed claim reference: no storage object can make the pod resolve
            if not claim:
                continue
            keys.add(("PersistentVolumeClaim", (namespace, claim)))
            pv_name = _get(self.pvcs.get((namespace, claim)), "spec", "volumeName")
            if not isinstance(pv_name, str):
                continue
            keys.add(("PersistentVolume", pv_name))
            pv = self.pvs.get(pv_name)
            spec = pv.get("spec") if pv is not None else None
            if isinstance(spec, dict):
                try:
                    driver = _pv_source(pv, pv_name, spec)[1]
                except InvalidManifest:
                    continue
                if driver:
                    keys.add(("CSIDriver", driver))
        return keys

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
        value = _object(obj.get("spec"), f"CSIDriver {name}", "spec").get("seLinuxMount")
        if value is not None and not isinstance(value, bool):
            raise InvalidManifest(f"CSIDriver {name}: spec.seLinuxMount must be true or false")
        return CSIDriverFacts(name, value)

    def _pv_facts(self, pv: dict) -> PersistentVolumeFacts:
        name = pv["metadata"]["name"]
        spec = _pv_spec(pv, name)
        source, driver, handle = _pv_source(pv, name, spec)
        modes = spec.get("accessModes")
        volume_mode = spec.get("volumeMode")
        options = spec.get("mountOptions")
        if type(volume_mode) is not str:
            volume_mode = _string(volume_mode, f"PersistentVolume {name}", "spec.volumeMode")
        modes = _strings(modes, f"PersistentVolume {name}", "spec.accessModes")
        if source == "gcePersistentDisk":
            modes = gce_access_modes(modes)  # what the translated spec kubelet judges carries
        return PersistentVolumeFacts(
            name=name, access_modes=modes, source=source,
            csi_driver=driver, volume_mode=volume_mode or "Filesystem",
            mount_options=() if options is None else _strings(options, f"PersistentVolume {name}", "spec.mountOptions"),
            volume_handle=handle,
        )

    def _predicted_pv(self, where: str, claim_spec: dict, claim_ref: str, claim_where: str,
                      spec_path: str) -> PersistentVolumeFacts:
        """An unbound claim: predict the PV from its StorageClass, the way the provisioner will create it.
        `claim_where` and `spec_path` name the object and field that hold the claim's spec, for shape errors."""
        class_name = _string(claim_spec.get("storageClassName"), claim_where, f"{spec_path}.storageClassName")
        storage_class = self.storage_classes.get(class_name) if class_name else None
        if storage_class is None:
            raise VolumeNotResolved(
                f"{where}: {claim_ref} is not bound to a PersistentVolume, and its StorageClass "
                f"{class_name or '(none)'} is not in the input to predict one from")
        class_where = f"StorageClass {class_name}"
        provisioner = _string(storage_class.get("provisioner"), class_where, "provisioner")
        driver = MIGRATED_PROVISIONERS.get(provisioner, provisioner)
        return PersistentVolumeFacts(
            name=f"(to be provisioned by {provisioner})",
            access_modes=_strings(claim_spec.get("accessModes"), claim_where, f"{spec_path}.accessModes"),
            source="csi", csi_driver=driver,
            volume_mode=_string(claim_spec.get("volumeMode"), claim_where, f"{spec_path}.volumeMode") or "Filesystem",
            mount_options=_strings(storage_class.get("mountOptions"), class_where, "mountOptions"),
            predicted_from=class_name,
        )

    def _claim_volume(self, namespace: str, pod_name, claim_name: str, template: dict | None,
                      template_path: str = ""):
        """The PV behind a pod's claim (predicted from its StorageClass when unbound). Errors name the pod, or the
        object whose field is malformed. `template` is an ephemeral volume's claim template spec, at
        `template_path` in the pod."""
        pvc = self.pvcs.get((namespace, claim_name))
        if pvc is None:
            pod_where = f"Pod {namespace}/{pod_name}"
            if template is not None:
                return self._predicted_pv(pod_where, template, f"the ephemeral claim {namespace}/{claim_name}",
                                          pod_where, template_path)
            raise VolumeNotResolved(
                f"{pod_where}: PersistentVolumeClaim {namespace}/{claim_name} is not in the input")
        spec = pvc.get("spec")
        pv_name = spec.get("volumeName") if type(spec) is dict else None
        if type(pv_name) is not str or not pv_name:
            pvc_where = f"PersistentVolumeClaim {namespace}/{claim_name}"
            spec = _object(spec, pvc_where, "spec")
            if _string(spec.get("volumeName"), pvc_where, "spec.volumeName"):
                pv_name = spec["volumeName"]  # a str subclass
            else:
                return self._predicted_pv(f"Pod {namespace}/{pod_name}", spec, pvc_where, pvc_where, "spec")
        found = self._pv_cache.get(pv_name)
        if found is not None:
            return found
        pv = self.pvs.get(pv_name)
        if pv is None:
            raise VolumeNotResolved(
                f"Pod {namespace}/{pod_name}: PersistentVolume {pv_name} (bound to PersistentVolumeClaim "
                f"{namespace}/{claim_name}) is not in the input")
        found = self._pv_cache[pv_name] = self._pv_facts(pv)
        return found

    def claimed_volumes(self, pod: dict) -> list[tuple[str, str]]:
        """(volume name, unique name) of each persistent volume entry of a pod, without resolving the rest of the
        pod: a cheap first pass that tells which pods share a volume at all. Unbound claims are left out."""
        return self.survey(pod)[0]

    def survey(self, pod: dict) -> tuple[list[tuple[str, str]], int, list[str]]:
        """What the audit's first pass reads of every pod: its claimed volumes (`claimed_volumes`, with the inline
        volumes CSI migration keys like PVs), how many containers it has, and why any of its volumes cannot be
        followed (a claim, PV or StorageClass missing from the input), with the types of the fields read checked."""
        spec = pod.get("spec")
        if type(spec) is not dict:
            spec = _object(spec, _pod_where(pod), "spec")
        init, main, ephemeral = spec.get("initContainers"), spec.get("containers"), spec.get("ephemeralContainers")
        if type(main) is list and init is None and ephemeral is None:
            count = len(main)
        else:
            count = 0
            for key, containers in zip(_CONTAINER_KEYS, (init, main, ephemeral)):
                if containers is None:
                    continue
                if not isinstance(containers, list):
                    raise shape_error(_pod_where(pod), f"spec.{key}", "a list", containers)
                count += len(containers)
        volumes = spec.get("volumes")
        if type(volumes) is not list:
            volumes = _objects(volumes, _pod_where(pod), "spec.volumes")
        if not volumes:
            return [], count, []
        meta = pod.get("metadata")
        if type(meta) is not dict:
            meta = _object(meta, "Pod", "metadata")
        namespace = meta.get("namespace") or "default"
        name = meta.get("name")
        out, unresolved = [], []
        for volume in volumes:
            if type(volume) is not dict:
                _objects(volumes, _pod_where(pod), "spec.volumes")
            vname = volume.get("name")
            if type(vname) is not str or not vname:
                _volume_name(_pod_where(pod), volumes, volume)
            try:
                if "persistentVolumeClaim" in volume:
                    reference = volume["persistentVolumeClaim"]
                    claim = reference.get("claimName") if type(reference) is dict else None
                    if type(claim) is str:
                        key = self._claim_source(namespace, name, claim, None)[0] if claim else ""
                    else:
                        _volume_claim(pod, volumes, volume)  # raises for a malformed reference; none is skipped
                        continue
                elif "ephemeral" in volume:
                    claim, template, template_path = _volume_claim(pod, volumes, volume)
                    key = self._claim_source(namespace, name, claim, template, template_path)[0]
                else:
                    kind = next((key for key in volume if key in _POD_VOLUME_KIND_SET), None)
                    if kind not in MIGRATED_TO_CSI:
                        continue
                    key = self._inline_volume(namespace, name, volumes, volume, vname, kind).unique_name
            except VolumeNotResolved as err:
                unresolved.append(str(err))  # reported with the pod; its other volumes still count
                continue
            if key:
                out.append((vname, key))
        return out, count, unresolved

    def _claim_source(self, namespace: str, pod_name, claim_name: str, template: dict | None,
                      template_path: str = "") -> tuple[str, str | None]:
        """The unique name and CSI driver of the volume behind a claim, as `_claim_volume` gives them, without
        building the PV's facts when the claim is bound to a PV of the input: the first pass asks this for every
        claim, and most claims go no further."""
        pvc = self.pvcs.get((namespace, claim_name))
        spec = pvc.get("spec") if pvc is not None else None
        pv_name = spec.get("volumeName") if type(spec) is dict else None
        if type(pv_name) is not str:
            pv_name = None  # _claim_volume says what is wrong, if anything
        found = self._source_cache.get(pv_name) if pv_name else None
        if found is not None:
            return found
        pv = self.pvs.get(pv_name) if pv_name else None
        if pv is None:  # unbound, or an error to raise
            facts = self._claim_volume(namespace, pod_name, claim_name, template, template_path)
            return facts.unique_name, facts.csi_driver
        spec = pv.get("spec")
        if type(spec) is not dict:
            spec = _pv_spec(pv, pv_name)
        source, driver, handle = _pv_source(pv, pv_name, spec)
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

    def resolve_pod(self, pod: dict, only: set | None = None, partial: bool = False) -> PodFacts:
        """The pod's facts. With `only`, the volumes not named there are checked just the same but left out of
        `volumes`: the audit needs facts only for the volumes a pod may share. With `partial`, a volume that
        cannot be followed (VolumeNotResolved) is left out and named in `unresolved`, as upstream's controller
        goes on with the pod's other volumes (syncPod: `continue` after CreateVolumeSpec fails); without it, it
        is an error (explain answers for each volume of one pod)."""
        # Each field is read, then type-checked once; the helpers (_object, _string) run only for a field that
        # is absent or malformed, to give {} or "" or to raise.
        meta = pod.get("metadata")
        if type(meta) is not dict:
            meta = _object(meta, "Pod", "metadata")
        namespace = meta.get("namespace") or "default"
        name = meta.get("name")
        ref = f"{namespace}/{name}"
        spec = pod.get("spec")
        if type(spec) is not dict:
            spec = _object(spec, f"Pod {ref}", "spec")
        pod_sc = spec.get("securityContext")
        if type(pod_sc) is not dict:
            pod_sc = _object(pod_sc, f"Pod {ref}", "spec.securityContext")
        pod_options = self._selinux_options(pod_sc.get("seLinuxOptions"), ref, None)
        change_policy = pod_sc.get("seLinuxChangePolicy")
        if change_policy not in (None, "Recursive", "MountOption"):
            raise InvalidManifest(
                f"Pod {ref}: spec.securityContext.seLinuxChangePolicy {change_policy!r} is not Recursive or "
                "MountOption")
        uses = self._container_uses(spec, pod_options, ref, only)
        volumes, unresolved = [], []
        entries = spec.get("volumes")
        if type(entries) is not list:
            entries = _objects(entries, f"Pod {ref}", "spec.volumes")
        for volume in entries:
            if type(volume) is not dict:
                _objects(entries, f"Pod {ref}", "spec.volumes")
            try:
                facts = self._volume_facts(pod, entries, volume, namespace, name, uses, only)
            except VolumeNotResolved as err:
                if not partial:
                    raise
                unresolved.append(str(err))
                continue
            if facts is not None:
                volumes.append(facts)

        uid = meta.get("uid")
        labels = meta.get("labels")
        node_name = spec.get("nodeName")
        os_spec = spec.get("os")
        if type(uid) is not str:
            uid = _string(uid, f"Pod {ref}", "metadata.uid")
        if type(labels) is not dict:
            labels = _object(labels, f"Pod {ref}", "metadata.labels")
        if type(node_name) is not str:
            node_name = _string(node_name, f"Pod {ref}", "spec.nodeName")
        os_name = ""
        if os_spec is not None:
            os_name = _string(_object(os_spec, f"Pod {ref}", "spec.os").get("name"), f"Pod {ref}", "spec.os.name")
        return PodFacts(
            namespace=namespace, name=name, uid=uid, phase=pod_phase(pod), node_name=node_name,
            change_policy=change_policy, os_name=os_name, volumes=tuple(volumes),
            owners=owner_references(meta.get("ownerReferences"), f"Pod {ref}"), pod_options=pod_options,
            labels=dict(labels), unresolved=tuple(unresolved),
        )

    def _container_uses(self, spec: dict, pod_options: SELinuxOptions | None, ref: str,
                        only: set | None) -> dict[str, list[ContainerUse]]:
        """Each container's mounts and devices by volume name, with the container's effective options. Every
        container's options are checked, also where none of its volumes is in `only`."""
        uses: dict[str, list[ContainerUse]] = {}
        for kind, key in _CONTAINER_LISTS:
            containers = spec.get(key)
            if type(containers) is not list:
                if containers is None:
                    continue
                containers = _objects(containers, f"Pod {ref}", f"spec.{key}")
            for container in containers:
                if type(container) is not dict:
                    _objects(containers, f"Pod {ref}", f"spec.{key}")
                cname = container.get("name")
                csc = container.get("securityContext")
                mounts = container.get("volumeMounts")
                devices = container.get("volumeDevices")
                if type(cname) is not str:
                    cname = _container_field(ref, key, containers, container, "name", str, "<unnamed>")
                if csc is None:
                    csc = _NO_FIELDS
                elif type(csc) is not dict:
                    csc = _container_field(ref, key, containers, container, "securityContext", dict, _NO_FIELDS)
                if type(mounts) is not list and mounts is not None:
                    _container_field(ref, key, containers, container, "volumeMounts", list, None)
                if type(devices) is not list and devices is not None:
                    _container_field(ref, key, containers, container, "volumeDevices", list, None)
                own = csc.get("seLinuxOptions")
                # A container's seLinuxOptions replace the pod's as a whole (DetermineEffectiveSecurityContext).
                effective = pod_options if own is None else self._selinux_options(own, ref, cname)
                privileged = csc.get("privileged")
                if privileged is not None and type(privileged) is not bool:
                    raise _container_error(ref, key, containers, container, ".securityContext.privileged",
                                           "a boolean", privileged)
                privileged = privileged is True
                for mount in mounts or ():
                    mname = mount.get("name") if isinstance(mount, dict) else _NOT_A_NAME
                    if type(mname) is not str and mname is not None:
                        raise _mount_error(ref, key, containers, container, "volumeMounts", mount)
                    if only is None or mname in only:
                        read_only = mount.get("readOnly")
                        if read_only is not None and type(read_only) is not bool:
                            raise _mount_error(ref, key, containers, container, "volumeMounts", mount)
                        uses.setdefault(mname, []).append(ContainerUse(
                            cname, kind, effective, privileged=privileged, read_only=read_only is True))
                for device in devices or ():
                    dname = device.get("name") if isinstance(device, dict) else _NOT_A_NAME
                    if type(dname) is not str and dname is not None:
                        raise _mount_error(ref, key, containers, container, "volumeDevices", device)
                    if only is None or dname in only:
                        uses.setdefault(dname, []).append(
                            ContainerUse(cname, kind, effective, device=True, privileged=privileged))
        return uses

    def _volume_facts(self, pod: dict, entries: list, volume: dict, namespace: str, pod_name, uses: dict,
                      only: set | None) -> VolumeFacts | None:
        """One pod volume resolved against the index; None (after the same checks) when `only` leaves it out."""
        vname = volume.get("name")
        if type(vname) is not str or not vname:
            _volume_name(f"Pod {namespace}/{pod_name}", entries, volume)
        wanted = only is None or vname in only
        source = "unknown"
        for key in volume:
            if key in _POD_VOLUME_KIND_SET:
                source = key
                break
        pv = claim = csi = in_tree = None
        if source == "persistentVolumeClaim" or source == "ephemeral":
            reference = volume.get("persistentVolumeClaim")
            claim = reference.get("claimName") if type(reference) is dict else None
            template, template_path = None, ""
            if type(claim) is not str:
                # Generic ephemeral volumes are PVCs named <pod>-<volume> (KEP-1698), eligible like any PV.
                claim, template, template_path = _volume_claim(pod, entries, volume)
            if not claim:
                raise InvalidManifest(
                    f"Pod {namespace}/{pod_name}: volume {vname}: persistentVolumeClaim.claimName is missing")
            if not wanted:  # the same checks, without building the PV's facts
                _, driver = self._claim_source(namespace, pod_name, claim, template, template_path)
                if driver:
                    self.csi_driver(driver)
                return None
            pv = self._claim_volume(namespace, pod_name, claim, template, template_path)
            if pv.csi_driver:
                csi = self.csi_driver(pv.csi_driver)
            else:
                in_tree = pv.source
        elif source == "csi":
            where = f"Pod {namespace}/{pod_name}"
            path = f"spec.volumes[{_position(entries, volume)}].csi"
            driver = _string(_object(volume["csi"], where, path).get("driver"), where, f"{path}.driver")
            if not driver:
                raise InvalidManifest(f"{where}: volume {vname}: csi.driver is missing")
            csi = self.csi_driver(driver)
        elif source in MIGRATED_TO_CSI:
            # Translated like a PV (TranslateInTreeInlineVolumeToCSI), so kubelet and the controller see a volume
            # spec with a PersistentVolume: keyed by its handle and judged by the translated access modes.
            pv = self._inline_volume(namespace, pod_name, entries, volume, vname, source)
            csi = self.csi_driver(pv.csi_driver)
        else:
            in_tree = source
        if not wanted:
            return None
        return VolumeFacts(vname, source, tuple(uses.get(vname, ())), pv, claim, csi, in_tree)


    def _inline_volume(self, namespace: str, pod_name, entries: list, volume: dict, vname: str,
                       kind: str) -> PersistentVolumeFacts:
        """An inline volume of an in-tree plugin migrated to CSI, as the PV its translation gives."""
        where = f"Pod {namespace}/{pod_name}"
        source = _object(volume[kind], where, f"spec.volumes[{_position(entries, volume)}].{kind}")
        translated = translate_inline(kind, source, vname, namespace, f"{where}: volume {vname}")
        return PersistentVolumeFacts(
            name=f"{translated.driver}-{translated.handle}", access_modes=translated.access_modes, source=kind,
            csi_driver=translated.driver, volume_handle=translated.handle, inline=True)


def _volume_name(where: str, entries: list, volume: dict) -> str:
    """The name of a pod volume; the API server requires one (ValidateVolumes: `name: Required value`)."""
    name = volume.get("name")
    path = f"spec.volumes[{_position(entries, volume)}].name"
    if name is None or name == "":
        raise InvalidManifest(f"{where}: {path} is missing (every pod volume has a name)")
    return _string(name, where, path)


_NO_FIELDS: dict = {}  # an absent object field, read only
_NOT_A_NAME = object()  # the name of a mount that is not an object: never a valid name


def _volume_claim(pod: dict, entries: list, volume: dict) -> tuple[str, dict | None, str]:
    """The claim behind a persistentVolumeClaim or ephemeral pod volume ("" when the claim name is missing),
    with an ephemeral volume's claim template spec and its path in the pod, for messages."""
    if "persistentVolumeClaim" in volume:
        reference = volume["persistentVolumeClaim"]
        claim = reference.get("claimName") if isinstance(reference, dict) else None
        if isinstance(claim, str):
            return claim, None, ""
        where = _pod_where(pod)
        path = f"spec.volumes[{_position(entries, volume)}].persistentVolumeClaim"
        _string(_object(reference, where, path).get("claimName"), where, f"{path}.claimName")
        return "", None, ""  # missing: the caller decides whether that matters
    where = _pod_where(pod)
    path = f"spec.volumes[{_position(entries, volume)}]"
    name = volume.get("name")
    if name is not None and not isinstance(name, str):
        raise shape_error(where, f"{path}.name", "a string", name)
    ephemeral = _object(volume["ephemeral"], where, f"{path}.ephemeral")
    template = _object(ephemeral.get("volumeClaimTemplate"), where, f"{path}.ephemeral.volumeClaimTemplate")
    template_path = f"{path}.ephemeral.volumeClaimTemplate.spec"
    return f"{pod['metadata'].get('name')}-{name}", _object(template.get("spec"), where, template_path), template_path


def _container_field(ref: str, key: str, containers: list, container: dict, field: str, kind: type, default):
    """A container field that is absent (its default) or of a type the fast check did not expect; raises for a
    wrong one."""
    value = container.get(field)
    if value is None:
        return default
    if isinstance(value, kind):
        return value
    expected = {str: "a string", dict: "an object", list: "a list"}[kind]
    raise _container_error(ref, key, containers, container, f".{field}", expected, value)


def _container_error(ref: str, key: str, containers: list, container, field: str, expected: str,
                     value) -> InvalidManifest:
    return shape_error(f"Pod {ref}", f"spec.{key}[{_position(containers, container)}]{field}", expected, value)


def _mount_error(ref: str, key: str, containers: list, container: dict, field: str, mount) -> InvalidManifest:
    """The shape error of a volumeMounts or volumeDevices entry: not an object, a name or readOnly of the wrong type."""
    items = container[field]
    path = f"spec.{key}[{_position(containers, container)}].{field}[{_position(items, mount)}]"
    where = f"Pod {ref}"
    if not isinstance(mount, dict):
        return shape_error(where, path, "an object", mount)
    name = mount.get("name")
    if name is not None and not isinstance(name, str):
        return shape_error(where, f"{path}.name", "a string", name)
    return shape_error(where, f"{path}.readOnly", "a boolean", mount.get("readOnly"))
