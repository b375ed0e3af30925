"""Conflicts between pods that share a volume: the upstream warning controller's rules and kubelet's.

Pure code. Two views of one volume used by several pods:

- The **controller view** (kube-controller-manager `selinux-warning-controller`, reference §4): labels are the
  pod's raw `user:role:type:level` without node defaults; the change policy is normalised (MountOption by
  default, Recursive when the plugin cannot context-mount or the label is empty); a pair conflicts when the
  policies differ, and, independently, when the labels differ, where an empty user, role or type is
  incomparable and the level is compared strictly (PR #133425). Its output is what the upstream metric and
  events show, so `audit` reproduces it exactly.
- The **kubelet view** (volume manager DSW, reference §2): the full file label built with node defaults, cleared
  for Recursive, compared as a string, and enforced (the second pod waits in ContainerCreating) only when the
  volume's access modes are eligible on that version. This decides whether a pod *will break*.
"""

from __future__ import annotations

from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string

from agent.k8s.facts import PodFacts, VolumeFacts
from agent.kubelet.container_defaults import ContainerDefaults, file_labels
from agent.kubelet.gates import FeatureGates
from agent.kubelet.decision import access_mode_supported, plugin_supports_context_mount

LABEL = "SELinuxLabel"
CHANGE_POLICY = "SELinuxChangePolicy"
EVENT_REASONS = {LABEL: "SELinuxLabelConflict", CHANGE_POLICY: "SELinuxChangePolicyConflict"}


def controller_label(options) -> str:
    """The controller's un-defaulted label: parts joined as given, ':::' becomes '' (ControllerSELinuxTranslator)."""
    if options is None:
        return ""
    joined = f"{options.user}:{options.role}:{options.type}:{options.level}"
    return "" if joined == ":::" else joined


def controller_labels_conflict(a: str, b: str) -> bool:
    """ConflictsParsed: user, role, type conflict only when both are set and differ; level is strict."""
    parts_a = (a.split(":", 3) + ["", "", "", ""])[:4] if a else ["", "", "", ""]
    parts_b = (b.split(":", 3) + ["", "", "", ""])[:4] if b else ["", "", "", ""]
    for index in range(3):
        if parts_a[index] and parts_b[index] and parts_a[index] != parts_b[index]:
            return True
    return parts_a[3] != parts_b[3]


@dataclass(frozen=True, slots=True)
class VolumeUse:
    """One pod's use of one shared volume, as both views see it."""

    volume: str
    pod: PodFacts
    controller_label: str
    controller_policy: str
    kubelet_label: str | None  # None: the plugin cannot context-mount, so kubelet compares nothing
    enforced: bool  # a different label blocks the second pod on this version (VolumeSupportsSELinuxMount)
    single_pod_access: bool  # ReadWriteOncePod: the scheduler never runs two pods with the same claim
    privileged: bool  # a privileged or spc_t container mounts it
    multiple_labels: str | None = None  # the pod's own containers disagree on the kubelet label
    claim: str = ""  # the claim (in the pod's namespace) the pod uses it through
    # The pod's containers give the controller different raw labels: GetMountSELinuxLabel fails with
    # MultipleSELinuxLabelsError and syncPod skips the volume (`continue`), so the use is in no conflict.
    controller_skipped: bool = False


@dataclass(frozen=True, slots=True)
class Conflict:
    """One direction of a conflicting pair, as the controller reports it (both directions are reported)."""

    volume: str
    property: str
    pod: PodFacts
    value: str
    other: PodFacts
    other_value: str

    @property
    def cross_namespace(self) -> bool:
        return self.pod.namespace != self.other.namespace

    def event_message(self) -> str:
        """The controller's event text for `pod` (cache/conflict.go EventMessage), with its quirks."""
        if not self.cross_namespace:
            return (f"{self.property} \"{self.value}\" conflicts with pod {self.other.name} that uses the same "
                    f"volume as this pod with {self.property} \"{self.other_value}\". If both pods land on the "
                    "same node, only one of them may access the volume.")
        # Go's fmt.Sprint puts no space between two string operands: `SELinuxLabel"..."`.
        return (f"{self.property}\"{self.value}\" conflicts with another pod that uses the same volume as this "
                f"pod with a different {self.property}. If both pods land on the same node, only one of them may "
                "access the volume.")

    def to_json(self, censor: bool = False) -> dict:
        hide = censor and self.cross_namespace
        return {
            "volume": self.volume, "property": self.property,
            "pod1": {"namespace": self.pod.namespace, "name": self.pod.name, "value": self.value},
            "pod2": ({"namespace": "", "name": "", "value": ""} if hide else
                     {"namespace": self.other.namespace, "name": self.other.name, "value": self.other_value}),
            "eventReason": EVENT_REASONS[self.property],
            "message": self.event_message(),
        }


def volume_use(pod: PodFacts, volume: VolumeFacts, gates: FeatureGates,
               defaults: ContainerDefaults) -> VolumeUse | None:
    """Both views of a pod's use of a volume; None when the volume does not take part (not mounted, a block
    device, or a plugin the controller does not track)."""
    key = volume.unique_name
    mounts = volume.mounts
    if not key or not mounts or (volume.pv and volume.pv.volume_mode == "Block"):
        return None
    plugin_ok, _ = plugin_supports_context_mount(volume)
    policy_field = pod.change_policy if gates.change_policy else None

    raw = controller_labels(mounts)
    # A label without a level: go-selinux gives this pod a random one, which no other pod shares.
    kubelet = {text if label is None or label.level is not None else f"{text}:<random level of {pod.ref}>": label
               for text, label in file_labels(mounts, defaults).items()}
    multiple = None
    if len(kubelet) > 1:
        multiple = "multiple SELinux labels found: " + ",".join(sorted(kubelet))

    label_text = next(iter(raw)) if len(raw) == 1 and not multiple else ""
    if policy_field == "Recursive" or not plugin_ok:
        label_text = ""
    policy = policy_field or "MountOption"
    if not plugin_ok or not label_text:
        policy = "Recursive"

    kubelet_label = None
    if plugin_ok and gates.rwop:
        kubelet_label = "" if (policy_field == "Recursive" or len(kubelet) != 1) else next(iter(kubelet))
    enforced, _ = access_mode_supported(volume, gates)
    privileged = any(use.privileged or (use.options is not None and use.options.type == "spc_t")
                     for use in mounts)
    single = bool(volume.pv) and volume.pv.access_modes == ("ReadWriteOncePod",)
    return VolumeUse(key, pod, label_text, policy, kubelet_label, enforced, single, privileged, multiple,
                     volume.claim or "", len(raw) > 1)


