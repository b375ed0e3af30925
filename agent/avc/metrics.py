"""Prometheus metrics for AVC denials, registered on a registry the caller passes in.

Names follow Prometheus conventions. Label values hold SELinux *types* only: MCS categories are never a
label (each pod has its own pair, so they would make one series per pod and per volume; SPO's
`selinux_profile_audit_total` carries full contexts and has exactly that problem). The number of denial
series is bounded: once `max_series` label sets exist, new ones are counted in one series whose labels are
all `other`, so a noisy node cannot grow the registry without limit.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily

from agent.avc.attribution import REASONS

DENIAL_LABELS = ("namespace", "pod", "container", "source_type", "target_type", "tclass", "permission",
                 "permissive")
OTHER = "other"
RECORD_TYPES = ("AVC", "USER_AVC", "SELINUX_ERR", "AVC_PATH", "SYSCALL", "PATH", "CWD", "PROCTITLE", "EOE",
                "MAC_POLICY_LOAD", "MAC_STATUS")


_OVERFLOW = ("selinux_avc_denial_series_overflow", "Denials counted in the 'other' series because "
             "selinux_avc_denials_total reached its series limit")


class DenialCollector:
    """Collector for `selinux_avc_denials_total`, over counts kept by AvcMetrics."""

    name = "selinux_avc_denials"
    documentation = "SELinux AVC denials, one per denied permission, by pod and types"

    def __init__(self):
        self.counts: dict[tuple, int] = {}
        self.overflow = 0

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation, labels=DENIAL_LABELS),
                CounterMetricFamily(*_OVERFLOW)]

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=DENIAL_LABELS)
        # list() copies under the GIL, so a watcher thread may go on counting during a scrape.
        for key, value in sorted(list(self.counts.items())):
            family.add_metric(key, value)
        yield family
        yield CounterMetricFamily(*_OVERFLOW, value=self.overflow)


class AvcMetrics:
    """The AVC metric objects. Nothing is registered until an instance is built with a registry."""

    def __init__(self, registry: CollectorRegistry, max_series: int = 2000):
        self.max_series = max_series
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
        self._overflow_keys: set[tuple] = set()
        self._record_children: dict[str, object] = {}
        self._reason_children = {reason: self.unattributed.labels(reason) for reason in REASONS}

    def count_denial(self, denial, attribution=None) -> None:
        """Count each denied permission of one denial (granted records are not denials)."""
        if not denial.denied:
            return
        if attribution is not None and not attribution.attributed and attribution.reason:
            child = self._reason_children.get(attribution.reason)
            (child or self.unattributed.labels(attribution.reason)).inc()
        namespace = pod = container = ""
        if attribution is not None and attribution.attributed:
            namespace = attribution.namespace or ""
            pod = attribution.pod or attribution.pod_uid or ""
            container = attribution.container or ""
        permissive = "" if denial.permissive is None else ("1" if denial.permissive else "0")
        base = (namespace, pod, container, denial.source_type or "", denial.target_type or "",
                denial.tclass)
        counts = self.denials.counts
        for permission in denial.permissions:
            key = base + (permission, permissive)
            if key in counts:
                counts[key] += 1
            else:
                self._new_series(key)

    def _new_series(self, key: tuple) -> None:
        counts = self.denials.counts
        if len(counts) - len(self._overflow_keys) < self.max_series:
            counts[key] = 1
            return
        # The overflow series may add two series (permissive 0 and 1) beyond the limit; no more.
        other = (OTHER,) * 7 + (key[7],)
        self._overflow_keys.add(other)
        counts[other] = counts.get(other, 0) + 1
        self.denials.overflow += 1

    def count_records(self, by_type) -> None:
        """Add a mapping of record type → count (a delta)."""
        for rtype, count in by_type.items():
            if not count:
                continue
            name = rtype if rtype in RECORD_TYPES else OTHER
            child = self._record_children.get(name)
            if child is None:
                child = self._record_children[name] = self.records.labels(name)
            child.inc(count)

    def count_parse_errors(self, count: int) -> None:
        if count:
            self.parse_errors.inc(count)

    def count_netlink_drops(self, count: int) -> None:
        if count:
            self.netlink_drops.inc(count)
