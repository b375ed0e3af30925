"""Metric objects, named as upstream names them so existing dashboards and alerts keep working.

The data model never knows how it is exposed: collectors here read values; serving /metrics is elsewhere.
"""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily

from agent.conflicts import Conflict

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
