"""The pods attribution knows, as values: `PodRef`, the pod lists it reads them from (kubectl JSON or the
short form the CLI documents), and `PodDirectory`, the pods by UID and by MCS level.

Pure code. A level held by two different pods names neither: runtimes release and reuse levels, OpenShift
gives one level per namespace.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import InvalidInput
from agent.k8s.objects import owner_references
from agent.k8s.workload import workload_of
from agent.label import canonical_level


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
