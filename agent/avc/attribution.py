"""Which pod and container caused a denial: pid → /proc/<pid>/cgroup → pod UID and container ID, with the
MCS level of the source context as the fallback.

The parsing of cgroup paths, of `/proc/<pid>/stat` and of pod lists is pure; `ProcReader` is the only part
that reads files, and it takes a proc root so tests build fake /proc trees.

cgroup layouts recognised (cgroup v1 lines `N:controllers:/path` and the v2 line `0::/path`):

- systemd driver: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, '-' → '_'>.slice/
  crio-<64 hex>.scope` or `.../cri-containerd-<64 hex>.scope`; Guaranteed pods have no QoS slice
  (`kubepods-pod<uid>.slice`). kubelet writes '_' for '-' in the UID (`escapeSystemdCgroupName`,
  kubernetes pkg/kubelet/cm/cgroup_manager_linux.go).
- cgroupfs driver: `/kubepods/burstable/pod<uid>/<64 hex>` (containerd) or `.../pod<uid>/crio-<64 hex>`.
- CRI-O's monitor `crio-conmon-<64 hex>.scope` names the container but is not inside it: it counts as a
  runtime process, not as the container.

The container ID is the last 64-hex run on the path, as the security-profiles-operator does, which also
covers nested runtimes (SPO internal/pkg/util/containers.go).

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

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping

from agent.errors import InvalidInput, InvalidLabel
from agent.k8s.objects import owner_references
from agent.k8s.workload import workload_of
from agent.label import Level

_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?![0-9a-f])")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")
_RUNTIME_PREFIX = re.compile(r"(?:^|/)(crio-conmon|crio|cri-containerd|docker|libpod)-(?=[0-9a-f]{64})")

# Why a denial could not be tied to a pod; these are the `reason` label values of the metric.
NO_PID = "no_pid"  # internal: without a pid the reason is why the level did not help
PID_GONE = "pid_gone"
HOST_PROCESS = "host_process"
RUNTIME_PROCESS = "runtime_process"
NO_CATEGORIES = "no_categories"
UNKNOWN_LEVEL = "unknown_level"
REASONS = (PID_GONE, HOST_PROCESS, RUNTIME_PROCESS, NO_CATEGORIES, UNKNOWN_LEVEL)


@dataclass(frozen=True)
class CgroupInfo:
    """What a process's cgroup path says about it."""

    path: str
    pod_uid: str | None = None
    container_id: str | None = None
    runtime: str | None = None  # crio, containerd, docker, or None
    driver: str | None = None  # systemd or cgroupfs
    monitor: bool = False  # CRI-O's conmon: names a container but runs outside it

    @property
    def in_pod(self) -> bool:
        return self.pod_uid is not None and not self.monitor


def _runtime_name(prefix: str | None) -> str | None:
    return {"crio": "crio", "crio-conmon": "crio", "cri-containerd": "containerd", "docker": "docker",
            "libpod": "podman"}.get(prefix or "")


def parse_cgroup_path(path: str) -> CgroupInfo:
    """Pod UID, container ID, runtime and cgroup driver of one cgroup path (pure)."""
    uid_match = None
    for uid_match in _POD_UID.finditer(path):
        pass
    pod_uid = uid_match.group(1).replace("_", "-") if uid_match else None
    ids = _CONTAINER_ID.findall(path)
    container_id = ids[-1] if ids else None
    prefixes = _RUNTIME_PREFIX.findall(path)
    prefix = prefixes[-1] if prefixes else None
    # cgroupfs with containerd or docker writes the bare ID, so the runtime stays unknown there.
    runtime = _runtime_name(prefix)
    driver = None
    if "kubepods" in path:
        driver = "systemd" if ".slice" in path else "cgroupfs"
    return CgroupInfo(path=path, pod_uid=pod_uid, container_id=container_id, runtime=runtime,
                      driver=driver, monitor=prefix == "crio-conmon")


