"""What the AVC pipeline counts, added to the metric objects of agent/metrics.py (`AvcMetrics`), which the
caller builds and passes in.

The number of denial series is bounded: once `max_series` label sets exist, new ones are counted in one
series whose labels are all `other`, so a noisy node cannot grow the registry without limit.
"""

from __future__ import annotations

from agent.avc.attribution import REASONS

OTHER = "other"
RECORD_TYPES = ("AVC", "USER_AVC", "SELINUX_ERR", "AVC_PATH", "SYSCALL", "PATH", "CWD", "PROCTITLE", "EOE",
                "MAC_POLICY_LOAD", "MAC_STATUS")


class AvcCounts:
    """Counts denials, records, parse errors and netlink drops into an `AvcMetrics` (anything with its
    `denials`, `records`, `unattributed`, `parse_errors` and `netlink_drops`)."""

    def __init__(self, metrics, max_series: int = 2000):
        self.metrics = metrics
        self.max_series = max_series
        self._denials = metrics.denials
        self._overflow_keys: set[tuple] = set()
        # Denials repeat: (namespace, pod, container, source type, target type, class, permissive,
        # permissions) → (the count cells its permissions add to, how many of them are the overflow series).
        # Keyed on the values the series are made of, so any two denials that count alike share an entry.
        self._shapes: dict[tuple, tuple] = {}
        self.max_shapes = 4096
        self._record_children: dict[str, object] = {}
        self._reason_children = {reason: metrics.unattributed.labels(reason) for reason in REASONS}

    def count_denial(self, denial, attribution=None) -> None:
        """Count each denied permission of one denial (granted records are not denials)."""
        if not denial.denied:
            return
        if attribution is not None and attribution.method is not None:
            shape = (attribution.namespace or "", attribution.pod or attribution.pod_uid or "",
                     attribution.container or "", denial.source_type or "", denial.target_type or "",
                     denial.tclass, denial.permissive, denial.permissions)
        else:
            if attribution is not None and attribution.reason:
                child = self._reason_children.get(attribution.reason)
                (child or self.metrics.unattributed.labels(attribution.reason)).inc()
            shape = ("", "", "", denial.source_type or "", denial.target_type or "", denial.tclass,
                     denial.permissive, denial.permissions)
        try:
            entry = self._shapes.get(shape)
        except TypeError:  # permissions given as a list: no memo
            entry = self._cells(shape)
        else:
            if entry is None:
                entry = self._cells(shape)
                if len(self._shapes) >= self.max_shapes:
                    self._shapes.clear()
                self._shapes[shape] = entry
        for cell in entry[0]:
            cell[0] += 1
        if entry[1]:
            self._denials.overflow += entry[1]

    def _cells(self, shape: tuple) -> tuple:
        """The count cells of one denial shape, creating series as the limit allows."""
        permissive = shape[6]
        permissive = "" if permissive is None else ("1" if permissive else "0")
        base = shape[:6]
        counts = self._denials.counts
        cells = []
        overflowed = 0
        for permission in shape[7]:
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
        return tuple(cells), overflowed

    def count_records(self, by_type) -> None:
        """Add a mapping of record type → count (a delta)."""
        for rtype, count in by_type.items():
            if not count:
                continue
            name = rtype if rtype in RECORD_TYPES else OTHER
            child = self._record_children.get(name)
            if child is None:
                child = self._record_children[name] = self.metrics.records.labels(name)
            child.inc(count)

    def count_parse_errors(self, count: int) -> None:
        if count:
            self.metrics.parse_errors.inc(count)

    def count_netlink_drops(self, count: int) -> None:
        if count:
            self.metrics.netlink_drops.inc(count)