def controller_labels(mounts) -> set[str]:
    """The raw labels the controller collects for one pod volume: one per container that mounts it with
    effective seLinuxOptions (GetPodVolumeNames skips nil options; empty options add "")."""
    return {controller_label(use.options) for use in mounts if use.options is not None}


def multiple_labels_volumes(pod: PodFacts) -> list[str]:
    """The pod's volumes, of any kind, that its containers mount with different raw labels: upstream's
    controller posts a Warning `MultipleSELinuxLabels` event for each (syncPod, after GetMountSELinuxLabel
    returns MultipleSELinuxLabelsError; the translator is ControllerSELinuxTranslator, so labels are not
    defaulted)."""
    return sorted(volume.name for volume in pod.volumes if len(controller_labels(volume.mounts)) > 1)


MULTIPLE_LABELS_REASON = "MultipleSELinuxLabels"


def multiple_labels_message(volume_name: str) -> str:
    """The Warning event's text (selinux_warning_controller.go syncPod), the volume name quoted as Go's %q."""
    return f"Volume {_json_string(volume_name)} is mounted twice with different SELinux labels inside this pod"


def _groups(uses: list[VolumeUse], key) -> list[list[VolumeUse]]:
    """Uses with equal properties never conflict with each other: compare groups, not every pair."""
    groups: dict = {}
    for use in sorted(uses, key=lambda u: (u.pod.namespace, u.pod.name)):
        groups.setdefault(key(use), []).append(use)
    return list(groups.values())


def controller_conflicts(uses: list[VolumeUse]) -> list[Conflict]:
    """Every conflicting pair on one volume, both directions, in a stable order, as the newest
    cache/volumecache.go AddVolume reports them: the change policies compared as text, and, independently, the
    labels by ControllerSELinuxTranslator.ConflictsParsed. A Recursive pod's label is "" (GetMountSELinuxLabel
    clears it, PR #130472), and since PR #133425 the level is strict, so "" against a MountOption pod with a level
    is a SELinuxLabel conflict on top of the SELinuxChangePolicy one: what 1.36 and 1.37 report. Uses the
    controller skipped (MultipleSELinuxLabels) take no part."""
    out = []
    uses = [use for use in uses if not use.controller_skipped]
    groups = _groups(uses, lambda u: (u.controller_policy, u.controller_label))
    for i, group_a in enumerate(groups):
        for group_b in groups[i + 1:]:
            first_a, first_b = group_a[0], group_b[0]
            policy = first_a.controller_policy != first_b.controller_policy
            label = controller_labels_conflict(first_a.controller_label, first_b.controller_label)
            for a in group_a:
                for b in group_b:
                    if policy:
                        out.append(Conflict(a.volume, CHANGE_POLICY, a.pod, a.controller_policy, b.pod,
                                            b.controller_policy))
                        out.append(Conflict(a.volume, CHANGE_POLICY, b.pod, b.controller_policy, a.pod,
                                            a.controller_policy))
                    if label:
                        out.append(Conflict(a.volume, LABEL, a.pod, a.controller_label, b.pod, b.controller_label))
                        out.append(Conflict(a.volume, LABEL, b.pod, b.controller_label, a.pod, a.controller_label))
    return out


@dataclass(frozen=True, slots=True)
class KubeletClash:
    """A pair kubelet treats as conflicting on one node: different mount labels on a context-mountable plugin."""

    volume: str
    a: VolumeUse
    b: VolumeUse

    @property
    def exclusive(self) -> bool:
        """Both pods use one ReadWriteOncePod claim, so the scheduler never runs them together. RWOP binds per
        claim: two claims bound to PVs of one backend volume do not exclude each other."""
        a, b = self.a, self.b
        return (a.single_pod_access and b.single_pod_access and a.claim == b.claim
                and a.pod.namespace == b.pod.namespace)

    @property
    def breaks(self) -> bool:
        """One of the two waits in ContainerCreating when both land on one node, and they can. Kubelet judges the
        pod that arrives second by the access modes of its own PV (AddPodToVolume calls
        VolumeSupportsSELinuxMount on the incoming pod's spec), and either may arrive second: the pair breaks
        when either use is enforced on this version, unless the two can never run together."""
        return (self.a.enforced or self.b.enforced) and not self.exclusive

    @property
    def same_node(self) -> bool:
        return bool(self.a.pod.node_name) and self.a.pod.node_name == self.b.pod.node_name


def kubelet_clashes(uses: list[VolumeUse]) -> list[KubeletClash]:
    """Pairs with different kubelet mount labels (one entry per unordered pair)."""
    out = []
    groups = _groups([u for u in uses if u.kubelet_label is not None], lambda u: u.kubelet_label)
    for i, group_a in enumerate(groups):
        for group_b in groups[i + 1:]:
            out.extend(KubeletClash(a.volume, a, b) for a in group_a for b in group_b)
    return out