def parse_proc_cgroup(text: str) -> CgroupInfo | None:
    """The most telling line of /proc/<pid>/cgroup (v1 or v2), or None for empty text.

    On cgroup v1 every controller has its own line; the first one naming a pod wins, then the first one
    naming a container, then the unified (`0::`) or `name=systemd` line.
    """
    with_container: CgroupInfo | None = None
    unified: CgroupInfo | None = None
    first: CgroupInfo | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        info = parse_cgroup_path(parts[2])
        if info.pod_uid:
            return info
        if info.container_id and with_container is None:
            with_container = info
        if unified is None and (parts[0] == "0" or parts[1] == "name=systemd"):
            unified = info
        if first is None:
            first = info
    return with_container or unified or first


def parse_start_time(stat_text: str) -> int | None:
    """Field 22 (starttime, in clock ticks since boot) of /proc/<pid>/stat. comm may hold spaces and ')'."""
    close = stat_text.rfind(")")
    if close < 0:
        return None
    rest = stat_text[close + 2:].split()
    # After "pid (comm) " the fields start at 3 (state), so starttime (22) is index 19.
    if len(rest) < 20:
        return None
    try:
        return int(rest[19])
    except ValueError:
        return None


# --- pods ----------------------------------------------------------------------------------------------

_HASH_SUFFIX = re.compile(r"-[a-z0-9]{5,10}\Z")


@dataclass(frozen=True)
class PodRef:
    """A pod as attribution needs it; `workload` is its owner (a Deployment's name for ReplicaSet pods)."""

    namespace: str
    name: str
    uid: str | None = None
    level: str | None = None
    workload: str | None = None
    containers: tuple[tuple[str, str], ...] = ()  # (container ID, container name)

    def container_name(self, container_id: str | None) -> str | None:
        if not container_id:
            return None
        for cid, name in self.containers:
            if cid == container_id:
                return name
        return None

    @property
    def workload_name(self) -> str:
        return self.workload or self.name


def canonical_level(text: str) -> str | None:
    """A level in the kernel's spelling (`s0:c2,c1` → `s0:c1,c2`), or None when it does not parse."""
    try:
        return str(Level.parse(text))
    except InvalidLabel:
        return None


def _strip_runtime(container_id: str) -> str:
    return container_id.split("://", 1)[-1]


def pods_from_json(document) -> list[PodRef]:
    """Pods from a `kubectl get pods -o json` List, a single Pod, or the short form the CLI documents:

    `[{"namespace": "shop", "name": "web-1", "uid": "...", "level": "s0:c1,c2", "workload": "web",
       "containers": {"<id>": "nginx"}}]`. Raises InvalidInput for anything else.
    """
    if isinstance(document, dict) and document.get("kind") == "List":
        items = document.get("items") or []
    elif isinstance(document, dict) and document.get("kind") == "Pod":
        items = [document]
    elif isinstance(document, dict) and "pods" in document:
        items = document["pods"]
    elif isinstance(document, list):
        items = document
    else:
        raise InvalidInput("pod map: expected a list of pods or a kubectl List of Pods")
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"pod map: item {index} is not an object")
        if item.get("kind") == "Pod" or "metadata" in item:
            out.append(_pod_from_object(item))
            continue
        namespace, name = item.get("namespace"), item.get("name")
        if not isinstance(namespace, str) or not isinstance(name, str):
            raise InvalidInput(f"pod map: item {index} needs string 'namespace' and 'name'")
        containers = item.get("containers", {})
        if not isinstance(containers, dict):
            raise InvalidInput(f"pod map: item {index}: 'containers' must map container ID to name")
        level = item.get("level")
        out.append(PodRef(namespace, name, item.get("uid"), canonical_level(level) if level else None,
                          item.get("workload"),
                          tuple(sorted((_strip_runtime(k), v) for k, v in containers.items()))))
    return out


def _pod_from_object(pod: dict) -> PodRef:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    level = ((spec.get("securityContext") or {}).get("seLinuxOptions") or {}).get("level")
    namespace, name = meta.get("namespace", "default"), meta.get("name", "")
    owners = owner_references(meta.get("ownerReferences"), f"Pod {namespace}/{name}")
    workload = workload_of(namespace, name, owners, meta.get("labels") or {}).name if owners else None
    containers = []
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for entry in status.get(key) or []:
            if entry.get("containerID") and entry.get("name"):
                containers.append((_strip_runtime(entry["containerID"]), entry["name"]))
    return PodRef(namespace, name, meta.get("uid"),
                  canonical_level(level) if level else None, workload, tuple(sorted(containers)))


