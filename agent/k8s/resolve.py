"""Pod resolution: each pod volume followed through its claim, PV or inline source to the facts kubelet looks at.

Pure code: takes the parsed API objects (dicts), returns frozen values (agent/k8s/facts.py). A reference that does
not resolve (a PVC or PV missing from the input) is a `VolumeNotResolved` naming the object, never a guess.

One path follows a pod volume (`_follow`), and one claim resolver (`claim_volume`) follows a claim to its PV; the
audit's first pass (`survey`), full and partial resolution (`resolve_pod`) and the storage objects a live model
watches for a pod (`storage_keys`) all go through them.

Every field is read once and checked as it is read, by agent/k8s/objects.py. On the paths every pod, volume,
container and claim of a dump takes (`survey`, `_follow`, `_container_uses`, `claim_volume`, `_pv_facts`), the
usual type is tested inline and the reader called only for an absent or malformed value, its message built then:
calling the reader for every field costs 7% of the audit's analysis (bench/audit.py's dump of 20,000 pods,
in process: 0.61 s against 0.57 s).
"""

from __future__ import annotations

from collections.abc import Callable

from agent.errors import InvalidManifest, VolumeNotResolved
from agent.k8s.facts import ContainerUse, CSIDriverFacts, PersistentVolumeFacts, PodFacts, VolumeFacts
from agent.k8s.index import ObjectIndex
from agent.k8s.migration import MIGRATED_TO_CSI, gce_access_modes, translate_inline, translate_pv
from agent.k8s.objects import (boolean_field, list_field, object_field, owner_references, pod_phase, shape_error,
                               string_field, strings_field)
from agent.k8s.plugins import MIGRATED_PROVISIONERS, POD_VOLUME_KINDS, PV_SOURCE_KINDS, source_kind
from agent.k8s.selinux_options import SELinuxOptions

# (ContainerUse.kind, the pod spec field, its path in messages)
_CONTAINER_LISTS = (("initContainer", "initContainers", "spec.initContainers"),
                    ("container", "containers", "spec.containers"),
                    ("ephemeralContainer", "ephemeralContainers", "spec.ephemeralContainers"))


