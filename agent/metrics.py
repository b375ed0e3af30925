"""Metric objects, named as upstream names them so existing dashboards and alerts keep working.

The data model never knows how it is exposed: collectors here read values; serving /metrics is elsewhere.
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agent.kubelet.conflicts import Conflict

# No `<counter>_created` / `<histogram>_created` series: they double the series count of every counter and
# histogram and no alert or dashboard reads them. The switch is process-wide, read at each scrape.
disable_created_metrics()

# --- the conflict watch (`controller`) -------------------------------------------------------------------

# kube-controller-manager's selinux-warning-controller (pkg/controller/volume/selinuxwarning/metrics.go).
VOLUME_CONFLICT = "selinux_warning_controller_selinux_volume_conflict"
VOLUME_CONFLICT_HELP = "Conflict between two Pods using the same volume"
VOLUME_CONFLICT_LABELS = ("property", "pod1_namespace", "pod1_name", "pod1_value", "pod2_namespace", "pod2_name",
                          "pod2_value")


class VolumeConflictCollector:
    """A constant gauge of 1 per distinct conflict series, rebuilt from the current conflicts at every scrape,
    as the upstream controller's custom collector does. With `censor`, a pair across namespaces hides the other
    pod, as upstream's events do (upstream's metric does not)."""

    def __init__(self, conflicts: Callable[[], Iterable[Conflict]], censor: bool = False):
        self.conflicts, self.censor = conflicts, censor

    def describe(self):
        return [GaugeMetricFamily(VOLUME_CONFLICT, VOLUME_CONFLICT_HELP, labels=VOLUME_CONFLICT_LABELS)]

    def collect(self):
        family = self.describe()[0]
        seen = set()
        for conflict in self.conflicts():
            data = conflict.to_json(self.censor)
            values = (data["property"], data["pod1"]["namespace"], data["pod1"]["name"], data["pod1"]["value"],
                      data["pod2"]["namespace"], data["pod2"]["name"], data["pod2"]["value"])
            if values not in seen:
                seen.add(values)
                family.add_metric(values, 1.0)
        yield family


# --- the node agent (`run`) ----------------------------------------------------------------------------

# kubelet's volume manager gauges (pkg/kubelet/volumemanager/cache/desired_state_of_world_selinux_metrics.go), by
# name and labels: gauges that only go up, despite the _total suffix, so dashboards built on kubelet's read ours.
KUBELET_GAUGES = {
    "volume_manager_selinux_container_errors_total": (
        "Containers whose SELinux label could not be computed, where that blocks the pod (counted per attempt).",
        ("access_mode",)),
    "volume_manager_selinux_container_warnings_total": (
        "Containers whose SELinux label could not be computed, where that is only reported.", ("access_mode",)),
    "volume_manager_selinux_pod_context_mismatch_errors_total": (
        "Pods whose containers mount one volume with different SELinux labels, where that blocks the pod "
        "(counted per attempt).", ("access_mode",)),
    "volume_manager_selinux_pod_context_mismatch_warnings_total": (
        "Pods whose containers mount one volume with different SELinux labels, where that is only reported.",
        ("access_mode",)),
    "volume_manager_selinux_volume_context_mismatch_errors_total": (
        "Volumes requested with an SELinux context other than the one they are mounted with, where the request "
        "is refused (counted per attempt).", ("volume_plugin", "access_mode")),
    "volume_manager_selinux_volume_context_mismatch_warnings_total": (
        "Volumes requested with an SELinux context other than the one they are mounted with, where that is only "
        "reported.", ("volume_plugin", "access_mode")),
    "volume_manager_selinux_volumes_admitted_total": (
        "Volumes accepted for a mount with the -o context option.", ("volume_plugin", "access_mode")),
}

CSI_METHODS = (
    "GetPluginInfo", "GetPluginCapabilities", "Probe", "CreateVolume", "DeleteVolume", "ControllerPublishVolume",
    "ControllerUnpublishVolume", "ValidateVolumeCapabilities", "ListVolumes", "GetCapacity",
    "ControllerGetCapabilities", "CreateSnapshot", "DeleteSnapshot", "ListSnapshots", "ControllerExpandVolume",
    "ControllerGetVolume", "ControllerModifyVolume", "NodeStageVolume", "NodeUnstageVolume", "NodePublishVolume",
    "NodeUnpublishVolume", "NodeGetVolumeStats", "NodeExpandVolume", "NodeGetCapabilities", "NodeGetInfo",
)
DECISIONS = ("mount", "recursive", "skip")
RELABEL_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class NodeMetrics:
    """Every metric of the node agent, on one registry. Label values come from closed sets (CSI methods, gRPC
    codes, decisions, access modes, driver names), so cardinality stays bounded."""

    def __init__(self, registry):
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        self.kubelet = {name: Gauge(name, text, labels, registry=registry)
                        for name, (text, labels) in KUBELET_GAUGES.items()}
        self.decisions = Counter("selinux_mount_agent_decisions", "Volumes decided, by outcome: a context mount, a "
                                 "recursive relabel, or nothing.", ("decision",), registry=registry)
        self.verifications = Counter("selinux_mount_agent_context_mount_verifications",
                                     "Context mounts checked against /proc/self/mountinfo, by result.", ("result",),
                                     registry=registry)
        self.relabel_seconds = Histogram("selinux_mount_agent_relabel_duration_seconds",
                                         "Time to relabel one volume recursively.", buckets=RELABEL_BUCKETS,
                                         registry=registry)
        self.relabel_entries = Counter("selinux_mount_agent_relabel_entries",
                                       "Files and directories visited by relabels, by result.", ("result",),
                                       registry=registry)
        self.fs_group_passes = Counter("selinux_mount_agent_fs_group_passes",
                                       "fsGroup ownership passes, by whether they shared the walk with a relabel.",
                                       ("combined",), registry=registry)
        self.csi_seconds = Histogram("selinux_mount_agent_csi_request_duration_seconds",
                                     "CSI request latency by method and gRPC status code.", ("method", "code"),
                                     buckets=LATENCY_BUCKETS, registry=registry)
        self.selinux_enabled = Gauge("selinux_mount_agent_selinux_enabled",
                                     "1 when SELinux is enabled on this node.", registry=registry)
        for decision in DECISIONS:
            self.decisions.labels(decision)
        for result in ("ok", "failed"):
            self.verifications.labels(result)
        for result in ("changed", "already_correct"):
            self.relabel_entries.labels(result)

    def observe_csi(self, method: str, code: str, seconds: float) -> None:
        self.csi_seconds.labels(method if method in CSI_METHODS else "other", code).observe(seconds)

    def decided(self, decision: str) -> None:
        self.decisions.labels(decision if decision in DECISIONS else "skip").inc()

    def verified(self, status: str) -> None:
        """A context mount checked against mountinfo: `applied` is ok; `dropped` and `mismatch` failed."""
        if status == "applied":
            self.verifications.labels("ok").inc()
        elif status in ("dropped", "mismatch"):
            self.verifications.labels("failed").inc()

    def relabelled(self, stats, seconds: float, fs_group: bool) -> None:
        self.relabel_seconds.observe(seconds)
        self.relabel_entries.labels("changed").inc(getattr(stats, "changed", 0))
        self.relabel_entries.labels("already_correct").inc(getattr(stats, "already_correct", 0))
        if fs_group:
            self.fs_group_passes.labels("true").inc()

    def fs_group_pass(self) -> None:
        self.fs_group_passes.labels("false").inc()

    def context_mount(self, admitted: bool, volume_plugin: str, access_mode: str) -> None:
        """kubelet's view of one volume: admitted with a context, or refused for another context."""
        name = ("volume_manager_selinux_volumes_admitted_total" if admitted else
                "volume_manager_selinux_volume_context_mismatch_errors_total")
        self.kubelet[name].labels(volume_plugin, access_mode).inc()


