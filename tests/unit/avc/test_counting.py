"""agent/avc/counting.py: denials, records and errors counted into the AVC metric objects; the bound on
denial series; the memo of denial shapes, keyed on the values the series are made of."""

import pytest
from prometheus_client import CollectorRegistry

from agent.avc.assembler import parse_lines
from agent.avc.attribution import Attribution
from agent.avc.counting import AvcCounts
from agent.metrics import AvcMetrics
from tests.unit.avc.test_sources import avc_text


def avc_counts(registry, max_series=2000):
    return AvcCounts(AvcMetrics(registry), max_series=max_series)


def test_series_are_bounded_with_an_other_bucket():
    registry = CollectorRegistry()
    metrics = avc_counts(registry, max_series=3)
    lines = [f"type=AVC msg=audit(1.000:{n}): {avc_text(target=f'system_u:object_r:t{n}_t:s0')}"
             for n in range(10)]
    denials, _ = parse_lines(lines)
    for denial in denials:
        metrics.count_denial(denial)
    other = dict(namespace="other", pod="other", container="other", source_type="other", target_type="other",
                 tclass="other", permission="other", permissive="0")
    assert registry.get_sample_value("selinux_avc_denials_total", other) == 7
    assert registry.get_sample_value("selinux_avc_denial_series_overflow_total") == 7
    series = [s for f in registry.collect() if f.name == "selinux_avc_denials" for s in f.samples
              if s.name.endswith("_total")]
    assert len(series) == 4


def test_no_global_registry_side_effects():
    from prometheus_client import REGISTRY

    before = set(REGISTRY._names_to_collectors)
    avc_counts(CollectorRegistry())
    assert set(REGISTRY._names_to_collectors) == before


def reference_counts(items, max_series):
    """selinux_avc_denials_total computed the plain way, one key at a time: what the memoised count must give."""
    counts, overflow_keys, overflow = {}, set(), 0
    for denial, attribution in items:
        if not denial.denied:
            continue
        namespace = pod = container = ""
        if attribution is not None and attribution.attributed:
            namespace, pod = attribution.namespace or "", attribution.pod or attribution.pod_uid or ""
            container = attribution.container or ""
        permissive = "" if denial.permissive is None else ("1" if denial.permissive else "0")
        for permission in denial.permissions:
            key = (namespace, pod, container, denial.source_type or "", denial.target_type or "", denial.tclass,
                   permission, permissive)
            if key in counts:
                counts[key] += 1
            elif len(counts) - len(overflow_keys) < max_series:
                counts[key] = 1
            else:
                other = ("other",) * 7 + (key[7],)
                overflow_keys.add(other)
                counts[other] = counts.get(other, 0) + 1
                overflow += 1
    return counts, overflow


@pytest.mark.parametrize("max_series", [2000, 5])
def test_memoised_counting_matches_counting_each_key(max_series):
    lines = []
    for n in range(60):
        perms = ("read", "read open", "write", "read read")[n % 4]
        line = (f"type=AVC msg=audit(1.{n:03d}:{n}): "
                + avc_text(perms=perms, target=f"system_u:object_r:t{n % 3}_t:s0", permissive=n % 2))
        if n % 7 == 0:
            line = line.replace(" permissive=1", "").replace(" permissive=0", "")
        if n % 11 == 0:
            line = line.replace("denied", "granted")
        lines.append(line)
    denials, _ = parse_lines(lines)
    pods = [Attribution(method="cgroup", namespace="a", pod="p1", container="c"),
            Attribution(method="mcs", namespace="a", pod="p1"),  # same labels through another object
            Attribution(method="cgroup", pod_uid="uid-2"), Attribution(reason="pid_gone"), None]
    items = [(denial, pods[n % len(pods)]) for n, denial in enumerate(denials)] * 3
    registry = CollectorRegistry()
    metrics = avc_counts(registry, max_series=max_series)
    for denial, attribution in items:
        metrics.count_denial(denial, attribution)
    counts, overflow = reference_counts(items, max_series)
    got = {tuple(s.labels[k] for k in ("namespace", "pod", "container", "source_type", "target_type", "tclass",
                                        "permission", "permissive")): s.value
           for f in registry.collect() if f.name == "selinux_avc_denials" for s in f.samples
           if s.name.endswith("_total")}
    assert got == counts
    assert registry.get_sample_value("selinux_avc_denial_series_overflow_total") == overflow
    assert registry.get_sample_value("selinux_avc_unattributed_total", {"reason": "pid_gone"}) == sum(
        1 for d, a in items if d.denied and a is not None and a.reason == "pid_gone")


def test_equal_attributions_and_contexts_share_series_whatever_the_objects():
    """Two Attribution values that are equal but not the same object, and contexts read by two parsers,
    count into the same series: the memo is keyed on values."""
    registry = CollectorRegistry()
    metrics = avc_counts(registry)
    line = f"type=AVC msg=audit(1.000:1): {avc_text()}"
    [first], _ = parse_lines([line])
    [second], _ = parse_lines([line])  # another assembler: other Label objects
    assert first.scontext is not second.scontext
    for denial in (first, second):
        metrics.count_denial(denial, Attribution(method="cgroup", namespace="a", pod="p", container="c"))
    labels = dict(namespace="a", pod="p", container="c", source_type="container_t", target_type="etc_t",
                  tclass="file", permission="read", permissive="0")
    assert registry.get_sample_value("selinux_avc_denials_total", labels) == 2


def test_records_parse_errors_and_drops_are_added_as_deltas():
    registry = CollectorRegistry()
    metrics = avc_counts(registry)
    metrics.count_records({"AVC": 2, "SYSCALL": 0, "NOT_A_TYPE": 3})
    metrics.count_records({"AVC": 1})
    metrics.count_parse_errors(0)
    metrics.count_parse_errors(4)
    metrics.count_netlink_drops(2)
    value = registry.get_sample_value
    assert value("selinux_avc_records_total", {"type": "AVC"}) == 3
    assert value("selinux_avc_records_total", {"type": "other"}) == 3
    assert value("selinux_avc_records_total", {"type": "SYSCALL"}) is None
    assert value("selinux_avc_parse_errors_total") == 4 and value("selinux_audit_netlink_enobufs_total") == 2
    assert value("selinux_avc_unattributed_total", {"reason": "pid_gone"}) == 0  # every reason shown from the start