class Cluster(ObjectIndex):
    """The index of the objects given, and the resolution of each pod's volumes against it."""

    def __init__(self, objects: list[dict]):
        # Resolved values, shared by every pod that uses the same PV or driver.
        self._pv_cache: dict[str, PersistentVolumeFacts] = {}
        # One copy of each driver name, access mode list and volume mode the PVs' facts hold: the audit keeps the
        # facts of every PV of a dump while it reads the pods, and decoding gives each PV its own copies (with the
        # kind names of plugins.py and a handle that repeats the PV's name, 27 MB of peak RSS at 100k pods).
        self._shared: dict = {}
        self._driver_cache: dict[str, CSIDriverFacts] = {}
        # seLinuxOptions by their four raw fields, parsed and validated once: most pods spell theirs like their
        # neighbours. Derived from the pod alone, so storage changes never invalidate it.
        self._options_cache: dict[tuple, SELinuxOptions] = {}
        super().__init__(objects)

    def storage_changed(self) -> None:
        """Forget resolved PVs and drivers: a live model calls this after replacing or removing a PVC, PV,
        CSIDriver or StorageClass in the index."""
        self._pv_cache.clear()
        self._driver_cache.clear()
        self._shared.clear()

    # --- pods -------------------------------------------------------------------------------------------------

    def resolve_pod(self, pod: dict, partial: bool = False,
                    select: Callable[[list[tuple[str, str]]], set[str]] | None = None) -> PodFacts:
        """The pod's facts. With `partial`, a volume that cannot be followed (VolumeNotResolved) is left out and
        named in `unresolved`, as upstream's controller goes on with the pod's other volumes (syncPod: `continue`
        after CreateVolumeSpec fails); without it, it is an error (explain answers for each volume of one pod).
        `select`, given (volume name, unique name) of each volume the pod claims, names the volumes the facts
        keep: every volume is checked just the same, and the audit keeps the facts of only those it judges."""
        meta = object_field(pod.get("metadata"), "Pod", "metadata")
        namespace = meta.get("namespace") or "default"
        name = meta.get("name")
        where = f"Pod {namespace}/{name}"
        spec = object_field(pod.get("spec"), where, "spec")
        security = object_field(spec.get("securityContext"), where, "spec.securityContext")
        pod_options = self._selinux_options(security.get("seLinuxOptions"), where, None)
        change_policy = security.get("seLinuxChangePolicy")
        if change_policy not in (None, "Recursive", "MountOption"):
            raise InvalidManifest(
                f"{where}: spec.securityContext.seLinuxChangePolicy {change_policy!r} is not Recursive or "
                "MountOption")
        followed, unresolved = [], []
        for index, volume in enumerate(list_field(spec.get("volumes"), where, "spec.volumes")):
            try:
                followed.append(self._follow(volume, index, namespace, name, where))
            except VolumeNotResolved as err:
                if not partial:
                    raise
                unresolved.append(str(err))
        only = None if select is None else select(
            [(vname, pv.unique_name) for vname, _, pv, _, _, _ in followed if pv is not None and pv.unique_name])
        uses = self._container_uses(spec, pod_options, where, only)
        volumes = [VolumeFacts(vname, source, tuple(uses.get(vname, ())), pv, claim, csi, in_tree)
                   for vname, source, pv, claim, csi, in_tree in followed if only is None or vname in only]
        os_name = string_field(object_field(spec.get("os"), where, "spec.os").get("name"), where, "spec.os.name")
        return PodFacts(
            namespace=namespace, name=name, uid=string_field(meta.get("uid"), where, "metadata.uid"),
            phase=pod_phase(pod, where), node_name=string_field(spec.get("nodeName"), where, "spec.nodeName"),
            change_policy=change_policy, os_name=os_name, volumes=tuple(volumes),
            owners=owner_references(meta.get("ownerReferences"), where), pod_options=pod_options,
            labels=dict(object_field(meta.get("labels"), where, "metadata.labels")), unresolved=tuple(unresolved),
        )

    def survey(self, pod: dict) -> tuple[list[tuple[str, str]], int, list[str]]:
        """What the audit's first pass reads of every pod: (volume name, unique name) of each volume it claims
        (with the inline volumes CSI migration keys like PVs; unbound claims have no key yet), how many containers
        it has, and why any of its volumes cannot be followed (a claim, PV or StorageClass missing from the
        input)."""
        meta = pod.get("metadata")
        if type(meta) is not dict:
            meta = object_field(meta, "Pod", "metadata")
        namespace = meta.get("namespace") or "default"
        name = meta.get("name")
        where = f"Pod {namespace}/{name}"
        spec = pod.get("spec")
        if type(spec) is not dict:
            spec = object_field(spec, where, "spec")
        containers = 0
        for _, key, path in _CONTAINER_LISTS:
            items = spec.get(key)
            if items is not None:
                containers += len(items if type(items) is list else list_field(items, where, path))
        volumes = spec.get("volumes")
        if type(volumes) is not list:
            volumes = list_field(volumes, where, "spec.volumes")
        claimed, unresolved = [], []
        for index, volume in enumerate(volumes):
            try:
                vname, _, pv, _, _, _ = self._follow(volume, index, namespace, name, where)
            except VolumeNotResolved as err:
                unresolved.append(str(err))  # reported with the pod; its other volumes still count
                continue
            if pv is not None and pv.unique_name:
                claimed.append((vname, pv.unique_name))
        return claimed, containers, unresolved

    def storage_keys(self, pod: dict) -> set[tuple]:
        """The storage objects resolving the pod reads, as (kind, key): ("PersistentVolumeClaim", (namespace,
        name)), ("PersistentVolume", name), ("CSIDriver", name), also those missing from the index. A live model
        re-evaluates a pod when one of them changes. Reads what it can of a malformed pod, without raising:
        such a pod waits for a change of its own."""
        reads: set[tuple] = set()
        meta, spec = pod.get("metadata"), pod.get("spec")
        volumes = spec.get("volumes") if isinstance(spec, dict) else None
        if not isinstance(meta, dict) or not isinstance(volumes, list):
            return reads
        namespace, name = meta.get("namespace") or "default", meta.get("name")
        for index, volume in enumerate(volumes):
            try:
                self._follow(volume, index, namespace, name, f"Pod {namespace}/{name}", reads)
            except InvalidManifest:
                continue  # what it read so far is recorded; nothing else can make this volume resolve
        return reads

    def _container_uses(self, spec: dict, pod_options: SELinuxOptions | None, where: str,
                        only: set | None) -> dict[str, list[ContainerUse]]:
        """Each container's mounts and devices by volume name (those named in `only`, when given), with the
        container's effective options. Every container's options are checked."""
        uses: dict[str, list[ContainerUse]] = {}
        for kind, key, path in _CONTAINER_LISTS:
            for index, container in enumerate(list_field(spec.get(key), where, path)):
                if type(container) is not dict:
                    raise shape_error(where, f"{path}[{index}]", "an object", container)
                cname, security = container.get("name"), container.get("securityContext")
                if type(cname) is not str:
                    cname = string_field(cname, where, f"{path}[{index}].name", "<unnamed>")
                if type(security) is not dict:
                    security = object_field(security, where, f"{path}[{index}].securityContext")
                own, privileged = security.get("seLinuxOptions"), security.get("privileged")
                # A container's seLinuxOptions replace the pod's as a whole (DetermineEffectiveSecurityContext).
                effective = pod_options if own is None else self._selinux_options(own, where, cname)
                if privileged is not True and privileged is not False:
                    privileged = boolean_field(privileged, where, f"{path}[{index}].securityContext.privileged")
                for field, device in (("volumeMounts", False), ("volumeDevices", True)):
                    entries = container.get(field)
                    if type(entries) is not list:
                        entries = list_field(entries, where, f"{path}[{index}].{field}")
                    for item, entry in enumerate(entries):
                        volume = entry.get("name") if type(entry) is dict else None
                        read_only = None if device or volume is None else entry.get("readOnly")
                        if type(volume) is not str or (read_only is not None and type(read_only) is not bool):
                            _check_mount(entry, where, f"{path}[{index}].{field}[{item}]", device)
                        if only is None or volume in only:
                            uses.setdefault(volume, []).append(ContainerUse(
                                cname, kind, effective, device=device, privileged=privileged,
                                read_only=read_only is True))
        return uses

    def _selinux_options(self, raw, where: str, container: str | None) -> SELinuxOptions | None:
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
        where = (f"{where} spec.securityContext" if container is None else
                 f"{where} container {container} securityContext")
        options = SELinuxOptions.from_api(raw, where)
        options.validate(where)
        if key is not None:
            self._options_cache[key] = options
        return options

    # --- volumes ----------------------------------------------------------------------------------------------

    def _follow(self, volume, index: int, namespace: str, pod_name, where: str, reads: set | None = None):
        """One pod volume, `spec.volumes[index]`, followed to what serves it: (name, source kind, PV facts, claim
        name, CSIDriver facts, in-tree kind). `reads`, when given, collects the storage objects looked up
        (`storage_keys`)."""
        if type(volume) is not dict:
            raise shape_error(where, f"spec.volumes[{index}]", "an object", volume)
        vname = volume.get("name")
        if type(vname) is not str or not vname:
            if vname is None or vname == "":
                raise InvalidManifest(f"{where}: spec.volumes[{index}].name is missing (every pod volume has a name)")
            raise shape_error(where, f"spec.volumes[{index}].name", "a string", vname)
        source = source_kind(volume, POD_VOLUME_KINDS)
        pv = claim = csi = in_tree = None
        if source == "persistentVolumeClaim":
            reference = volume[source]
            claim = reference.get("claimName") if type(reference) is dict else None
            if type(claim) is not str or not claim:
                path = f"spec.volumes[{index}].persistentVolumeClaim"
                if not string_field(object_field(reference, where, path).get("claimName"), where, f"{path}.claimName"):
                    raise InvalidManifest(f"{where}: volume {vname}: persistentVolumeClaim.claimName is missing")
            pv = self.claim_volume(namespace, where, claim, reads=reads)
        elif source == "ephemeral":
            # Generic ephemeral volumes are PVCs named <pod>-<volume> (KEP-1698), eligible like any PV.
            path = f"spec.volumes[{index}].ephemeral"
            template = object_field(object_field(volume[source], where, path).get("volumeClaimTemplate"), where,
                                    f"{path}.volumeClaimTemplate")
            claim = f"{pod_name}-{vname}"
            pv = self.claim_volume(namespace, where, claim,
                                   object_field(template.get("spec"), where, f"{path}.volumeClaimTemplate.spec"),
                                   f"{path}.volumeClaimTemplate.spec", reads)
        elif source == "csi":
            path = f"spec.volumes[{index}].csi"
            driver = string_field(object_field(volume[source], where, path).get("driver"), where, f"{path}.driver")
            if not driver:
                raise InvalidManifest(f"{where}: volume {vname}: csi.driver is missing")
            csi = self.csi_driver(driver, reads)
        elif source in MIGRATED_TO_CSI:
            # Translated like a PV (TranslateInTreeInlineVolumeToCSI), so kubelet and the controller see a volume
            # spec with a PersistentVolume: keyed by its handle and judged by the translated access modes.
            translated = translate_inline(
                source, object_field(volume[source], where, f"spec.volumes[{index}].{source}"), vname, namespace,
                f"{where}: volume {vname}")
            pv = PersistentVolumeFacts(
                name=f"{translated.driver}-{translated.handle}", access_modes=translated.access_modes,
                source=source, csi_driver=translated.driver, volume_handle=translated.handle, inline=True)
        else:
            in_tree = source
        if pv is not None:
            if pv.csi_driver:
                csi = self.csi_driver(pv.csi_driver, reads)
            else:
                in_tree = pv.source
        return vname, source, pv, claim, csi, in_tree

    def claim_volume(self, namespace: str, pod_where: str, claim: str, template: dict | None = None,
                     template_path: str | None = None, reads: set | None = None) -> PersistentVolumeFacts:
        """The PV behind a pod's claim, predicted from its StorageClass when the claim is unbound. Errors name the
        pod, or the object whose field is malformed. `template` is an ephemeral volume's claim template spec, at
        `template_path` in the pod."""
        if reads is not None:
            reads.add(("PersistentVolumeClaim", (namespace, claim)))
        pvc = self.pvcs.get((namespace, claim))
        if pvc is None:
            if template is not None:
                return self._predicted_pv(pod_where, template, f"the ephemeral claim {namespace}/{claim}",
                                          pod_where, template_path)
            raise VolumeNotResolved(f"{pod_where}: PersistentVolumeClaim {namespace}/{claim} is not in the input")
        spec = pvc.get("spec")
        if type(spec) is not dict:
            spec = object_field(spec, f"PersistentVolumeClaim {namespace}/{claim}", "spec")
        pv_name = spec.get("volumeName")
        if type(pv_name) is not str or not pv_name:
            pvc_where = f"PersistentVolumeClaim {namespace}/{claim}"
            if not string_field(pv_name, pvc_where, "spec.volumeName"):
                return self._predicted_pv(pod_where, spec, pvc_where, pvc_where, "spec")
        if reads is not None:
            reads.add(("PersistentVolume", pv_name))
        found = self._pv_cache.get(pv_name)
        if found is None:
            pv = self.pvs.get(pv_name)
            if pv is None:
                raise VolumeNotResolved(
                    f"{pod_where}: PersistentVolume {pv_name} (bound to PersistentVolumeClaim {namespace}/{claim}) "
                    "is not in the input")
            found = self._pv_cache[pv_name] = _pv_facts(pv, pv_name, self._shared.setdefault)
        return found

    def _predicted_pv(self, where: str, claim_spec: dict, claim_ref: str, claim_where: str,
                      spec_path: str) -> PersistentVolumeFacts:
        """An unbound claim: predict the PV from its StorageClass, the way the provisioner will create it.
        `claim_where` and `spec_path` name the object and field that hold the claim's spec, for shape errors."""
        class_name = string_field(claim_spec.get("storageClassName"), claim_where, f"{spec_path}.storageClassName")
        storage_class = self.storage_classes.get(class_name) if class_name else None
        if storage_class is None:
            raise VolumeNotResolved(
                f"{where}: {claim_ref} is not bound to a PersistentVolume, and its StorageClass "
                f"{class_name or '(none)'} is not in the input to predict one from")
        class_where = f"StorageClass {class_name}"
        provisioner = string_field(storage_class.get("provisioner"), class_where, "provisioner")
        return PersistentVolumeFacts(
            name=f"(to be provisioned by {provisioner})",
            access_modes=strings_field(claim_spec.get("accessModes"), claim_where, f"{spec_path}.accessModes"),
            source="csi", csi_driver=MIGRATED_PROVISIONERS.get(provisioner, provisioner),
            volume_mode=string_field(claim_spec.get("volumeMode"), claim_where, f"{spec_path}.volumeMode")
            or "Filesystem",
            mount_options=strings_field(storage_class.get("mountOptions"), class_where, "mountOptions"),
            predicted_from=class_name,
        )

    def csi_driver(self, name: str, reads: set | None = None) -> CSIDriverFacts:
        if reads is not None:
            reads.add(("CSIDriver", name))
        found = self._driver_cache.get(name)
        if found is None:
            found = self._driver_cache[name] = self._csi_driver_facts(name)
        return found

    def _csi_driver_facts(self, name: str) -> CSIDriverFacts:
        obj = self.csi_drivers.get(name)
        if obj is None:
            return CSIDriverFacts(name, None, present=False)
        value = object_field(obj.get("spec"), f"CSIDriver {name}", "spec").get("seLinuxMount")
        if value is not None and not isinstance(value, bool):
            raise InvalidManifest(f"CSIDriver {name}: spec.seLinuxMount must be true or false")
        return CSIDriverFacts(name, value)


