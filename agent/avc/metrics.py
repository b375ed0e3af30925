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

import agent.metrics  # noqa: F401 - its import turns off the `_created` series for every metric here too
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
        # label values → [count]: a one-element list, so a memoised denial shape adds to it directly.
        self.counts: dict[tuple, list[int]] = {}
        self.overflow = 0

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation, labels=DENIAL_LABELS),
                CounterMetricFamily(*_OVERFLOW)]

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=DENIAL_LABELS)
        # list() copies under the GIL, so a watcher thread may go on counting during a scrape.
        for key, cell in sorted(list(self.counts.items())):
            family.add_metric(key, cell[0])
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
        # Denials repeat: (id(attribution), id(scontext), id(tcontext), tclass, permissive, permissions) →
        # (attribution, scontext, tcontext, the count cells its permissions add to, how many of them are
        # the overflow series). The objects are kept in the entry so their ids stay theirs; the
        # attributor and the parser hand out the same objects for the same pod and context.
        self._shapes: dict[tuple, tuple] = {}
        self.max_shapes = 4096
        self._record_children: dict[str, object] = {}
        self._reason_children = {reason: self.unattributed.labels(reason) for reason in REASONS}

    def count_denial(self, denial, attribution=None) -> None:
        """Count each denied permission of one denial (granted records are not denials)."""
        if not denial.denied:
            return
        if attribution is not None and attribution.method is None and attribution.reason:
            child = self._reason_children.get(attribution.reason)
            (child or self.unattributed.labels(attribution.reason)).inc()
        scontext, tcontext = denial.scontext, denial.tcontext
        shape = (id(attribution), id(scontext), id(tcontext), denial.tclass, denial.permissive,
                 denial.permissions)
        try:
            entry = self._shapes.get(shape)
        except TypeError:  # permissions given as a list: no memo
            entry = None
            shape = None
        if entry is None or entry[0] is not attribution or entry[1] is not scontext or entry[2] is not tcontext:
            entry = self._shape(shape, denial, attribution)
        for cell in entry[3]:
            cell[0] += 1
        if entry[4]:
            self.denials.overflow += entry[4]

    def _shape(self, shape: tuple | None, denial, attribution) -> tuple:
        """The count cells of one denial shape (creating series as the limit allows), memoised."""
        namespace = pod = container = ""
        if attribution is not None and attribution.method is not None:
            namespace = attribution.namespace or ""
            pod = attribution.pod or attribution.pod_uid or ""
            container = attribution.container or ""
        permissive = "" if denial.permissive is None else ("1" if denial.permissive else "0")
        base = (namespace, pod, container, denial.source_type or "", denial.target_type or "",
                denial.tclass)
        counts = self.denials.counts
        cells = []
        overflowed = 0
        for permission in denial.permissions:
            key = base + (permission, permissive)
            cell = counts.get(key)
            if cell is None:
                if len(counts) - len(self._overflow_keys) < self.max_series:
                    cell = counts[key] = [0]
                else:
                    # The overflow series may add two series (permissive 0 and 1) beyond the limit; no more.
                    other = (OTHER,) * 7 + (key[7],)
                    self._overflow_keys.add(other)
                    cell = counts.get(other)
                    if cell is None:
                        cell = counts[other] = [0]
                    overflowed += 1
            cells.append(cell)
        entry = (attribution, denial.scontext, denial.tcontext, tuple(cells), overflowed)
        if shape is not None:
            if len(self._shapes) >= self.max_shapes:
                self._shapes.clear()
            self._shapes[shape] = entry
        return entry

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
