"""Which pod and container caused a denial: pid → /proc/<pid>/cgroup → pod UID and container ID, with the
MCS level of the source context as the fallback.

The decisions are here; reading /proc is procfs.py's (a reader the caller may replace), cgroup paths are
cgroup.py's, the pods known by UID and level poddir.py's.

Results are cached per pid and checked against the process start time (field 22 of /proc/<pid>/stat), so a
reused pid never inherits the previous process's pod. To keep the cost of a lookup at one dictionary hit
under a burst of denials, the start time is read again only when the entry is older than
`revalidate_after` seconds: for a pid to be reused inside that window the kernel would have to cycle
through the whole pid space (pid_max is 4194304 on 64-bit kernels).

When the process is gone (or was never in a pod cgroup) the source context's MCS level is looked up in a
mapping the caller provides, built from the levels the agent itself applied. A level is only a hint:
runtimes release and reuse levels, OpenShift gives one level per namespace, and privileged pods run at s0,
so a level without categories is never used.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping

from agent.avc.cgroup import CgroupInfo, parse_proc_cgroup
from agent.avc.poddir import LevelIndex, PodDirectory, PodRef
from agent.avc.procfs import ProcReader
from agent.label import canonical_level

# Why a denial could not be tied to a pod; these are the `reason` label values of the metric.
NO_PID = "no_pid"  # internal: without a pid the reason is why the level did not help
PID_GONE = "pid_gone"
HOST_PROCESS = "host_process"
RUNTIME_PROCESS = "runtime_process"
NO_CATEGORIES = "no_categories"
UNKNOWN_LEVEL = "unknown_level"
REASONS = (PID_GONE, HOST_PROCESS, RUNTIME_PROCESS, NO_CATEGORIES, UNKNOWN_LEVEL)


@dataclass(frozen=True)
class Attribution:
    """The pod behind a denial, how it was found (`cgroup` or `mcs`), or why it was not (`reason`)."""

    method: str | None = None
    reason: str | None = None
    pod_uid: str | None = None
    namespace: str | None = None
    pod: str | None = None
    container: str | None = None
    container_id: str | None = None
    workload: str | None = None

    @property
    def attributed(self) -> bool:
        return self.method is not None

    def to_json(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if value is not None}


@dataclass
class AttributionStats:
    attributed: Counter = field(default_factory=Counter)  # by method
    unattributed: Counter = field(default_factory=Counter)  # by reason
    proc_reads: int = 0


_GONE = object()


class Attributor:
    """Denial → Attribution, through the cgroup of the pid, then the MCS level of the source context."""

    def __init__(self, proc_root: str = "/proc", pods: PodDirectory | None = None,
                 levels: Mapping[str, PodRef] | None = None, revalidate_after: float = 1.0,
                 max_cache: int = 65536, clock: Callable[[], float] = time.monotonic,
                 reader: ProcReader | None = None):
        self.reader = reader or ProcReader(proc_root)
        # The caller's object, even empty: a pod watch fills it later.
        self.pods = pods if pods is not None else PodDirectory()
        # Levels this agent applied to volumes, with their pods; asked before the pod directory.
        self.applied = LevelIndex()
        for level, pod in (levels or {}).items():
            self.add_level(level, pod)
        self.revalidate_after = revalidate_after
        self.max_cache = max_cache
        self.clock = clock
        self.stats = AttributionStats()
        # pid → (start time, checked at, CgroupInfo or _GONE)
        self._cache: dict[int, tuple[int | None, float, object]] = {}
        # pid → (checked at, Attribution) for pids found in a pod; level → (PodRef, Attribution).
        self._found_cache: dict[int, tuple[float, Attribution]] = {}
        self._by_level: dict[str, tuple[PodRef, Attribution]] = {}
        # (method, pod UID, container ID) → (the PodRef it was made from, Attribution)
        self._by_container: dict[tuple, tuple] = {}

    def add_level(self, level: str, pod: PodRef) -> None:
        """`pod` holds `level` (e.g. a volume was labelled at it for that pod)."""
        self.applied.add(canonical_level(level) or level, pod)

    def remove_level(self, level: str, pod: PodRef) -> None:
        """`pod` no longer holds `level` (its volume was unpublished)."""
        self.applied.discard(canonical_level(level) or level, pod)

    def add_pod(self, pod: PodRef) -> None:
        """Tell the attributor about a pod (e.g. from an informer); cached results are dropped."""
        self.pods.add(pod)
        self._found_cache.clear()

    def pod_at_level(self, level: str) -> PodRef | None:
        """The one pod holding `level`: from the levels applied to volumes if the agent knows the level, else
        from the pod directory."""
        listed = self.pods.by_level(level)
        if level not in self.applied:
            return listed
        pod = self.applied.get(level)
        if pod is not None and pod.uid is None and listed is not None and \
                (listed.namespace, listed.name) == (pod.namespace, pod.name):
            return listed  # the same pod, as the directory knows it (UID, workload)
        return pod

    def cgroup_info(self, pid: int) -> CgroupInfo | None:
        """The cached or freshly read cgroup of a live pid; None when the process is gone."""
        now = self.clock()
        entry = self._cache.get(pid)
        if entry is not None and now - entry[1] < self.revalidate_after:
            return None if entry[2] is _GONE else entry[2]  # type: ignore[return-value]
        self.stats.proc_reads += 1
        self._found_cache.pop(pid, None)
        start = self.reader.start_time(pid)
        if start is None:
            self._store(pid, (None, now, _GONE))
            return None
        if entry is not None and entry[0] == start and entry[2] is not _GONE:
            self._store(pid, (start, now, entry[2]))
            return entry[2]  # type: ignore[return-value]
        text = self.reader.cgroup(pid)
        if text is None:
            self._store(pid, (None, now, _GONE))
            return None
        info = parse_proc_cgroup(text) or CgroupInfo(path="")
        # The process may have exited and its pid been reused between the two reads: check again.
        if self.reader.start_time(pid) != start:
            self._store(pid, (None, now, _GONE))
            return None
        self._store(pid, (start, now, info))
        return info

    def _store(self, pid: int, value) -> None:
        if len(self._cache) >= self.max_cache and pid not in self._cache:
            # Drop the oldest half; dicts keep insertion order.
            for key in list(self._cache)[: self.max_cache // 2]:
                del self._cache[key]
        self._cache[pid] = value

    def attribute(self, denial) -> Attribution:
        """Attribute one denial (anything with `pid` and `source_level`)."""
        reason = NO_PID
        pid = denial.pid
        if pid is not None and pid > 0:
            entry = self._found_cache.get(pid)
            if entry is not None and self.clock() - entry[0] < self.revalidate_after:
                self.stats.attributed["cgroup"] += 1
                return entry[1]
            info = self.cgroup_info(pid)
            if info is None:
                reason = PID_GONE
            elif info.monitor:
                reason = RUNTIME_PROCESS
            elif info.pod_uid:
                found = self._found("cgroup", info.pod_uid, info.container_id)
                self.stats.attributed["cgroup"] += 1
                # Kept only as long as the cgroup entry is trusted without a fresh look at /proc.
                self._found_cache[pid] = (self._cache[pid][1], found)
                if len(self._found_cache) > self.max_cache:
                    self._found_cache.clear()
                return found
            else:
                reason = HOST_PROCESS
        level = denial.source_level
        if level is None or ":" not in level:
            # s0 alone is what privileged pods and host daemons run at: it names no pod.
            return self._missing(reason, NO_CATEGORIES)
        pod = self.pod_at_level(level)
        if pod is None:
            return self._missing(reason, UNKNOWN_LEVEL)
        # Built once while the level names the same PodRef (see _found).
        entry = self._by_level.get(level)
        if entry is None or entry[0] is not pod:
            if len(self._by_level) >= self.max_cache:
                self._by_level.clear()
            entry = self._by_level[level] = (pod, Attribution(
                method="mcs", pod_uid=pod.uid, namespace=pod.namespace, pod=pod.name, workload=pod.workload_name))
        self.stats.attributed["mcs"] += 1
        return entry[1]

    def _found(self, method: str, uid: str, container_id: str | None) -> Attribution:
        # Built once for a pod and container while the directory holds the same PodRef (a pid checked again
        # costs a lookup, not a new value); a pod the directory learns about or changes gets a new one.
        pod = self.pods.by_uid(uid)
        key = (method, uid, container_id)
        entry = self._by_container.get(key)
        if entry is not None and entry[0] is pod:
            return entry[1]
        found = self._attribution(method, uid, container_id, pod)
        if len(self._by_container) >= self.max_cache:
            self._by_container.clear()
        self._by_container[key] = (pod, found)
        return found

    @staticmethod
    def _attribution(method: str, uid: str, container_id: str | None, pod: PodRef | None) -> Attribution:
        if pod is None:
            return Attribution(method=method, pod_uid=uid, container_id=container_id)
        return Attribution(method=method, pod_uid=uid, namespace=pod.namespace, pod=pod.name,
                           container=pod.container_name(container_id), container_id=container_id,
                           workload=pod.workload_name)

    def _missing(self, pid_reason: str, level_reason: str) -> Attribution:
        # What happened to the pid says most (a host process stays a host process); without a pid,
        # say why the level did not help.
        final = level_reason if pid_reason == NO_PID else pid_reason
        self.stats.unattributed[final] += 1
        return Attribution(reason=final)