def _check_mount(entry, where: str, path: str, device: bool) -> None:
    """Raises for a volumeMounts or volumeDevices entry that is not an object, or whose name or readOnly has the
    wrong type (a missing name is left to the API server: no volume has that name)."""
    if not isinstance(entry, dict):
        raise shape_error(where, path, "an object", entry)
    string_field(entry.get("name"), where, f"{path}.name", None)
    if not device:
        boolean_field(entry.get("readOnly"), where, f"{path}.readOnly")


def _pv_facts(pv: dict, name: str, share) -> PersistentVolumeFacts:
    """A bound PV's facts: its source, the CSI driver that serves it (through CSI migration for in-tree kinds) and
    the volume handle (translated by CSI migration for in-tree kinds, as upstream keys them). `share` gives the
    one copy kept of an equal value (`dict.setdefault`)."""
    spec = pv.get("spec")
    if type(spec) is not dict:
        spec = object_field(spec, f"PersistentVolume {name}", "spec")
    source = source_kind(spec, PV_SOURCE_KINDS)
    driver, handle = None, ""
    if source == "csi":
        csi = spec["csi"]
        if type(csi) is not dict:
            csi = object_field(csi, f"PersistentVolume {name}", "spec.csi")
        driver, handle = csi.get("driver"), csi.get("volumeHandle")
        if type(driver) is not str or not driver:
            if not string_field(driver, f"PersistentVolume {name}", "spec.csi.driver"):
                raise InvalidManifest(f"PersistentVolume {name}: spec.csi.driver is missing")
        if type(handle) is not str:
            handle = string_field(handle, f"PersistentVolume {name}", "spec.csi.volumeHandle")
    elif source in MIGRATED_TO_CSI:
        translated = translate_pv(source, object_field(spec[source], f"PersistentVolume {name}", f"spec.{source}"),
                                  pv, name)
        driver, handle = translated.driver, translated.handle
    modes, volume_mode, options = spec.get("accessModes"), spec.get("volumeMode"), spec.get("mountOptions")
    modes = strings_field(modes, f"PersistentVolume {name}", "spec.accessModes")
    if source == "gcePersistentDisk":
        modes = gce_access_modes(modes)  # what the translated spec kubelet judges carries
    if type(volume_mode) is not str:
        volume_mode = string_field(volume_mode, f"PersistentVolume {name}", "spec.volumeMode")
    options = () if options is None else strings_field(options, f"PersistentVolume {name}", "spec.mountOptions")
    return PersistentVolumeFacts(
        name=name, access_modes=share(modes, modes), source=source, csi_driver=driver and share(driver, driver),
        volume_mode=share(volume_mode, volume_mode) if volume_mode else "Filesystem", mount_options=options,
        volume_handle=name if handle == name else handle)