def pod_key(pod: PodRef):
    """What makes two PodRefs the same pod: the UID, or namespace and name when there is no UID."""
    return pod.uid or (pod.namespace, pod.name)


class LevelIndex:
    """MCS level → the pods holding it. A level held by one pod names it; a level held by two different pods
    names none (runtimes reuse levels, OpenShift gives one per namespace). A pod is counted once however
    often it is added, so updating a pod never makes its own level ambiguous.

    Writers replace the per-level dicts instead of changing them, so a reader in another thread never sees
    one half-changed; concurrent writers need a lock of their own."""

    def __init__(self):
        self._holders: dict[str, dict] = {}

    def add(self, level: str, pod: PodRef) -> None:
        held = self._holders.get(level, {})
        self._holders[level] = {**held, pod_key(pod): pod}

    def discard(self, level: str, pod: PodRef) -> None:
        held = self._holders.get(level)
        key = pod_key(pod)
        if held is None or key not in held:
            return
        rest = {k: v for k, v in held.items() if k != key}
        if rest:
            self._holders[level] = rest
        else:
            self._holders.pop(level, None)

    def get(self, level: str) -> PodRef | None:
        held = self._holders.get(level)
        return next(iter(held.values())) if held is not None and len(held) == 1 else None

    def __contains__(self, level: str) -> bool:
        return level in self._holders


class PodDirectory:
    """Pods known to the caller, by UID and by MCS level. Adding a pod again replaces it (its old level is
    dropped when it changed); a level shared by several pods is ambiguous and resolves to none of them."""

    def __init__(self, pods=()):
        self._pods: dict = {}  # pod_key → PodRef
        self._levels = LevelIndex()
        for pod in pods:
            self.add(pod)

    def add(self, pod: PodRef) -> None:
        key = pod_key(pod)
        old = self._pods.get(key)
        if old is not None and old.level and old.level != pod.level:
            self._levels.discard(old.level, old)
        self._pods[key] = pod
        if pod.level:
            self._levels.add(pod.level, pod)

    def remove(self, pod: PodRef) -> None:
        old = self._pods.pop(pod_key(pod), None)
        if old is not None and old.level:
            self._levels.discard(old.level, old)

    def by_uid(self, uid: str) -> PodRef | None:
        return self._pods.get(uid)

    def by_level(self, level: str) -> PodRef | None:
        return self._levels.get(level)

    def __len__(self) -> int:
        return len(self._pods)


# --- attribution ---------------------------------------------------------------------------------------


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


class ProcReader:
    """Reads /proc/<pid>/stat and /proc/<pid>/cgroup below a proc root (the edge of this module)."""

    def __init__(self, proc_root: str = "/proc"):
        self.proc_root = proc_root

    def _read(self, pid: int, name: str) -> str | None:
        try:
            with open(f"{self.proc_root}/{pid}/{name}", "rb") as handle:
                return handle.read(65536).decode("utf-8", "replace")
        except OSError:
            return None

    def start_time(self, pid: int) -> int | None:
        text = self._read(pid, "stat")
        return parse_start_time(text) if text else None

    def cgroup(self, pid: int) -> str | None:
        return self._read(pid, "cgroup")


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
        # The same Attribution object while the level names the same PodRef (see _found).
        entry = self._by_level.get(level)
        if entry is None or entry[0] is not pod:
            if len(self._by_level) >= self.max_cache:
                self._by_level.clear()
            entry = self._by_level[level] = (pod, Attribution(
                method="mcs", pod_uid=pod.uid, namespace=pod.namespace, pod=pod.name, workload=pod.workload_name))
        self.stats.attributed["mcs"] += 1
        return entry[1]

    def _found(self, method: str, uid: str, container_id: str | None) -> Attribution:
        # The same object for the same pod and container while the directory holds the same PodRef, so
        # consumers that memoise by identity (AvcMetrics) keep hitting after a pid is checked again; a pod
        # the directory learns about or changes gets a new one.
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