# --- AVC denials ------------------------------------------------------------------------------------------

# Names follow Prometheus conventions. Label values hold SELinux *types* only: MCS categories are never a
# label (each pod has its own pair, so they would make one series per pod and per volume; SPO's
# `selinux_profile_audit_total` carries full contexts and has exactly that problem). agent/avc/counting.py
# keeps the number of denial series bounded and updates these objects.
AVC_DENIALS = "selinux_avc_denials"
AVC_DENIALS_HELP = "SELinux AVC denials, one per denied permission, by pod and types"
AVC_DENIAL_LABELS = ("namespace", "pod", "container", "source_type", "target_type", "tclass", "permission",
                     "permissive")
AVC_DENIAL_OVERFLOW = "selinux_avc_denial_series_overflow"
AVC_DENIAL_OVERFLOW_HELP = ("Denials counted in the 'other' series because selinux_avc_denials_total reached its "
                            "series limit")


class DenialCollector:
    """`selinux_avc_denials_total` and its overflow counter, over counts kept in `counts` (label values →
    a one-element list, so an updater that holds the list adds to it directly) and `overflow`."""

    name = AVC_DENIALS
    documentation = AVC_DENIALS_HELP

    def __init__(self):
        self.counts: dict[tuple, list[int]] = {}
        self.overflow = 0

    def describe(self):
        return [CounterMetricFamily(AVC_DENIALS, AVC_DENIALS_HELP, labels=AVC_DENIAL_LABELS),
                CounterMetricFamily(AVC_DENIAL_OVERFLOW, AVC_DENIAL_OVERFLOW_HELP)]

    def collect(self):
        family = CounterMetricFamily(AVC_DENIALS, AVC_DENIALS_HELP, labels=AVC_DENIAL_LABELS)
        # list() copies under the GIL, so a watcher thread may go on counting during a scrape.
        for key, cell in sorted(list(self.counts.items())):
            family.add_metric(key, cell[0])
        yield family
        yield CounterMetricFamily(AVC_DENIAL_OVERFLOW, AVC_DENIAL_OVERFLOW_HELP, value=self.overflow)


class AvcMetrics:
    """The AVC watcher's metric objects. Nothing is registered until an instance is built with a registry."""

    def __init__(self, registry: CollectorRegistry):
        self.denials = DenialCollector()
        registry.register(self.denials)
        self.records = Counter(
            "selinux_avc_records", "Audit records read, by record type", ("type",), registry=registry)
        self.unattributed = Counter(
            "selinux_avc_unattributed", "Denials that could not be tied to a pod, by reason", ("reason",),
            registry=registry)
        self.parse_errors = Counter(
            "selinux_avc_parse_errors", "Lines or records that could not be read as audit records",
            registry=registry)
        self.netlink_drops = Counter(
            "selinux_audit_netlink_enobufs", "Times the audit netlink socket overflowed (ENOBUFS); "
            "records were lost", registry=registry)
