"""KEP-1710 decision: for each pod volume, a `context=` mount, a recursive relabel, or nothing.

Pure code. It mirrors kubelet's chain (reference §1.2): `GetPodVolumeNames` collects each container's
effective seLinuxOptions, `GetMountSELinuxLabel` turns them into one file label and clears it for
`seLinuxChangePolicy: Recursive` or a plugin without context-mount support, `VolumeSupportsSELinuxMount`
clears it for access modes the gates do not cover, and what is left is mounted with `context=`. Everything
else is relabelled by the container runtime, except volumes whose plugin never asks for a relabel.

One deliberate difference: kubelet 1.36 does not check that the pod set a level and would mount with a level
go-selinux invented in kubelet's memory, which the runtime will not use. Here a label without the pod's own
level is never mounted (KEP, docs and blog all require `seLinuxOptions.level`).
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from agent.k8s.facts import PodFacts, VolumeFacts
from agent.k8s.plugins import CONTEXT_MOUNT_IN_TREE, EMPTYDIR_FAMILY, NEVER_RELABELLED
from agent.kubelet.container_defaults import ContainerDefaults, file_labels
from agent.kubelet.gates import FeatureGates
from agent.label import Label


class MountMode(enum.Enum):
    CONTEXT = "mount"
    RECURSIVE = "recursive"
    SKIP = "skip"


@dataclass(frozen=True)
class Decision:
    volume: str
    mode: MountMode
    label: Label | None
    reasons: tuple[str, ...]
    error: str | None = None  # set when kubelet would not start the pod because of this volume

    def to_json(self) -> dict:
        return {"name": self.volume, "decision": self.mode.value,
                "label": self.label.text if self.label else None,
                "reasons": list(self.reasons), "error": self.error}


@dataclass(frozen=True)
class PodDecision:
    namespace: str
    name: str
    volumes: tuple[Decision, ...]

    def to_json(self) -> dict:
        return {"namespace": self.namespace, "name": self.name,
                "volumes": [decision.to_json() for decision in self.volumes]}


@dataclass(frozen=True)
class NodeFacts:
    """The node-side inputs: gates of its kubelet, whether SELinux is on, and its container defaults."""

    gates: FeatureGates
    selinux_enabled: bool
    defaults: ContainerDefaults


def plugin_supports_context_mount(volume: VolumeFacts) -> tuple[bool, str]:
    """`SupportsSELinuxContextMount` of the plugin handling the volume, with the reason."""
    return _plugin_support(volume.csi, volume.in_tree or volume.source)


@functools.lru_cache(maxsize=1024)
def _plugin_support(driver, kind: str) -> tuple[bool, str]:
    if driver is not None:
        if not driver.present:
            return False, (f"CSIDriver {driver.name} is not in the input: kubelet treats a missing CSIDriver "
                           "as seLinuxMount: false")
        if driver.se_linux_mount:
            return True, f"CSIDriver {driver.name} has seLinuxMount: true"
        state = "false" if driver.se_linux_mount is False else "unset (false)"
        return False, f"CSIDriver {driver.name} has seLinuxMount {state}"
    if kind in CONTEXT_MOUNT_IN_TREE:
        return True, f"the in-tree {kind} plugin supports context mounts"
    if kind in EMPTYDIR_FAMILY:
        return False, f"{kind} volumes are never context-mounted (they are built on emptyDir)"
    return False, f"the {kind} volume plugin does not support context mounts"


def access_mode_supported(volume: VolumeFacts, gates: FeatureGates) -> tuple[bool, str]:
    """kubelet's `VolumeSupportsSELinuxMount`: may this volume's access modes get `context=` at all?"""
    return _access_mode_support(gates, None if volume.pv is None else volume.pv.access_modes)


@functools.lru_cache(maxsize=1024)
def _access_mode_support(gates: FeatureGates, access_modes: tuple[str, ...] | None) -> tuple[bool, str]:
    if not gates.rwop:
        return False, "the SELinuxMountReadWriteOncePod feature gate is off"
    if access_modes is None:
        return False, "only persistent volumes can be context-mounted; inline volumes never are"
    if gates.mount_effective:
        return True, "SELinuxMount is on: every access mode is eligible"
    if access_modes == ("ReadWriteOncePod",):
        return True, "the volume's only access mode is ReadWriteOncePod"
    return False, (f"SELinuxMount is off, so only volumes whose single access mode is ReadWriteOncePod are "
                   f"eligible (access modes {','.join(access_modes) or '(none)'})")


def decide_volume(pod: PodFacts, volume: VolumeFacts, node: NodeFacts) -> Decision:
    gates = node.gates
    reasons: list[str] = []

    def decision(mode: MountMode, label: Label | None = None, error: str | None = None) -> Decision:
        return Decision(volume.name, mode, label, tuple(reasons), error)

    if not node.selinux_enabled:
        reasons.append("SELinux is disabled on the node: kubelet passes no context= and the runtime relabels "
                       "nothing")
        return decision(MountMode.SKIP)
    if pod.os_name == "windows":
        reasons.append("Windows pod: SELinux does not apply")
        return decision(MountMode.SKIP)

    mounts = volume.mounts
    if not mounts:
        if volume.uses:
            reasons.append("used only as a raw block device (volumeDevices): no SELinux label is collected "
                           "or applied")
        else:
            reasons.append("no container mounts this volume")
        return decision(MountMode.SKIP)
    if volume.pv is not None and volume.pv.volume_mode == "Block":
        reasons.append("the PersistentVolume has volumeMode Block: it is a device, not a filesystem")
        return decision(MountMode.SKIP)
    if volume.pv is not None and volume.pv.inline:
        # kubelet's desired_state_of_world_populator translates the inline source (CSI migration) before
        # AddPodToVolume, so VolumeSupportsSELinuxMount sees a spec with a PersistentVolume and its access modes.
        reasons.append(f"the inline {volume.source} volume is handed to CSI driver {volume.pv.csi_driver} by CSI "
                       f"migration, which gives it a PersistentVolume with access modes "
                       f"{','.join(volume.pv.access_modes)}: kubelet judges it like one")
    if volume.pv is not None and volume.pv.predicted_from:
        reasons.append(f"the claim is not bound yet: the volume is predicted from StorageClass "
                       f"{volume.pv.predicted_from}")

    labels = file_labels(mounts, node.defaults)

    supported, mode_reason = access_mode_supported(volume, gates)

    if gates.rwop and len(labels) > 1:
        message = "multiple SELinux labels found: " + ",".join(sorted(labels))
        if None not in labels.values() and len({lbl.canonical for lbl in labels.values()}) == 1:
            # kubelet compares the strings; the kernel would store one context for all of them.
            reasons.append("these labels differ only in spelling: the kernel treats them as one, but kubelet "
                           "compares the text; spell the level the same way in every container")
        if supported:
            reasons.append(message)
            reasons.append("kubelet refuses to start the pod until every container that mounts the volume "
                           "uses the same label")
            return decision(MountMode.SKIP, error=message)
        reasons.append(f"{message} (kubelet only warns, because {mode_reason})")
        reasons.append("the container runtime relabels the volume for each container in turn; the last "
                       "label wins")
        return decision(MountMode.RECURSIVE)

    label = next(iter(labels.values()), None)
    if label is None:
        if labels:
            reasons.append("seLinuxOptions are set but empty: kubelet computes no label")
        else:
            reasons.append("no seLinuxOptions in the pod or in the containers that mount the volume")
    elif label.level is None:
        reasons.append("seLinuxOptions.level is not set: the runtime picks a random MCS level, so a context "
                       "mount cannot match it")

    policy = pod.change_policy
    if policy and not gates.change_policy:
        reasons.append(f"seLinuxChangePolicy {policy} is ignored: the SELinuxChangePolicy feature gate is off")
        policy = None

    plugin_ok, plugin_reason = plugin_supports_context_mount(volume)

    mountable = gates.rwop and label is not None and label.level is not None
    if mountable and policy == "Recursive":
        reasons.append("the pod sets seLinuxChangePolicy: Recursive")
        mountable = False
    if mountable and not plugin_ok:
        reasons.append(plugin_reason)
        mountable = False
    if mountable and not supported:
        reasons.append(mode_reason)
        mountable = False
    if not gates.rwop:
        reasons.append(mode_reason)

    if mountable:
        reasons.append(plugin_reason)
        reasons.append(mode_reason)
        if policy == "MountOption":
            reasons.append("the pod sets seLinuxChangePolicy: MountOption")
        privileged = sorted({use.container for use in mounts if use.privileged})
        if privileged:
            reasons.append(f"privileged container(s) {', '.join(privileged)} run as spc_t and ignore "
                           "seLinuxOptions; kubelet still mounts with the pod's label")
        reasons.append("kubelet passes context= to the driver on NodeStage and NodePublish and tells the "
                       "runtime not to relabel")
        return decision(MountMode.CONTEXT, label)

    kind = volume.in_tree or volume.source
    if volume.csi is None and kind in NEVER_RELABELLED:
        reasons.append(f"{kind} volumes are never relabelled by kubelet or the runtime")
        return decision(MountMode.SKIP)
    if volume.pv is not None or volume.csi is not None:
        reasons.append("the container runtime relabels the volume recursively, if its filesystem supports "
                       "labels (seclabel)")
    else:
        reasons.append("the container runtime relabels the volume recursively")
    return decision(MountMode.RECURSIVE, label if label is not None and label.level is not None else None)


def decide_pod(pod: PodFacts, node: NodeFacts) -> PodDecision:
    return PodDecision(pod.namespace, pod.name, tuple(decide_volume(pod, volume, node) for volume in pod.volumes))
