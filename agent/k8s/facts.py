"""What kubelet knows about a pod and its volumes, as frozen values: read from the API objects by
agent/k8s/resolve.py, judged by agent/kubelet.

With slots (no __dict__ per value): the audit holds these for every PV of a dump and every pod that shares a
volume (bench/audit.py, 100,000 pods).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.k8s.plugins import unique_volume_name
from agent.k8s.selinux_options import SELinuxOptions


@dataclass(frozen=True, slots=True)
class ContainerUse:
    """One container's use of a volume, with the container's effective seLinuxOptions."""

    container: str
    kind: str  # "initContainer", "container" or "ephemeralContainer"
    options: SELinuxOptions | None
    device: bool = False  # volumeDevices (raw block) instead of volumeMounts
    privileged: bool = False
    read_only: bool = False


@dataclass(frozen=True, slots=True)
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
    # The cluster-wide key, as GetUniqueVolumeNameFromSpec builds it: for CSI `kubernetes.io/csi/<driver>^<handle>`,
    # so two PVs of one backend volume are one volume; "" for a PV still to be provisioned. Built once: every
    # pod that claims the PV carries this one string.
    unique_name: str = field(init=False, default="")

    def __post_init__(self):
        if not self.predicted_from:
            object.__setattr__(self, "unique_name", unique_volume_name(
                self.name, self.source, self.csi_driver, self.volume_handle))


@dataclass(frozen=True, slots=True)
class CSIDriverFacts:
    name: str
    se_linux_mount: bool | None  # None: field unset, or the object is missing
    present: bool = True


@dataclass(frozen=True, slots=True)
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
    def mounts(self) -> list[ContainerUse]:
        """The uses that mount the volume as a filesystem: only those carry a label (volumeDevices do not)."""
        return [use for use in self.uses if not use.device]

    @property
    def unique_name(self) -> str:
        """The cluster-wide key of a persistent volume, or of an inline volume CSI migration translates (its
        handle, as a PV of the same disk has it); "" for other inline volumes, which the controller never shares."""
        return self.pv.unique_name if self.pv else ""


@dataclass(frozen=True, slots=True)
class OwnerRef:
    kind: str
    name: str
    controller: bool = False  # ownerReferences[].controller: the one owner that manages the object


@dataclass(frozen=True, slots=True)
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
    ref: str = field(init=False, compare=False, repr=False)  # namespace/name, what reports key pods by

    def __post_init__(self):
        object.__setattr__(self, "ref", f"{self.namespace}/{self.name}")
